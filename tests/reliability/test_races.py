"""Races: eight workers competing for 500 runs that twenty clients submit at
once, and twenty `cast run` processes started together. Every run gets its
own number, the numbers have no gaps, and every run is executed exactly
once (each appends its CAST_RUN_ID to one shared ledger) and none is stuck."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx

from tests.conftest import wait_until
from tests.factories import FINAL, submit

RUNS = 500
CLIENTS = 20
WORKERS = 8


def test_eight_workers_racing_for_500_runs_execute_each_exactly_once(server, start_worker, tmp_path):
    ledger = tmp_path / "ledger"
    names = [f"racer-{i}" for i in range(WORKERS)]
    workers = [start_worker(server, name=name, extra_args=["--max-runs", "1"]) for name in names]
    wait_until(lambda: all("registered as" in w.log_path.read_text() for w in workers), timeout=60,
               what="every worker to register")

    def submit_share(client: int) -> list[int]:
        with server.api() as api:
            ids = []
            for _ in range(RUNS // CLIENTS):
                response = api.post("/runs", json={"command": f'echo "$CAST_RUN_ID" >> {ledger}'})
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            return ids

    with ThreadPoolExecutor(CLIENTS) as pool:
        submitted = [run_id for ids in pool.map(submit_share, range(CLIENTS)) for run_id in ids]
    assert sorted(submitted) == list(range(1, RUNS + 1))

    with server.api() as api:
        def all_runs() -> list[dict]:
            page = api.get("/runs", params={"limit": RUNS}).json()
            assert page["next_before"] is None
            return page["runs"]

        def settled():
            runs = all_runs()
            return all(run["status"] in FINAL for run in runs) and runs

        runs = wait_until(settled, timeout=150, interval=1.0, what="all 500 runs to end")
    assert Counter(run["status"] for run in runs) == {"complete": RUNS}, [
        (run["id"], run["status"], run["reason"]) for run in runs if run["status"] != "complete"]
    assert len(runs) == RUNS
    assert all(run["attempt"] == 1 for run in runs), "no run may have lost its lease"
    executed = sorted(int(line) for line in ledger.read_text().split())
    assert executed == list(range(1, RUNS + 1))
    assert {run["worker"] for run in runs} == set(names)


def test_twenty_cast_run_processes_at_once_get_distinct_gap_free_numbers(server, base_env, tmp_path):
    env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token}
    processes = [subprocess.Popen(["cast", "run", "-d", "--json", "true"], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(CLIENTS)]
    ids = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        ids.append(json.loads(stdout)["id"])
    assert sorted(ids) == list(range(1, CLIENTS + 1))


def test_a_status_report_held_up_by_the_write_lock_does_not_cut_short_a_newer_lease(server):
    """A worker's report reads the clock, then waits for SQLite's write lock
    (which a busy server's other writers hold); a heartbeat that got the lock
    first has already moved the lease's end further. Once the report lands,
    the lease must still end at the heartbeat's time, not at the report's
    older one, or the reaper takes the live run for a lost one."""
    worker = httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {server.worker_token}"})
    with server.api() as api, worker:
        run_id = submit(api, "true")
        worker_id = worker.post("/workers", json={"name": "w", "executor": "local"}).json()["id"]
        token = worker.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 0}).json()["lease_token"]
        other_writer = sqlite3.connect(server.data_dir / "cast.db", isolation_level=None, timeout=30)
        other_writer.execute("BEGIN IMMEDIATE")
        report = ThreadPoolExecutor(1).submit(
            worker.post, f"/runs/{run_id}/status", json={"lease_token": token, "status": "mounting"})
        time.sleep(1.0)  # the report has read the clock and waits for the lock
        # The heartbeat's write, as the server makes it: the lease ends 3 s from now.
        later = (datetime.now(timezone.utc) + timedelta(seconds=3)).replace(tzinfo=None)
        other_writer.execute("UPDATE runs SET lease_expires_at = ? WHERE id = ?",
                             (later.strftime("%Y-%m-%d %H:%M:%S.%f"), run_id))
        other_writer.execute("COMMIT")
        other_writer.close()
        assert report.result().status_code == 200
        # Past the end the report computed (about 2 s after it began), well
        # before the heartbeat's; the reaper looks every half second.
        time.sleep(2.2)
        assert api.get(f"/runs/{run_id}").json()["status"] == "mounting"
