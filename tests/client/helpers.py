"""Small helpers shared by the CLI tests: reading runs and logs through the API
and checking the shape of a refusal."""

from __future__ import annotations

import re

from tests.conftest import CliResult, wait_until


def run_id_of(result: CliResult) -> int:
    match = re.search(r"Casting run #(\d+)", result.stdout)
    assert match, f"no run id in {result.stdout!r} / {result.stderr!r}"
    return int(match.group(1))


def get_run(server, run_id: int) -> dict:
    with server.api() as api:
        response = api.get(f"/runs/{run_id}")
        response.raise_for_status()
        return response.json()


def wait_status(server, run_id: int, *statuses: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (run := get_run(server, run_id))["status"] in statuses and run,
                      timeout=timeout, what=f"run {run_id} to be {' or '.join(statuses)}")


def log_texts(server, run_id: int, stream: str | None = None) -> list[str]:
    with server.api() as api:
        entries = api.get(f"/runs/{run_id}/logs", params={"limit": 10000}).json()["entries"]
    return [e["text"] for e in entries if stream is None or e["stream"] == stream]


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """A refusal: non-zero exit, one `cast: error:` line on stderr, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cast: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def wait_for_line(server, run_id: int, text: str, timeout: float = 60) -> None:
    """Wait until a run (which may not be submitted yet) has logged `text`."""

    def logged() -> bool:
        with server.api() as api:
            response = api.get(f"/runs/{run_id}/logs", params={"limit": 10000})
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return text in [e["text"] for e in response.json()["entries"]]

    wait_until(logged, timeout=timeout, what=f"run {run_id} to log {text!r}")
