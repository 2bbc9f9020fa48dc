"""The control plane SIGKILLed while runs are queued and running, then
restarted on the same port and data dir, twice: no queued run is lost, the
running runs finish, the workers buffer log lines, status changes and
outputs while the server is away and deliver them when it returns, and each
finished log has every line exactly once, in order."""

from __future__ import annotations

import signal
import time

from tests.conftest import wait_until
from tests.factories import get_run, log_entries, log_texts, output_paths, submit, wait_final, wait_for_line

LINES = 50
# Prints LINES lines over about 2.5 s, then writes an output naming its run.
COMMAND = (f'for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.05; done; '
           'echo "run $CAST_RUN_ID" > out.txt')


def _kill_and_restart(server, worker) -> None:
    """SIGKILL the server and start it again once every run the worker was
    running has finished its command: their last lines, status changes and
    outputs can only be delivered from the worker's outbox."""
    server.stop(signal.SIGKILL)
    # Each run's metrics folder sits beside its working dir; only the working dirs get out.txt.
    running = [path for path in (worker.work_dir / "runs").iterdir() if not path.name.endswith(".metrics")]
    assert running
    wait_until(lambda: all((workdir / "out.txt").exists() for workdir in running), timeout=20,
               what="the running runs to finish while the server is dead")
    time.sleep(0.3)  # and to tell it (to retry, since it is away)
    server.start()


def test_a_server_killed_twice_with_runs_queued_and_running_loses_nothing(start_server, start_worker):
    server = start_server()
    worker = start_worker(server, extra_args=["--max-runs", "2"])
    with server.api() as api:
        run_ids = [submit(api, COMMAND) for _ in range(5)]
        for run_id in run_ids[:2]:
            wait_for_line(api, run_id, "line 5")
        assert [get_run(api, run_id)["status"] for run_id in run_ids[2:]] == ["machine_requested"] * 3
    _kill_and_restart(server, worker)  # runs 1-2 running (and finishing while it is down), 3-5 queued

    with server.api() as api:
        wait_until(lambda: any("line 5" in log_texts(api, run_id) for run_id in run_ids[2:]), timeout=60,
                   what="a run queued before the first kill to be running")
        queued = [run_id for run_id in run_ids if get_run(api, run_id)["status"] == "machine_requested"]
        assert queued, "some run should still be queued at the second kill"
    _kill_and_restart(server, worker)

    with server.api() as api:
        runs = [wait_final(api, run_id, timeout=90) for run_id in run_ids]
        for run in runs:
            run_id = run["id"]
            assert run["status"] == "complete" and run["attempt"] == 1, (run, log_texts(api, run_id))
            assert log_texts(api, run_id, "stdout") == [f"line {i}" for i in range(1, LINES + 1)]
            offsets = [entry["offset"] for entry in log_entries(api, run_id)]
            assert offsets == list(range(len(offsets)))
            stages = [t["status"] for t in run["transitions"]]
            assert stages == ["machine_requested", "building", "mounting", "running", "saving", "pushing",
                              "complete"], stages
            assert output_paths(api, run_id) == ["out.txt"]
            assert api.get(f"/runs/{run_id}/outputs/out.txt").text == f"run {run_id}\n"
        assert [run["id"] for run in runs] == list(range(1, 6))
