"""cast.server.services.leases: claims (one statement, so racing workers get
distinct runs), GPUs, status reports, heartbeats carrying stop and kill, and
the long polls' wake-ups (the reaper's own tests: test_reaper.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from datetime import datetime, timedelta

from cast.server.db import Database
from cast.server.models import MAX_INTEGER, Run, Worker, utcnow
from cast.server.services import leases, reaper
from cast.server.settings import Settings
from tests.factories import page_entries

from ..conftest import expire_lease, make_tar

# A lease no test here outlives on a busy machine: the tests expire the
# leases they mean to (`expire_lease`), and a reaper that found every lease
# lapsed after a slow second would reap runs they count as live.
LEASE_SECONDS = 60


def test_status_route_answers_409_for_a_refused_transition(local):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    refused = local.report(run_id, lease["lease_token"], "complete")
    assert refused.status_code == 409
    assert refused.json() == {"detail": f"run {run_id} is building; it cannot become complete"}
    assert local.report(run_id, "not-the-token", "mounting").status_code == 409
    run = local.advance(lease, "mounting", "running")
    assert [t["status"] for t in run["transitions"]] == ["machine_requested", "building", "mounting", "running"]
    assert local.run(run_id)["status"] == "running"


def test_a_batch_of_reports_is_applied_in_order_and_a_retried_one_is_recorded_once(local):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())

    def batch(*reports: dict, token: str = lease["lease_token"]):
        return local.worker.post(f"/runs/{run_id}/statuses", json={"lease_token": token, "reports": list(reports)})

    steps = [{"status": "mounting", "note": "cached"}, {"status": "running", "limits": "sandbox"}]
    answer = batch(*steps)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "running", "refused": []}
    again = batch(*steps)  # its answer lost, the worker sends it again: nothing is recorded twice
    assert again.json() == {"status": "running", "refused": [0, 1]}
    run = local.run(run_id)
    assert [t["status"] for t in run["transitions"]] == ["machine_requested", "building", "mounting", "running"]
    assert run["transitions"][2]["note"] == "cached" and run["limits"] == "sandbox"

    # One the table refuses is skipped (a stop overtook it), and those after it still apply.
    assert local.user.post(f"/runs/{run_id}/stop").status_code == 202
    answer = batch({"status": "pushing"}, {"status": "saving"}, {"status": "pushing"},
                   {"status": "stopped", "exit_code": 0})
    assert answer.json() == {"status": "stopped", "refused": [0]}
    run = local.run(run_id)
    assert [t["status"] for t in run["transitions"]][4:] == ["stopping", "saving", "pushing", "stopped"]
    assert run["exit_code"] == 0

    assert batch({"status": "failed"}, token="not-the-token").status_code == 409
    for refused in ([], [{"status": "saving"}] * 17, [{"status": "no-such"}]):
        assert batch(*refused).status_code == 422


def test_lines_carried_by_a_batch_of_reports_are_stored_before_their_report_and_once(local):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())

    def batch(*reports: dict, token: str = lease["lease_token"]):
        return local.worker.post(f"/runs/{run_id}/statuses", json={"lease_token": token, "reports": list(reports)})

    def lines(seq: int, *texts: str) -> dict:
        return {"seq": seq, "runs": [{"stream": "stdout", "lines": list(texts)}]}

    # A lost lease refuses the lines with the reports: the transaction is one.
    assert batch({"status": "mounting", "logs": lines(0, "stray")}, token="not-the-token").status_code == 409
    # A short run's life: its lines between `running` and its outcome.
    steps = [{"status": "mounting"}, {"status": "running"},
             {"status": "saving", "logs": lines(0, "last", "words")}, {"status": "pushing"},
             {"status": "complete", "exit_code": 0, "logs": lines(2, "after")}]
    answer = batch(*steps)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "complete", "refused": [], "log_truncated": False}
    stored = page_entries(local.user.get(f"/runs/{run_id}/logs").json())
    # Its answer lost, the worker sends it again: the lines are not stored twice, the reports are refused.
    again = batch(*steps).json()
    assert again == {"status": "complete", "refused": [0, 1, 2, 3, 4], "log_truncated": False}
    assert page_entries(local.user.get(f"/runs/{run_id}/logs").json()) == stored
    texts = [entry["text"] for entry in stored]
    assert "stray" not in texts and texts.count("last") == 1
    # Each report's lines come before its stage lines, after those of the reports before it.
    assert texts.index("Run is running") < texts.index("words") < texts.index("Saving… done") < texts.index("after")
    run = local.run(run_id)
    assert [t["status"] for t in run["transitions"]][2:] == ["mounting", "running", "saving", "pushing", "complete"]
    assert run["status"] == "complete"


def test_lines_ahead_of_a_refused_report_are_stored_in_place_and_the_log_stays_gapless(local):
    """A report's lines go in its status change's own UPDATE and INSERT; one
    the table refuses still has its lines stored, once, where they were printed."""
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())

    def lines(seq: int, text: str) -> dict:
        return {"seq": seq, "runs": [{"stream": "stdout", "lines": [text]}]}

    reports = [{"status": "mounting"}, {"status": "running"},
               {"status": "building", "logs": lines(0, "refused's line")},  # no way back to building
               {"status": "saving", "logs": lines(1, "saving's line")}]
    for attempt in range(2):  # the second: the answer was lost, the worker sends it again
        answer = local.worker.post(f"/runs/{run_id}/statuses",
                                   json={"lease_token": lease["lease_token"], "reports": reports})
        assert answer.status_code == 200, answer.text
        assert answer.json()["refused"] == ([2] if attempt == 0 else [0, 1, 2, 3])
        entries = page_entries(local.user.get(f"/runs/{run_id}/logs").json())
        texts = [entry["text"] for entry in entries]
        assert [entry["offset"] for entry in entries] == list(range(len(entries)))
        assert texts.count("refused's line") == 1 and texts.count("saving's line") == 1
        assert texts.index("Run is running") < texts.index("refused's line") < texts.index("saving's line")
    assert local.run(run_id)["status"] == "saving"


def test_a_batch_of_reports_records_what_the_same_reports_one_by_one_would(local, app):
    """Reports that make a path through the table are one status change on
    the server; what it leaves is what they leave sent one by one: the
    transitions with their notes, the stage lines a follower reads, the exit
    code, the ended lease. So is a whole life in one request, a line between
    its two paths (the second starts where the first left the run, unasked)."""
    paths = ([{"status": "mounting", "note": "cached"}, {"status": "running", "limits": "sandbox"}],
             [{"status": "saving"}, {"status": "pushing", "note": "3 files"},
              {"status": "complete", "exit_code": 0}])
    line = {"seq": 0, "runs": [{"stream": "stdout", "lines": ["out"]}]}
    batched, whole, single = (local.create_run()["id"] for _ in range(3))
    worker = local.register()
    for run_id in (batched, whole, single):
        lease = local.lease(worker)
        assert lease["run_id"] == run_id

        def send(*reports: dict) -> dict:
            return local.worker.post(f"/runs/{run_id}/statuses",
                                     json={"lease_token": lease["lease_token"], "reports": list(reports)}).json()

        if run_id == whole:
            saving, *rest = paths[1]
            assert send(*paths[0], dict(saving, logs=line), *rest) == {
                "status": "complete", "refused": [], "log_truncated": False}
        for path in paths if run_id != whole else ():
            if run_id == batched:
                assert send(*path) == {"status": path[-1]["status"], "refused": []}
            else:
                for report in path:
                    assert local.report(run_id, lease["lease_token"], **report).status_code == 200

    def left(run_id: int) -> tuple:
        run = local.run(run_id)
        entries = page_entries(local.user.get(f"/runs/{run_id}/logs").json())
        return ([(t["status"], t["note"]) for t in run["transitions"]],
                [(e["stream"], e["text"]) for e in entries if e["stream"] == "cast"],
                run["status"], run["exit_code"], run["limits"], run["finished_at"] is not None)

    assert left(batched) == left(single) == left(whole)
    assert [e["text"] for e in page_entries(local.user.get(f"/runs/{whole}/logs").json())
            if e["stream"] == "stdout"] == ["out"]
    transitions, lines, *_ = left(batched)
    assert [status for status, _ in transitions][2:] == ["mounting", "running", "saving", "pushing", "complete"]
    assert "Saving… done (3 files)" in [text for _, text in lines]  # a note qualifies the stage it ends
    with app.state.database.transaction() as session:
        assert session.get(Run, batched).lease_expires_at is None


def _claim_all(url: str, worker_id: str) -> list[int]:
    database = Database(url)
    settings = Settings(lease_seconds=60)
    claimed = []
    while True:
        with database.transaction() as session:
            worker = session.get(Worker, worker_id)
            run = leases.claim_next(session, worker=worker, free_gpus=0, settings=settings)
        if run is None:
            return claimed
        claimed.append(run.id)


def test_processes_racing_for_queued_runs_each_get_distinct_runs(local, app, settings):
    expected = {local.create_run()["id"] for _ in range(50)}
    workers = [local.register(name=f"w{i}") for i in range(3)]
    app.state.database.dispose()  # the children open their own connections
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.starmap(_claim_all, [(settings.sqlalchemy_url, w) for w in workers])
    claimed = [run_id for result in results for run_id in result]
    assert sorted(claimed) == sorted(expected)
    assert {local.run(i)["status"] for i in expected} == {"building"}


def test_gpu_runs_wait_for_enough_free_gpus(local):
    gpu_run = local.create_run(machine_type="gpu:2")["id"]
    cpu_run = local.create_run()["id"]
    worker = local.register(gpus=[0, 1])
    assert local.lease(worker, free_gpus=1)["run_id"] == cpu_run
    assert local.lease(worker, free_gpus=1) is None
    lease = local.lease(worker, free_gpus=2)
    assert lease["run_id"] == gpu_run
    assert lease["spec"]["gpus"] == 2


def test_stop_reaches_the_worker_and_keeps_outputs(local):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    local.advance(lease, "mounting", "running")
    assert local.user.post(f"/runs/{run_id}/stop").json()["status"] == "stopping"
    beat = local.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert beat.json()["status"] == "stopping"
    local.advance(lease, "saving", "pushing")
    assert local.push(lease, make_tar({"kept.txt": b"k"})).status_code == 200
    run = local.advance(lease, "stopped")
    assert run["status"] == "stopped" and run["finished_at"]
    assert [f["path"] for f in local.user.get(f"/runs/{run_id}/outputs").json()["files"]] == ["kept.txt"]


def test_kill_drops_outputs(local, settings):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    local.advance(lease, "mounting", "running", "saving", "pushing")
    assert local.push(lease, make_tar({"gone.txt": b"x"})).status_code == 200
    assert local.user.post(f"/runs/{run_id}/kill").json()["status"] == "killing"
    beat = local.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert beat.json()["status"] == "killing"
    assert local.push(lease, make_tar({"late.txt": b"x"})).status_code == 409
    assert local.advance(lease, "killed")["status"] == "killed"
    assert local.user.get(f"/runs/{run_id}/outputs").json()["files"] == []
    assert not (settings.runs_dir / str(run_id)).exists()


def test_a_heartbeat_answers_the_status_and_the_new_end_of_the_lease(local):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    before = utcnow()
    beat = local.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]}).json()
    assert set(beat) == {"status", "lease_expires_at"} and beat["status"] == "building"
    assert datetime.fromisoformat(beat["lease_expires_at"]) >= before + timedelta(seconds=lease["lease_seconds"])


def test_one_worker_heartbeat_holds_all_its_leases_and_names_each_lost_one(local, app):
    worker = local.register()
    other = local.register("other")
    ids = [local.create_run()["id"] for _ in range(4)]
    mine = {lease["run_id"]: lease["lease_token"] for lease in (local.lease(worker) for _ in range(3))}
    theirs = local.lease(other)
    stopped, reaped, done = sorted(mine)
    local.advance({"run_id": done, "lease_token": mine[done]}, "mounting", "running", "saving", "pushing", "complete")
    assert local.user.post(f"/runs/{stopped}/stop").json()["status"] == "stopping"
    expire_lease(app, reaped)
    with app.state.database.transaction() as session:
        assert reaper.reap_expired(session, settings=app.state.settings) == [reaped]
    before = utcnow()
    held = [{"run_id": run_id, "lease_token": token} for run_id, token in mine.items()]
    borrowed = [{"run_id": theirs["run_id"], "lease_token": theirs["lease_token"]},  # another worker's lease
                {"run_id": stopped, "lease_token": "not-the-token"}, {"run_id": MAX_INTEGER, "lease_token": "x"}]
    answer = local.worker.post(f"/workers/{worker}/heartbeat", json={"leases": held + borrowed})
    assert answer.status_code == 200, answer.text
    beat = answer.json()
    assert beat["leases"] == [
        {"run_id": stopped, "lost": False, "status": "stopping"},  # the stop reaches the worker
        {"run_id": reaped, "lost": True, "status": None},
        {"run_id": done, "lost": False, "status": "complete"},  # raced its own last report: harmless
        {"run_id": theirs["run_id"], "lost": True, "status": None},
        {"run_id": stopped, "lost": True, "status": None},
        {"run_id": MAX_INTEGER, "lost": True, "status": None},
    ]
    assert datetime.fromisoformat(beat["lease_expires_at"]) >= before + timedelta(seconds=60)
    assert sorted(ids) == sorted([*mine, theirs["run_id"]])
    with app.state.database.transaction(write=False) as session:
        ends = {run.id: run.lease_expires_at for run in session.query(Run).where(Run.id.in_([stopped, theirs["run_id"]]))}
    assert ends[stopped] >= before + timedelta(seconds=60) > ends[theirs["run_id"]]
    assert local.worker.post(f"/workers/{worker}/heartbeat", json={"leases": []}).json() == {
        "leases": [], "lease_expires_at": None}
    # Past the database's integers (PostgreSQL's are 32-bit) is bad input, not a server error.
    too_big = local.worker.post(f"/workers/{worker}/heartbeat",
                                json={"leases": [{"run_id": MAX_INTEGER + 1, "lease_token": "x"}]})
    assert too_big.status_code == 422, too_big.text


# --- the long poll: a queued run wakes one waiter it fits ---------------------------------

class _Polls:
    """Long polls (`leases.wait_for_lease`) of registered workers on the app's
    database, in this test's event loop, with every claim attempt counted."""

    def __init__(self, app, monkeypatch):
        self.database, self.settings = app.state.database, app.state.settings
        self.attempts: list[str] = []  # the worker id of each claim attempt, in order
        self.tasks: dict[str, asyncio.Task] = {}
        claim = leases._claim

        def counted(database, *, worker_id, **kwargs):
            self.attempts.append(worker_id)
            return claim(database, worker_id=worker_id, **kwargs)

        monkeypatch.setattr(leases, "_claim", counted)

    async def start(self, worker_id: str, *, free_gpus: int = 0, gone=None) -> None:
        """A long poll of `worker_id`, once it has made its first attempt and waits."""
        async def never() -> bool:
            return False

        before = len(self.attempts)
        self.tasks[worker_id] = asyncio.create_task(leases.wait_for_lease(
            self.database, worker_id=worker_id, free_gpus=free_gpus, wait=60, settings=self.settings,
            storage_id="test", gone=gone or never))
        await self.settle(lambda: len(self.attempts) > before and self.database.notifier.waiting())

    async def settle(self, done, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # whatever else was woken has made its attempt too

    def leased(self) -> dict[str, int]:
        return {worker: task.result().run_id for worker, task in self.tasks.items()
                if task.done() and task.result() is not None}

    async def end(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def _with_polls(app, monkeypatch, scenario) -> None:
    """`await scenario(polls)` in an event loop of its own; every long poll is ended afterwards."""
    async def main() -> None:
        polls = _Polls(app, monkeypatch)
        try:
            await scenario(polls)
        finally:
            await polls.end()

    asyncio.run(main())


def test_a_queued_run_wakes_one_waiting_worker_not_all(local, app, monkeypatch):
    workers = [local.register(f"w{i}") for i in range(6)]

    async def scenario(polls: _Polls) -> None:
        for worker in workers:
            await polls.start(worker)
        assert polls.attempts == workers  # each tried once and waits
        run_id = (await asyncio.to_thread(local.create_run))["id"]
        await polls.settle(lambda: polls.leased())
        assert polls.leased() == {workers[0]: run_id}  # the longest waiting
        assert polls.attempts[6:] == [workers[0]]  # exactly one claim attempt

    _with_polls(app, monkeypatch, scenario)


def test_runs_queued_at_once_are_all_claimed_by_waiters_none_left_asleep(local, app, settings, monkeypatch):
    """Three runs requeued by one reaper pass (one transaction, one wake-up
    for the three): each claim that leaves runs queued wakes one more waiter."""
    first = local.register("first")
    requeued = [local.create_run(retries=1)["id"] for _ in range(3)]
    for _ in requeued:
        local.lease(first)
    for run_id in requeued:
        expire_lease(app, run_id)
    workers = [local.register(f"w{i}") for i in range(5)]

    async def scenario(polls: _Polls) -> None:
        for worker in workers:
            await polls.start(worker)
        with app.state.database.transaction() as session:
            assert sorted(reaper.reap_expired(session, settings=settings)) == requeued
        await polls.settle(lambda: len(polls.leased()) == 3)
        assert sorted(polls.leased().values()) == requeued
        # Three claims, and one attempt that found the queue empty at most (a wake-up passed on
        # by a claim that saw a run another waiter was taking): not five.
        assert 3 <= len(polls.attempts[5:]) <= 4

    _with_polls(app, monkeypatch, scenario)


def test_a_gpu_run_wakes_only_a_waiter_with_the_gpus_and_a_cpu_run_a_cpu_waiter(local, app, monkeypatch):
    cpu = [local.register(f"cpu{i}") for i in range(3)]
    gpu = local.register("gpu", gpus=[0])

    async def scenario(polls: _Polls) -> None:
        await polls.start(gpu, free_gpus=1)  # the longest waiting, and fits any run
        for worker in cpu:
            await polls.start(worker)
        gpu_run = (await asyncio.to_thread(local.create_run, machine_type="gpu:1"))["id"]
        await polls.settle(lambda: polls.leased())
        assert polls.leased() == {gpu: gpu_run}
        assert polls.attempts[4:] == [gpu]
        cpu_run = (await asyncio.to_thread(local.create_run))["id"]
        await polls.settle(lambda: len(polls.leased()) == 2)
        assert polls.leased() == {gpu: gpu_run, cpu[0]: cpu_run}
        assert polls.attempts[5:] == [cpu[0]]

    _with_polls(app, monkeypatch, scenario)


def test_a_cpu_run_queued_while_only_a_gpu_worker_waits_goes_to_it(local, app, monkeypatch):
    gpu = local.register("gpu", gpus=[0, 1])

    async def scenario(polls: _Polls) -> None:
        await polls.start(gpu, free_gpus=2)
        run_id = (await asyncio.to_thread(local.create_run))["id"]
        await polls.settle(lambda: polls.leased())
        assert polls.leased() == {gpu: run_id}

    _with_polls(app, monkeypatch, scenario)


def test_a_wake_up_whose_worker_hung_up_is_passed_on(local, app, monkeypatch):
    left, stays = local.register("left"), local.register("stays")

    async def scenario(polls: _Polls) -> None:
        async def hung_up() -> bool:
            return True

        await polls.start(left, gone=hung_up)  # the longest waiting: the one a run wakes
        await polls.start(stays)
        run_id = (await asyncio.to_thread(local.create_run))["id"]
        await polls.settle(lambda: polls.leased())
        assert polls.tasks[left].done() and polls.tasks[left].result() is None
        assert polls.leased() == {stays: run_id}
        assert polls.attempts[2:] == [stays]  # the one who left made no attempt for nothing

    _with_polls(app, monkeypatch, scenario)
