"""Races: eight workers competing for 500 runs that twenty clients submit at
once, and twenty `cast run` processes started together. Every run gets its
own number, the numbers have no gaps, and every run is executed exactly
once (each appends its CAST_RUN_ID to one shared ledger) and none is stuck."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from sqlalchemy import event

from cast.server.app import create_app
from cast.server.settings import Settings
from tests.conftest import SHORT_LEASE_SECONDS, unsandboxed, wait_until
from tests.factories import FINAL
from tests.server.conftest import in_process_api

RUNS = 500
CLIENTS = 20
WORKERS = 8


def test_eight_workers_racing_for_500_runs_execute_each_exactly_once(server, start_worker, tmp_path):
    ledger = tmp_path / "ledger"
    names = [f"racer-{i}" for i in range(WORKERS)]
    # Unsandboxed: each run appends to the ledger on the host.
    workers = [start_worker(server, name=name, extra_args=["--max-runs", "1"], env=unsandboxed(tmp_path))
               for name in names]
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


def test_a_status_report_held_up_by_the_write_lock_does_not_cut_short_a_newer_lease(tmp_path):
    """A worker's report reads the clock, then waits for SQLite's write lock
    (which a busy server's other writers hold); a heartbeat that got the lock
    first has already moved the lease's end further. Once the report lands,
    the lease must still end at the heartbeat's time, not at the report's
    older one, or the reaper takes the live run for a lost one.

    In-process, so the test sees the report reach BEGIN IMMEDIATE (its clock
    already read) and writes the heartbeat only then."""
    # SQLite's write lock is what this is about, whatever database the suite runs on.
    settings = Settings(data_dir=tmp_path / "data", lease_seconds=SHORT_LEASE_SECONDS, database_url="")
    app = create_app(settings)
    api = in_process_api(app, settings)
    run_id = api.create_run()["id"]
    token = api.lease(api.register())["lease_token"]
    waiting_for_the_lock = threading.Event()

    def on_statement(_connection, _cursor, statement, *_):
        if statement == "BEGIN IMMEDIATE":
            waiting_for_the_lock.set()

    other_writer = sqlite3.connect(settings.database_file, isolation_level=None, timeout=30)
    try:
        other_writer.execute("BEGIN IMMEDIATE")
        event.listen(app.state.database.engine, "before_cursor_execute", on_statement)
        with ThreadPoolExecutor(1) as pool:
            report = pool.submit(api.report, run_id, token, "mounting")
            assert waiting_for_the_lock.wait(120), "the report never reached the write lock"
            # The heartbeat's write, as the server makes it, far past the report's end.
            heartbeat_end = (datetime.now(timezone.utc) + timedelta(minutes=10)).replace(tzinfo=None)
            other_writer.execute("UPDATE runs SET lease_expires_at = ? WHERE id = ?",
                                 (heartbeat_end.strftime("%Y-%m-%d %H:%M:%S.%f"), run_id))
            other_writer.execute("COMMIT")
            assert report.result(120).status_code == 200
        [(status, stored)] = other_writer.execute(
            "SELECT status, lease_expires_at FROM runs WHERE id = ?", (run_id,)).fetchall()
    finally:
        other_writer.close()
        app.state.database.dispose()
    assert status == "mounting"
    assert datetime.fromisoformat(stored) == heartbeat_end, "the report moved the lease's end back"
