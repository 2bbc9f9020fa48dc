"""Reusing runs (services/reuse.py) through the real create route: an
`idempotent` request answers with the newest complete run that did the same
(200, `reused`), and with a new run (201) when any ingredient differs: the
command, the environment, the code, the workdir, or the contents of what it
mounts (not their names). Failed runs, runs whose outputs were deleted and
other users' runs are never reused."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from cast.server.models import Run, utcnow
from tests.server.conftest import make_tar
from tests.server.services.conftest import git

BASE = {"command": "python train.py", "pip": ["tqdm"], "env": {"SEED": "1"}}


@pytest.fixture
def finish(local):
    """`finish(body)`: a run created from `body`, leased by a sandboxed GPU
    worker that builds images (so any request here could run), and carried to
    `status` with `outputs` pushed."""
    registered = local.worker.post("/workers", json={"name": "gpu-docker", "executor": "docker", "gpus": [0, 1],
                                                     "sandboxed": True})
    assert registered.status_code == 200, registered.text
    worker_id = registered.json()["id"]

    def run(body: dict, *, outputs: dict[str, bytes] | None = None, status: str = "complete") -> int:
        created = local.user.post("/runs", json=body)
        assert created.status_code == 201, created.text
        lease = local.lease(worker_id, free_gpus=2)
        assert lease["run_id"] == created.json()["id"]
        local.advance(lease, "mounting", "running", "saving", "pushing")
        if outputs is not None:
            assert local.push(lease, make_tar(outputs)).status_code == 200
        local.advance(lease, status, exit_code=0 if status == "complete" else 1)
        return lease["run_id"]

    return run


def again(local, body: dict):
    """An idempotent request for `body`; a new run it made is killed so that
    it does not wait in the queue of a later `finish`."""
    response = local.user.post("/runs", json={**body, "idempotent": True})
    assert response.status_code in (200, 201), response.text
    if response.status_code == 201:
        assert local.user.post(f"/runs/{response.json()['id']}/kill").status_code == 202
    return response


def test_the_same_request_reuses_the_newest_complete_run(local, finish):
    older = finish(BASE)
    newer = finish({**BASE, "labels": ["labels-do-not-count"], "timeout": 60})
    reused = again(local, BASE)
    assert reused.status_code == 200 and reused.json()["reused"] is True
    assert reused.json()["id"] == newer != older
    assert reused.json()["status"] == "complete"
    plain = local.user.post("/runs", json=BASE)  # without idempotent: always a new run
    assert plain.status_code == 201 and plain.json()["reused"] is False


@pytest.mark.parametrize("change", [
    {"command": "python train.py --lr 3"},
    {"pip": ["tqdm==4.66.1"]},
    {"pip_req": "numpy\n"},
    {"apt": ["curl"]},
    {"docker_image": "python:3.11-slim"},
    {"machine_type": "gpu:1"},
    {"env": {"SEED": "2"}},
    {"env": {"SEED": "1", "OTHER": "x"}},
    {"workdir": "sub"},
], ids=lambda change: ",".join(change))
def test_any_other_ingredient_makes_a_new_run(local, finish, change):
    earlier = finish(BASE)
    assert again(local, BASE).json()["id"] == earlier
    # finish's worker is local without GPUs: what it could never run is queued for a worker to come.
    different = again(local, {**BASE, **change, "queue_anyway": True})
    assert different.status_code == 201 and different.json()["reused"] is False
    assert different.json()["id"] != earlier


def test_a_git_run_is_reused_only_at_the_same_commit(local, finish, repo):
    body = {**BASE, "git_url": str(repo)}
    first = finish(body)
    assert again(local, {**body, "commit_ref": "main"}).json()["id"] == first  # same sha, other ref
    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "v2")
    moved = again(local, body)
    assert moved.status_code == 201 and moved.json()["spec"]["commit_sha"] != local.run(first)["spec"]["commit_sha"]


def test_a_bundle_run_is_reused_only_with_the_same_bundle(local, finish):
    keys = ["a" * 64, "b" * 64]
    for key, text in zip(keys, (b"print(1)\n", b"print(2)\n")):
        assert local.user.put(f"/code/{key}", content=make_tar({"train.py": text})).status_code == 201
    first = finish({**BASE, "code_bundle": keys[0]})
    assert again(local, {**BASE, "code_bundle": keys[0]}).json()["id"] == first
    assert again(local, {**BASE, "code_bundle": keys[1]}).status_code == 201


def test_mounts_count_by_their_contents_not_their_names(local, finish):
    data = finish({"command": "make data"}, outputs={"data/x.txt": b"1", "log.txt": b"a"})
    same = finish({"command": "make data again"}, outputs={"data/x.txt": b"1", "log.txt": b"b"})
    other = finish({"command": "make other data"}, outputs={"data/x.txt": b"2"})
    body = {**BASE, "mounts": [{"resource": f"runs/{data}/data", "path": "in"}]}
    earlier = finish(body)
    # Another run's outputs, identical below the mounted folder: the same contents.
    assert again(local, {**body, "mounts": [{"resource": f"runs/{same}/data", "path": "in"}]}).json()["id"] == earlier
    changed = again(local, {**body, "mounts": [{"resource": f"runs/{other}/data", "path": "in"}]})
    assert changed.status_code == 201
    moved = again(local, {**body, "mounts": [{"resource": f"runs/{data}/data", "path": "elsewhere"}]})
    assert moved.status_code == 201


def test_uploads_count_by_their_contents_not_their_names(local, finish):
    for name, text in (("set", b"1"), ("copy", b"1"), ("other", b"2")):
        put = local.user.put(f"/uploads/{name}", content=make_tar({"a.txt": text}), params={"kind": "dir"})
        assert put.status_code == 201, put.text
    body = {**BASE, "mounts": [{"resource": "uploads/set", "path": "in"}]}
    earlier = finish(body)
    assert again(local, {**BASE, "mounts": [{"resource": "uploads/copy", "path": "in"}]}).json()["id"] == earlier
    assert again(local, {**BASE, "mounts": [{"resource": "uploads/other", "path": "in"}]}).status_code == 201


def test_failed_and_deleted_runs_are_never_reused(local, finish, app):
    finish(BASE, status="failed")
    assert again(local, BASE).status_code == 201
    complete = finish(BASE)
    assert again(local, BASE).json()["id"] == complete
    with app.state.database.transaction() as session:
        session.execute(update(Run).where(Run.id == complete).values(deleted_at=utcnow()))
    assert again(local, BASE).status_code == 201


def test_another_users_run_is_not_reused(local, finish, app):
    from fastapi.testclient import TestClient

    earlier = finish(BASE)
    made = local.user.post("/users", json={"name": "ada"})
    assert made.status_code == 201, made.text
    with TestClient(app, base_url="http://testserver/api/v1",
                    headers={"Authorization": f"Bearer {made.json()['token']['token']}"}) as ada:
        theirs = ada.post("/runs", json={**BASE, "idempotent": True})
    assert theirs.status_code == 201 and theirs.json()["id"] != earlier
    assert again(local, BASE).json()["id"] == earlier  # the admin sees every run
