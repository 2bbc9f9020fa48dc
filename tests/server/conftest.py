"""Control-plane fixtures: the real server (a subprocess, from tests/conftest.py)
or the app in-process, each driven with raw HTTP through `Api`, which plays
both the user and a worker (the real worker is tested in tests/worker)."""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cast.server.app import create_app
from cast.server.models import Run, utcnow
from cast.server.settings import Settings

STAGES_TO_RUNNING = ("mounting", "running")
STAGES_TO_END = ("saving", "pushing")


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    """A tar header of `kind` named `name`, with `fields` set (linkname, mode, ...): hostile members for tests."""
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def make_tar(files: dict[str, bytes] | list[tuple[str, bytes]], *, extra: list[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (files.items() if isinstance(files, dict) else files):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


def expire_lease(app, run_id: int) -> None:
    """End run `run_id`'s lease a second ago, as a worker gone silent leaves it."""
    with app.state.database.transaction() as session:
        session.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


class Api:
    """Raw HTTP against one server, as its admin user (`user`) and as a worker (`worker`)."""

    def __init__(self, user: httpx.Client, worker: httpx.Client):
        self.user = user
        self.worker = worker

    def create_run(self, **spec) -> dict:
        response = self.user.post("/runs", json={"command": "true", **spec})
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, run_id: int) -> dict:
        response = self.user.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def register(self, name: str = "worker", executor: str = "local", gpus: list[int] = ()) -> str:
        response = self.worker.post("/workers", json={"name": name, "executor": executor, "gpus": list(gpus)})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def lease(self, worker_id: str, *, free_gpus: int = 0, wait: float = 0) -> dict | None:
        response = self.worker.post(f"/workers/{worker_id}/lease", json={"free_gpus": free_gpus, "wait": wait})
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        return response.json()

    def report(self, run_id: int, token: str, status: str, **extra) -> httpx.Response:
        return self.worker.post(f"/runs/{run_id}/status", json={"lease_token": token, "status": status, **extra})

    def advance(self, lease: dict, *statuses: str, **extra) -> dict:
        run = None
        for status in statuses:
            response = self.report(lease["run_id"], lease["lease_token"], status, **extra)
            assert response.status_code == 200, response.text
            run = response.json()
        return run

    @contextlib.contextmanager
    def heartbeats(self, lease: dict, every: float = 0.3):
        """Heartbeat `lease` in the background, as a live worker does."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                self.worker.post(f"/runs/{lease['run_id']}/heartbeat", json={"lease_token": lease["lease_token"]})

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def append(self, lease: dict, seq: int, *texts: str, stream: str = "stdout") -> httpx.Response:
        return self.worker.post(f"/runs/{lease['run_id']}/logs", json={
            "lease_token": lease["lease_token"], "seq": seq,
            "runs": [{"stream": stream, "lines": list(texts)}] if texts else [],
        })

    def push(self, lease: dict, body: bytes) -> httpx.Response:
        return self.worker.put(f"/runs/{lease['run_id']}/outputs", content=body,
                               headers={"X-Lease-Token": lease["lease_token"]})

    def complete_run(self, outputs: dict[str, bytes] | None = None, status: str = "complete", **spec) -> int:
        """A run created, leased and carried to `status` (complete or failed) with `outputs` pushed."""
        run_id = self.create_run(**spec)["id"]
        worker_id = self.register()
        lease = self.lease(worker_id)
        assert lease["run_id"] == run_id
        self.advance(lease, "mounting", "running", "saving", "pushing")
        if outputs is not None:
            response = self.push(lease, make_tar(outputs))
            assert response.status_code == 200, response.text
        self.advance(lease, status, exit_code=0 if status == "complete" else 1)
        return run_id


def _client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _in_process(app, token: str) -> TestClient:
    return TestClient(app, base_url="http://testserver/api/v1", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def live(server) -> Api:
    """The real server subprocess (the lease of tests/conftest.py: short under @pytest.mark.short_lease)."""
    api = Api(_client(f"{server.url}/api/v1", server.admin_token), _client(f"{server.url}/api/v1", server.worker_token))
    yield api
    api.user.close()
    api.worker.close()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Warning" not in log, log[-3000:]


@pytest.fixture
def settings(tmp_path, request) -> Settings:
    # The tests' git repositories are local; their refusal is tested on its own.
    # A module may set LEASE_SECONDS: a test that reaps needs leases no live run outlives.
    return Settings(data_dir=tmp_path / "data", lease_seconds=getattr(request.module, "LEASE_SECONDS", 2),
                    allow_local_git=True)


@pytest.fixture
def app(settings):
    return create_app(settings)


def in_process_api(app, settings: Settings) -> Api:
    """`app` in-process as its admin and its worker (no reaper running: TestClient without its lifespan)."""
    admin = settings.admin_token_file.read_text().strip()
    worker = settings.worker_token_file.read_text().strip()
    return Api(_in_process(app, admin), _in_process(app, worker))


@pytest.fixture
def local(app, settings) -> Api:
    """The app in-process, with the default test settings."""
    api = in_process_api(app, settings)
    yield api
    app.state.database.dispose()
