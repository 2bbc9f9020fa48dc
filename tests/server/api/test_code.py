"""Code bundle routes: stored once per key, checked, fetched by workers."""

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
    assert run["spec"]["code_bundle"] == key
    lease = local.lease(local.register())
    assert lease["spec"]["code_bundle"] == key
    assert local.worker.get(f"/code/{key}").content == body
    assert local.user.get(f"/code/{key}").content == body


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
