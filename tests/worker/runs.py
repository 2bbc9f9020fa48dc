"""Helpers for the worker's end-to-end tests: submit runs to the real server
and read back what the worker reported."""

from __future__ import annotations

import httpx

from cast.client.spec import FINAL_STATUSES
from tests.conftest import wait_until

FINAL = {status.value for status in FINAL_STATUSES}


def submit(api: httpx.Client, command: str, **fields) -> int:
    response = api.post("/runs", json={"command": command, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def get_run(api: httpx.Client, run_id: int) -> dict:
    response = api.get(f"/runs/{run_id}")
    response.raise_for_status()
    return response.json()


def wait_final(api: httpx.Client, run_id: int, timeout: float = 60) -> dict:
    return wait_until(lambda: (run := get_run(api, run_id))["status"] in FINAL and run,
                      timeout=timeout, what=f"run {run_id} to finish")


def log_entries(api: httpx.Client, run_id: int) -> list[dict]:
    response = api.get(f"/runs/{run_id}/logs", params={"offset": 0, "limit": 10000})
    response.raise_for_status()
    return response.json()["entries"]


def log_texts(api: httpx.Client, run_id: int, stream: str | None = None) -> list[str]:
    return [e["text"] for e in log_entries(api, run_id) if stream is None or e["stream"] == stream]


def wait_for_line(api: httpx.Client, run_id: int, text: str, timeout: float = 30) -> None:
    wait_until(lambda: text in log_texts(api, run_id), timeout=timeout, what=f"{text!r} in run {run_id}'s log")


def output_paths(api: httpx.Client, run_id: int) -> list[str]:
    response = api.get(f"/runs/{run_id}/outputs")
    response.raise_for_status()
    return sorted(f["path"] for f in response.json()["files"])


def statuses(run: dict) -> list[str]:
    return [t["status"] for t in run["transitions"]]
