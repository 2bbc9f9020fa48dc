"""Faults injected for real: a worker SIGKILLed mid-run, a server killed and
restarted mid-run, and workers racing for one queue. (A worker shut down on
purpose stops its runs: test_shutdown.py.)"""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import unsandboxed, wait_until

from tests.factories import log_entries, log_texts, submit, wait_final, wait_for_line


@pytest.mark.short_lease
def test_a_worker_killed_mid_run_leaves_the_run_interrupted(server, start_worker):
    worker = start_worker(server)
    with server.api() as api:
        run_id = submit(api, "echo started; sleep 60")
        wait_for_line(api, run_id, "started")
        worker.stop(signal.SIGKILL)
        run = wait_final(api, run_id, timeout=120)
        assert run["status"] == "interrupted" and run["reason"].startswith("worker lost")
        assert "started" in log_texts(api, run_id)


def test_two_workers_racing_for_fifty_runs_execute_each_exactly_once(server, start_worker, tmp_path):
    ledger = tmp_path / "ledger"
    with server.api() as api:
        run_ids = [submit(api, f'echo "$CAST_RUN_ID" >> {ledger}') for _ in range(50)]
        for name in ("racer-a", "racer-b"):
            # Unsandboxed, so every run can write to the one ledger on the host.
            start_worker(server, name=name, extra_args=["--max-runs", "2"], env=unsandboxed(tmp_path))
        runs = [wait_final(api, run_id, timeout=120) for run_id in run_ids]
    assert [run["status"] for run in runs] == ["complete"] * 50
    executed = ledger.read_text().split()
    assert sorted(map(int, executed)) == run_ids
    assert {run["worker"] for run in runs} == {"racer-a", "racer-b"}


def test_a_server_restarted_mid_run_gets_every_line_exactly_once_in_order(start_server, start_worker):
    server = start_server()
    start_worker(server)
    with server.api() as api:
        run_id = submit(api, "for i in $(seq 1 60); do echo line $i; sleep 0.05; done; echo done > out.txt")
        wait_for_line(api, run_id, "line 5")
    server.stop(signal.SIGKILL)
    time.sleep(0.5)  # the run keeps printing while nobody listens
    server.start()
    with server.api() as api:
        run = wait_final(api, run_id, timeout=120)
        assert run["status"] == "complete", log_texts(api, run_id)
        assert log_texts(api, run_id, "stdout") == [f"line {i}" for i in range(1, 61)]
        offsets = [entry["offset"] for entry in log_entries(api, run_id)]
        assert offsets == list(range(len(offsets)))
        wait_until(lambda: api.get(f"/runs/{run_id}/outputs").json()["files"], what="outputs")
        assert [f["path"] for f in api.get(f"/runs/{run_id}/outputs").json()["files"]] == ["out.txt"]


def test_a_worker_coming_back_ends_the_processes_its_dead_predecessor_left(server, start_worker, tmp_path):
    # Unsandboxed: a sandboxed run dies with its worker (test_worker_dies), and
    # only outside a sandbox can it touch a marker on the host.
    marker = tmp_path / "still-running"
    worker = start_worker(server, name="phoenix", env=unsandboxed(tmp_path))
    with server.api() as api:
        run_id = submit(api, f"echo started; while true; do touch {marker}; sleep 0.1; done")
        wait_for_line(api, run_id, "started")
        worker.stop(signal.SIGKILL)
        marker.unlink()
        wait_until(marker.exists, timeout=120, what="the orphaned run to keep going")
        start_worker(server, name="phoenix", env=unsandboxed(tmp_path))  # the same work dir

        def orphan_gone() -> bool:
            marker.unlink(missing_ok=True)
            time.sleep(0.3)  # the orphan touches the marker every 0.1 s while it lives
            return not marker.exists()

        wait_until(orphan_gone, timeout=120, what="the new worker to end the orphaned run")
