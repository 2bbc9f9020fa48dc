"""Code bundle routes: stored once per owner and key, checked, fetched back by
their owner and by workers through a run's digest."""

from __future__ import annotations

import hashlib
import tarfile

from ..conftest import make_tar


def test_bundles_are_stored_once_and_used_by_runs(local):
    body = make_tar({"train.py": b"print('hi')\n"})
    key = hashlib.sha256(body).hexdigest()
    assert local.user.head(f"/code/{key}").status_code == 404
    assert local.user.put(f"/code/{key}", content=body).status_code == 201
    assert local.user.put(f"/code/{key}", content=body).status_code == 200
    assert local.user.head(f"/code/{key}").status_code == 200
    run = local.create_run(code_bundle=key)
    assert run["spec"]["code_bundle"] == key and run["spec"]["code_digest"] == key
    lease = local.lease(local.register())
    assert lease["spec"]["code_digest"] == key
    assert local.worker.get(f"/workers/code/{key}").content == body
    assert local.user.get(f"/code/{key}").content == body
    assert local.worker.get(f"/workers/code/{'3' * 64}").status_code == 404


def test_a_key_names_a_bundle_only_among_its_owners(local):
    """The client's key hashes a HEAD sha and a diff, which another user may
    know: claiming it first must not put other code into their runs."""
    key = "4" * 64  # e.g. the key of a clean checkout of a public commit
    mine, theirs = make_tar({"train.py": b"print('mine')\n"}), make_tar({"train.py": b"print('evil')\n"})
    bob = {"Authorization": "Bearer " + local.user.post("/users", json={"name": "bob"}).json()["token"]["token"]}

    assert local.user.put(f"/code/{key}", content=theirs, headers=bob).status_code == 201
    assert local.user.head(f"/code/{key}").status_code == 404
    assert local.user.get(f"/code/{key}").status_code == 404
    refused = local.user.post("/runs", json={"command": "true", "code_bundle": key})
    assert refused.status_code == 400 and "unknown" in refused.json()["detail"]
    assert local.user.put(f"/code/{key}", content=mine).status_code == 201

    run = local.create_run(code_bundle=key)
    bobs_run = local.user.post("/runs", json={"command": "true", "code_bundle": key}, headers=bob).json()
    assert run["spec"]["code_digest"] == hashlib.sha256(mine).hexdigest()
    assert bobs_run["spec"]["code_digest"] == hashlib.sha256(theirs).hexdigest()
    assert local.user.get(f"/code/{key}").content == mine
    assert local.user.get(f"/code/{key}", headers=bob).content == theirs
    # Users cannot fetch by digest; that route is the workers'.
    assert local.user.get(f"/workers/code/{bobs_run['spec']['code_digest']}").status_code == 403
    assert local.worker.get(f"/workers/code/{run['spec']['code_digest']}").content == mine


def test_bad_bundles_and_keys_are_refused(local):
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    key = "1" * 64
    assert local.user.put(f"/code/{key}", content=make_tar({}, extra=[link])).status_code == 400
    assert local.user.put(f"/code/{key}", content=b"garbage" * 100).status_code == 400
    assert local.user.head(f"/code/{key}").status_code == 404
    assert local.user.put("/code/not-a-hash", content=make_tar({"a": b"a"})).status_code == 422
    unknown = local.user.post("/runs", json={"command": "true", "code_bundle": "2" * 64})
    assert unknown.status_code == 400 and "unknown" in unknown.json()["detail"]
    both = local.user.post("/runs", json={"command": "true", "code_bundle": key, "git_url": "file:///x"})
    assert both.status_code == 422 and "not both" in both.json()["detail"]
