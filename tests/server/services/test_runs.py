"""cast.server.services.runs: numbering, the transition table, the stored spec,
stop/kill of queued runs, labels."""

from __future__ import annotations

from dataclasses import fields

import pytest
from sqlalchemy import delete, select, update

from cast.protocol.messages import SERVER_FILLED, MountSpec, RunSpec
from cast.protocol.status import TRANSITIONS, RunStatus
from cast.server.errors import InvalidTransition
from cast.server.models import Run, RunTransition
from cast.server.schemas.runs import RunCreate
from cast.server.services import runs
from .conftest import git


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
                with pytest.raises(InvalidTransition, match=f"^run {run_id} is {source.value}; it cannot "):
                    runs.switch_status(session, run=run_id, to=target)


def test_stop_and_kill_a_queued_run_end_it_at_once(local):
    stopped, killed = local.create_run()["id"], local.create_run()["id"]
    answer = local.user.post(f"/runs/{stopped}/stop")
    assert answer.status_code == 202 and answer.json()["status"] == "stopped"
    assert local.user.post(f"/runs/{killed}/kill").json()["status"] == "killed"
    assert local.lease(local.register()) is None
    again = local.user.post(f"/runs/{stopped}/stop")
    assert again.status_code == 409
    assert again.json()["detail"] == f"run {stopped} is stopped; it cannot be stopped"
    assert local.user.post(f"/runs/{killed}/kill").json()["detail"] == f"run {killed} is killed; it cannot be killed"


def test_a_stop_or_kill_records_who_asked(local):
    stopped, killed = local.create_run()["id"], local.create_run()["id"]
    local.user.post(f"/runs/{stopped}/stop")
    local.user.post(f"/runs/{killed}/kill")
    reasons = {run["id"]: (run["reason"], run["owner"]) for run in local.user.get("/runs").json()["runs"]}
    assert reasons[stopped] == ("stopped by admin", "admin") and reasons[killed] == ("killed by admin", "admin")


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
    # Three statuses among the five: building (the oldest queued, leased), stopped, machine_requested.
    local.user.post(f"/runs/{ids[1]}/stop")
    assert local.lease(local.register())["run_id"] == ids[0]
    by_status = lambda *statuses: [  # noqa: E731
        r["id"] for r in local.user.get("/runs", params={"status": list(statuses)}).json()["runs"]]
    assert by_status("machine_requested") == [ids[4], ids[3], ids[2]]
    assert by_status("machine_requested", "stopped") == [ids[4], ids[3], ids[2], ids[1]]
    assert by_status("building") == [ids[0]]
    assert by_status("complete") == []


def test_the_request_body_of_a_run_spec_is_what_the_create_route_takes():
    takes = set(RunCreate.model_fields)
    asked = {"labels", "idempotent", "queue_anyway", "submit_key"}
    assert takes == {f.name for f in fields(RunSpec)} - SERVER_FILLED | asked
    assert set(RunSpec(command="x", git_url="u", pip=["a"]).request_body(labels=["l"], submit_key="0" * 32)) <= takes


def test_a_run_stores_the_spec_it_was_given_with_what_the_server_resolved(local, repo):
    source = local.complete_run(outputs={"data/x.txt": b"x"})
    asked = RunSpec(command="python train.py", git_url=f"file://{repo}", pip=["numpy==2.0"],
                    apt=["curl"], mounts=[MountSpec(resource=f"runs/{source}/data", path="in")],
                    machine_type="gpu:2", env={"A": "1"}, timeout=60.0, retries=1)
    sha = git(repo, "rev-parse", "HEAD")
    # complete_run's worker is local, without GPUs: this run waits for one that can run it.
    run = local.user.post("/runs", json={**asked.request_body(labels=["exp"]), "queue_anyway": True})
    assert run.status_code == 201, run.text
    stored = RunSpec.from_dict(run.json()["spec"])
    assert stored == RunSpec(**{**asked.to_dict(), "mounts": asked.mounts, "commit_ref": "HEAD",
                                "commit_sha": sha, "gpus": 2})
    assert run.json()["labels"] == ["exp"]
    assert local.run(run.json()["id"])["spec"] == stored.to_dict()

