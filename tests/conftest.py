"""Shared fixtures: a real control plane and real workers on loopback, each test
with its own data dir, and the real `cast` CLI run as a subprocess.

Factories (`start_server`, `start_worker`) let a test start several of each,
restart them, or kill them with SIGKILL.

The database: SQLite in each server's data dir by default. With
CAST_TEST_DATABASE=postgresql the suite starts one real PostgreSQL server for
the session, and every test's servers, in-process or not, get a fresh database
on it (CREATE DATABASE from a template already migrated, so it is quick): the
in-process ones through CAST_DATABASE_URL in the test's environment, each
server subprocess one per data dir (a restart on the same data dir keeps it).
"""

from __future__ import annotations

import json
import os
import itertools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TEST_DATABASE = os.environ.get("CAST_TEST_DATABASE", "sqlite")
if TEST_DATABASE not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"CAST_TEST_DATABASE must be sqlite or postgresql, not {TEST_DATABASE!r}")
_TEMPLATE = "cast_template"

# Generous, so that a busy machine's stall never costs a run its lease; tests of
# lease expiry ask for SHORT_LEASE_SECONDS with @pytest.mark.short_lease.
LEASE_SECONDS = 30
SHORT_LEASE_SECONDS = 5


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"short_lease: the test's servers lease runs for {SHORT_LEASE_SECONDS} s, not {LEASE_SECONDS} s")


def lease_env(node) -> dict:
    """CAST_LEASE_SECONDS for the processes of a test (or module) `node`."""
    short = node.get_closest_marker("short_lease") is not None
    return {"CAST_LEASE_SECONDS": str(SHORT_LEASE_SECONDS if short else LEASE_SECONDS)}


def unsandboxed(tmp_path: Path) -> dict:
    """Environment for a local worker without bubblewrap (a one-user server leases
    to it): for tests whose runs must leave a mark on the host, such as a ledger."""
    return {"CAST_WORKER_BWRAP": str(tmp_path / "no-bwrap")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def postgres():
    """The suite's PostgreSQL server, its template database migrated to head;
    stopped and its files removed when the session ends."""
    from cast.server.db import Database

    from .realservers.postgres import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="cast-test-pg-"))
    server = PostgresServer(root / "data", port=free_port())
    try:
        server.start()
        database = Database(server.create_database(_TEMPLATE))
        database.migrate()
        database.dispose()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


_database_numbers = itertools.count()


@pytest.fixture
def postgres_databases(postgres):
    """A factory of fresh, migrated databases on the suite's PostgreSQL: their
    SQLAlchemy URLs, dropped when the test ends. For tests of PostgreSQL itself,
    whatever CAST_TEST_DATABASE says."""
    made: list[str] = []

    def make() -> str:
        name = f"cast_test_{os.getpid()}_{next(_database_numbers)}"
        made.append(name)
        return postgres.create_database(name, template=_TEMPLATE)

    yield make
    for name in made:
        postgres.drop_database(name)


@pytest.fixture
def new_database(request):
    """A factory of fresh databases for this test's servers: PostgreSQL URLs
    under CAST_TEST_DATABASE=postgresql, else None (each data dir has its SQLite)."""
    if TEST_DATABASE != "postgresql":
        return lambda: None
    return request.getfixturevalue("postgres_databases")


@pytest.fixture(scope="module")
def module_database(request):
    """As `new_database`, one database for a module's shared server: its URL
    under CAST_TEST_DATABASE=postgresql (dropped after the module), else None."""
    if TEST_DATABASE != "postgresql":
        yield None
        return
    postgres = request.getfixturevalue("postgres")
    name = f"cast_module_{os.getpid()}_{next(_database_numbers)}"
    yield postgres.create_database(name, template=_TEMPLATE)
    postgres.drop_database(name)


@pytest.fixture(autouse=True)
def _test_database(new_database, monkeypatch):
    """Under PostgreSQL, the in-process apps and Settings of a test share one fresh database."""
    url = new_database()
    if url is not None:
        monkeypatch.setenv("CAST_DATABASE_URL", url)


