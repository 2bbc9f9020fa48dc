"""Run factories and readers shared by every test folder: submit runs to a real
server and read back their status, transitions, logs and outputs through the
HTTP API; and, for the service tests, lines written to a run's log in a
session of the server's own (`append_cast_lines`).

Each helper takes either an open `httpx.Client` (used as is) or a server from
tests/conftest.py, which gives a fresh admin client per call, so that polling
survives a server restarted on the same port."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from cast.protocol.logs import MAX_READ_LINES, LogPage
from cast.protocol.messages import LogStream
from cast.protocol.status import FINAL_STATUSES
from cast.server.models import utcnow
from cast.server.services import logs
from tests.conftest import CliResult, ServerProcess, wait_until

FINAL = {status.value for status in FINAL_STATUSES}

ApiTarget = httpx.Client | ServerProcess


@contextmanager
def _client(target: ApiTarget) -> Iterator[httpx.Client]:
    if isinstance(target, httpx.Client):
        yield target
    else:
        with target.api() as api:
            yield api


def run_id_of(result: CliResult) -> int:
    """The id `cast run` printed."""
    match = re.search(r"Casting run #(\d+)", result.stdout)
    assert match, f"no run id in {result.stdout!r} / {result.stderr!r}"
    return int(match.group(1))


def create_run(target: ApiTarget, command: str, **fields) -> dict:
    with _client(target) as api:
        response = api.post("/runs", json={"command": command, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def submit(target: ApiTarget, command: str, **fields) -> int:
    return create_run(target, command, **fields)["id"]


def get_run(target: ApiTarget, run_id: int) -> dict:
    with _client(target) as api:
        response = api.get(f"/runs/{run_id}")
    response.raise_for_status()
    return response.json()


def wait_status(target: ApiTarget, run_id: int, *statuses: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (run := get_run(target, run_id))["status"] in statuses and run,
                      timeout=timeout, what=f"run {run_id} to be {' or '.join(statuses)}")


def wait_final(target: ApiTarget, run_id: int, timeout: float = 60) -> dict:
    return wait_until(lambda: (run := get_run(target, run_id))["status"] in FINAL and run,
                      timeout=timeout, what=f"run {run_id} to finish")


def _logs_response(target: ApiTarget, run_id: int, offset: int = 0) -> httpx.Response:
    with _client(target) as api:
        return api.get(f"/runs/{run_id}/logs", params={"offset": offset, "limit": MAX_READ_LINES})


def page_entries(page: dict) -> list[dict]:
    """A log page's lines as `{offset, time, stream, text}` each."""
    return list(LogPage.from_dict(page).entries())


def log_entries(target: ApiTarget, run_id: int) -> list[dict]:
    """The log's lines as `{offset, time, stream, text}` each, read page by page
    (a page also ends past a few MiB of text) until an empty one."""
    entries: list[dict] = []
    while True:
        response = _logs_response(target, run_id, offset=len(entries))
        response.raise_for_status()
        page = page_entries(response.json())
        if not page:
            return entries
        entries += page


def log_texts(target: ApiTarget, run_id: int, stream: str | None = None) -> list[str]:
    return [e["text"] for e in log_entries(target, run_id) if stream is None or e["stream"] == stream]


def wait_for_line(target: ApiTarget, run_id: int, text: str, timeout: float = 30) -> None:
    """Wait until a run (which may not be submitted yet) has logged `text`."""

    def logged() -> bool:
        response = _logs_response(target, run_id)
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return any(text in chunk["lines"] for chunk in response.json()["chunks"])

    wait_until(logged, timeout=timeout, what=f"{text!r} in run {run_id}'s log")


def output_paths(target: ApiTarget, run_id: int) -> list[str]:
    with _client(target) as api:
        response = api.get(f"/runs/{run_id}/outputs")
    response.raise_for_status()
    return sorted(f["path"] for f in response.json()["files"])


def statuses(run: dict) -> list[str]:
    """The statuses a run went through, in order."""
    return [t["status"] for t in run["transitions"]]


def log_archive_key(server: ServerProcess, run_id: int) -> str | None:
    """`runs.log_archive` of a run, read from the server's own database (the API does not show it)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server.env.get("CAST_DATABASE_URL") or f"sqlite:///{server.data_dir / 'cast.db'}")
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT log_archive FROM runs WHERE id = :id"), {"id": run_id})
    finally:
        engine.dispose()


def archive_logs_now(server: ServerProcess, run_id: int, timeout: float = 120) -> str:
    """Restart `server` archiving final runs' logs at once and wait until run
    `run_id`'s is archived; its archive key."""
    server.env["CAST_LOG_ARCHIVE_AFTER_SECONDS"] = "0.01"
    server.stop()
    server.start()
    return wait_until(lambda: log_archive_key(server, run_id), timeout=timeout, interval=0.5,
                      what=f"run {run_id}'s log archived")


def cli_log_reads(cli, run_id: int) -> dict[str, tuple[int, str]]:
    """What `cast logs` prints of a run, plain, as JSON, the last lines and followed to its end."""
    reads = {}
    for name, args in {"text": [], "json": ["--json"], "tail": ["--tail", "5"], "follow": ["-f"]}.items():
        result = cli("logs", *args, str(run_id))
        reads[name] = (result.returncode, result.stdout)
    return reads


def append_cast_lines(session, run, lines: list[str]) -> None:
    """`lines` appended to `run`'s log as cast's own lines (a status change's are stored so)."""
    logs.append(session, run, [(LogStream.CAST.value, list(lines), utcnow())])
