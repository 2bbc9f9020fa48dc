"""Run routes for users: the answers' shapes and codes, the query and path
checks, and that a user reaches only their own runs (an admin, every run).
The runs service's rules (numbering, transitions, labels, paging) are tested
in services/test_runs.py."""

from __future__ import annotations

import pytest


def _user(local, name: str) -> dict:
    created = local.user.post("/users", json={"name": name})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']['token']}"}


def test_create_answers_201_with_the_run_and_its_history(local):
    created = local.user.post("/runs", json={"command": "echo hi", "labels": ["b", "a"]})
    assert created.status_code == 201
    run = created.json()
    assert (run["status"], run["spec"]["command"], run["labels"]) == ("machine_requested", "echo hi", ["a", "b"])
    assert [t["status"] for t in run["transitions"]] == ["machine_requested"]
    assert run.pop("reused") is False  # only a create answers whether it reused an earlier run
    assert local.user.get(f"/runs/{run['id']}").json() == run
    listed = local.user.get("/runs").json()
    assert listed["next_before"] is None and [r["id"] for r in listed["runs"]] == [run["id"]]
    assert "transitions" not in listed["runs"][0]


def test_stop_kill_and_labels_answer_with_the_run(local):
    run_id = local.create_run()["id"]
    labelled = local.user.post(f"/runs/{run_id}/labels", json={"label": "exp"})
    assert labelled.status_code == 200 and labelled.json()["labels"] == ["exp"]
    assert local.user.delete(f"/runs/{run_id}/labels/exp").json()["labels"] == []
    missing = local.user.delete(f"/runs/{run_id}/labels/exp")
    assert missing.status_code == 404 and missing.json()["detail"] == f"run {run_id} has no label 'exp'"
    stopped = local.user.post(f"/runs/{run_id}/stop")
    assert stopped.status_code == 202 and stopped.json()["transitions"][-1]["status"] == "stopped"
    other = local.create_run()["id"]
    assert local.user.post(f"/runs/{other}/kill").status_code == 202


@pytest.mark.parametrize(("request_", "field"), [
    (("GET", "/runs", {"params": {"limit": 0}}), "limit"),
    (("GET", "/runs", {"params": {"limit": 501}}), "limit"),
    (("GET", "/runs", {"params": {"before": 0}}), "before"),
    (("GET", "/runs", {"params": {"status": "flying"}}), "status"),
    (("GET", "/runs", {"params": {"label": "x" * 65}}), "label"),
    (("GET", "/runs/0", {}), "run_id"),
    (("GET", f"/runs/{2**63}", {}), "run_id"),
    (("POST", "/runs/1/labels", {"json": {"label": "x", "more": 1}}), "more"),
    (("POST", "/runs", {"json": {}}), "command"),
], ids=lambda value: f"{value[0]} {value[1]} {value[2]}" if isinstance(value, tuple) else None)
def test_bad_queries_paths_and_bodies_are_422_naming_the_field(local, request_, field):
    method, path, options = request_
    answer = local.user.request(method, path, **options)
    assert answer.status_code == 422 and field in answer.json()["detail"]


def test_a_user_reaches_only_their_own_runs_and_an_admin_every_run(local):
    alice = _user(local, "alice")
    admins = local.create_run()["id"]
    hers = local.user.post("/runs", json={"command": "true"}, headers=alice).json()["id"]
    assert [r["id"] for r in local.user.get("/runs", headers=alice).json()["runs"]] == [hers]
    assert [r["id"] for r in local.user.get("/runs").json()["runs"]] == [hers, admins]
    assert local.user.get(f"/runs/{hers}").json()["owner"] == "alice"
    for method, path in (("GET", ""), ("POST", "/stop"), ("POST", "/kill"), ("DELETE", "/labels/x")):
        answer = local.user.request(method, f"/runs/{admins}{path}", headers=alice)
        assert answer.status_code == 404 and answer.json()["detail"] == f"run {admins} not found"
    assert local.user.post(f"/runs/{admins}/labels", json={"label": "x"}, headers=alice).status_code == 404
    assert local.run(admins)["status"] == "machine_requested" and local.run(admins)["labels"] == []