@dataclass
class ServerProcess:
    url: str
    data_dir: Path
    port: int
    env: dict
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def worker_token(self) -> str:
        return (self.data_dir / "worker-token").read_text().strip()

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cast.server", "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        # Generous: CI runs its SQLite and PostgreSQL passes at once on 2 cores.
        wait_until(self._healthy, timeout=60, what=f"server on {self.url} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"server exited: {self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )


@dataclass
class WorkerProcess:
    server: ServerProcess
    work_dir: Path
    name: str
    executor: str
    extra_args: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir.parent / f"{self.name}.log"

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cast.worker", "--server", self.server.url,
             "--token-file", str(self.server.data_dir / "worker-token"),
             "--work-dir", str(self.work_dir), "--name", self.name,
             "--executor", self.executor, *self.extra_args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def worker_on_tmpfs(server: ServerProcess, env: dict, *, name: str = "tmpfs",
                    extra_args: list[str] = ()) -> Iterator[WorkerProcess]:
    """A local worker whose work dir is on another filesystem than the server's
    storage (a tmpfs), so its pushes go over HTTP as a tar instead of being
    staged (moved into the storage), as a remote worker's do."""
    from cast.worker.fsops import remove_tree

    work = Path(tempfile.mkdtemp(dir="/dev/shm"))
    worker = WorkerProcess(server=server, work_dir=work / "worker", name=name, executor="local",
                           extra_args=list(extra_args), env=env).start()
    try:
        yield worker
    finally:
        worker.stop()
        remove_tree(work)


@pytest.fixture
def base_env(tmp_path, request) -> dict:
    """The environment every process of a test gets: its own CAST_HOME, no
    server from the developer's shell, the test's lease length."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
    env["CAST_HOME"] = str(tmp_path / "home")
    env.update(lease_env(request.node))
    env["PYTHONUNBUFFERED"] = "1"
    env["CAST_ALLOW_LOCAL_GIT"] = "1"  # the tests' repositories are local; their refusal is tested on its own
    return env


@pytest.fixture
def start_server(tmp_path, base_env, new_database):
    started: list[ServerProcess] = []
    databases: dict[Path, str] = {}

    def factory(*, data_dir: Path | None = None, port: int | None = None, env: dict | None = None) -> ServerProcess:
        port = port or free_port()
        data_dir = data_dir or tmp_path / f"server{len(started)}"
        if data_dir not in databases and (url := new_database()) is not None:
            databases[data_dir] = url
        database = {"CAST_DATABASE_URL": databases[data_dir]} if data_dir in databases else {}
        server = ServerProcess(
            url=f"http://127.0.0.1:{port}", port=port, data_dir=data_dir,
            env={**base_env, **database, **(env or {})},
            log_path=tmp_path / f"server{len(started)}.log",
        )
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def start_worker(tmp_path, base_env):
    started: list[WorkerProcess] = []

    def factory(server: ServerProcess, *, executor: str = "local", name: str | None = None,
                extra_args: list[str] | None = None, env: dict | None = None) -> WorkerProcess:
        name = name or f"worker{len(started)}"
        worker = WorkerProcess(
            server=server, work_dir=tmp_path / name, name=name, executor=executor,
            extra_args=extra_args or [], env={**base_env, **(env or {})},
        )
        started.append(worker)
        return worker.start()

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture
def server(start_server) -> ServerProcess:
    return start_server()


@pytest.fixture
def worker(server, start_worker) -> WorkerProcess:
    return start_worker(server)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def cli(server, base_env, tmp_path):
    """Run the real `cast` command against `server` with the admin token."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None,
            input: str | None = None) -> CliResult:
        full_env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token, **(env or {})}
        proc = subprocess.run(
            ["cast", *args], cwd=cwd or tmp_path, env=full_env, capture_output=True,
            text=True, timeout=timeout, input=input,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
