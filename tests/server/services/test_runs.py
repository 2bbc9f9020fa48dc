"""cast.server.services.runs: numbering, the transition table, claims, GPUs,
stop/kill, mount validation."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import delete, select, update

from cast.protocol.status import TRANSITIONS, RunStatus
from cast.server.db import Database
from cast.server.errors import InvalidTransition
from cast.server.models import Run, RunTransition, Worker
from cast.server.services import runs
from cast.server.settings import Settings
from ..conftest import make_tar


def test_run_numbers_count_up_and_are_never_reused(local, app):
    assert [local.create_run()["id"] for _ in range(3)] == [1, 2, 3]
    with app.state.database.transaction() as session:
        session.execute(delete(RunTransition).where(RunTransition.run_id == 3))
        session.execute(delete(Run).where(Run.id == 3))
    assert local.create_run()["id"] == 4


def test_every_transition_outside_the_table_is_refused(local, app):
    run_id = local.create_run()["id"]
    database = app.state.database
    for source, target in ((s, t) for s in RunStatus for t in RunStatus):
        with database.transaction() as session:  # arrange: put the run in `source`
            session.execute(update(Run).where(Run.id == run_id).values(status=source.value))
        with database.session(write=True) as session:
            if target in TRANSITIONS[source]:
                moved = runs.switch_status(session, run=run_id, to=target)
                assert moved.status == target.value
                session.commit()
                last = session.scalars(select(RunTransition).where(RunTransition.run_id == run_id)
                                       .order_by(RunTransition.id.desc())).first()
                assert last.status == target.value and last.at is not None
            else:
                with pytest.raises(InvalidTransition, match=f"is {source.value}; it cannot become {target.value}"):
                    runs.switch_status(session, run=run_id, to=target)


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


def _claim_all(url: str, worker_id: str) -> list[int]:
    database = Database(url)
    settings = Settings(lease_seconds=60)
    claimed = []
    while True:
        with database.session(write=True) as session:
            worker = session.get(Worker, worker_id)
            run = runs.claim_next(session, worker=worker, free_gpus=0, settings=settings)
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


def test_stop_and_kill_a_queued_run_end_it_at_once(local):
    stopped, killed = local.create_run()["id"], local.create_run()["id"]
    answer = local.user.post(f"/runs/{stopped}/stop")
    assert answer.status_code == 202 and answer.json()["status"] == "stopped"
    assert local.user.post(f"/runs/{killed}/kill").json()["status"] == "killed"
    assert local.lease(local.register()) is None
    again = local.user.post(f"/runs/{stopped}/stop")
    assert again.status_code == 409
    assert again.json()["detail"] == f"run {stopped} is stopped; it cannot become stopping"


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


def test_labels_filter_and_paging(local):
    ids = [local.create_run(labels=["exp"] if i % 2 else [])["id"] for i in range(5)]
    assert local.user.post(f"/runs/{ids[0]}/labels", json={"label": "exp"}).json()["labels"] == ["exp"]
    labelled = local.user.get("/runs", params={"label": "exp"}).json()["runs"]
    assert [r["id"] for r in labelled] == [ids[3], ids[1], ids[0]]
    assert "transitions" not in labelled[0]
    page = local.user.get("/runs", params={"limit": 2}).json()
    assert [r["id"] for r in page["runs"]] == [5, 4] and page["next_before"] == 4
    rest = local.user.get("/runs", params={"limit": 2, "before": 4}).json()
    assert [r["id"] for r in rest["runs"]] == [3, 2]
    assert local.user.delete(f"/runs/{ids[0]}/labels/exp").json()["labels"] == []
    assert local.user.delete(f"/runs/{ids[0]}/labels/exp").status_code == 404
    assert local.user.post(f"/runs/{ids[0]}/labels", json={"label": "no spaces"}).status_code == 400
    statuses = local.user.get("/runs", params={"status": ["machine_requested"]}).json()["runs"]
    assert len(statuses) == 5
