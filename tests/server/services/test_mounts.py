"""Mount validation when a run is created, and mount resolution in a lease."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import make_tar


@pytest.fixture
def sources(local):
    """A finished run with outputs, a queued run, a file upload and a folder upload."""
    finished = local.complete_run(outputs={"data.txt": b"data", "dir/x.txt": b"x"})
    queued = local.create_run()["id"]
    assert local.user.put("/uploads/weights.bin", content=b"w", params={"kind": "file"}).status_code == 201
    assert local.user.put("/uploads/set", content=make_tar({"a/b.txt": b"b"}), params={"kind": "dir"}).status_code == 201
    return {"finished": finished, "queued": queued}


REFUSALS = [
    ([{"resource": "runs/99"}], 400, "mount runs/99: run 99 does not exist"),
    ([{"resource": "runs/{queued}"}], 400, "run {queued} is machine_requested; only complete, failed or stopped runs can be mounted"),
    ([{"resource": "runs/{finished}/missing.txt"}], 400, "run {finished} has no output 'missing.txt'"),
    ([{"resource": "runs/{finished}/../../../x"}], 400, "escapes its root with '..'"),
    ([{"resource": "runs/{finished}/data.txt", "path": "../outside"}], 400, "escapes its root with '..'"),
    ([{"resource": "/etc/passwd"}], 400, "not an absolute path"),
    ([{"resource": "runs/{finished}/data.txt", "path": "/abs"}], 400, "must be relative, not absolute"),
    ([{"resource": "runs/{finished}/data.txt", "path": "x"}, {"resource": "uploads/weights.bin", "path": "x"}],
     400, "two mounts on one path: 'x'"),
    ([{"resource": "runs/{finished}/dir", "path": "a"}, {"resource": "uploads/set", "path": "a/b"}],
     400, "mount paths 'a' and 'a/b' overlap"),
    ([{"resource": "uploads/nope"}], 400, "mount uploads/nope: upload 'nope' does not exist"),
    ([{"resource": "uploads/weights.bin/inner"}], 400, "upload 'weights.bin' has no 'inner'"),
    ([{"resource": "uploads/set/a/missing"}], 400, "upload 'set' has no 'a/missing'"),
    ([{"resource": "datasets/x"}], 400, "must be runs/N[/path] or uploads/NAME[/path]"),
    ([{"resource": "runs/abc"}], 400, "'abc' is not a run number"),
]


@pytest.mark.parametrize("mounts, status, message", REFUSALS)
def test_bad_mounts_are_refused_with_the_reason(local, sources, mounts, status, message):
    mounts = [{k: v.format(**sources) for k, v in m.items()} for m in mounts]
    before = local.user.get("/runs").json()["runs"]
    response = local.user.post("/runs", json={"command": "true", "mounts": mounts})
    assert response.status_code == status, response.text
    assert message.format(**sources) in response.json()["detail"]
    assert local.user.get("/runs").json()["runs"] == before


def test_another_users_run_cannot_be_mounted(local, sources):
    other = local.user.post("/users", json={"name": "bob"}).json()["token"]["token"]
    refused = local.user.post("/runs", headers={"Authorization": f"Bearer {other}"},
                              json={"command": "true", "mounts": [{"resource": f"runs/{sources['finished']}"}]})
    assert refused.status_code == 400
    assert "does not exist" in refused.json()["detail"]


def test_lease_names_where_each_mount_lives(local, sources):
    finished = sources["finished"]
    run = local.create_run(mounts=[
        {"resource": f"runs/{finished}/data.txt"},
        {"resource": f"runs/{finished}/dir", "path": "inputs/dir"},
        {"resource": f"runs/{finished}", "path": "all"},
        {"resource": "uploads/weights.bin"},
        {"resource": "uploads/set/a"},
    ])
    assert [m["path"] for m in run["spec"]["mounts"]] == ["data.txt", "inputs/dir", "all", "weights.bin", "a"]
    worker = local.register()
    local.lease(worker)  # the queued run from the fixture comes first
    lease = local.lease(worker)
    assert lease["run_id"] == run["id"]
    kinds = [(m["path"], m["kind"]) for m in lease["mounts"]]
    assert kinds == [("data.txt", "file"), ("inputs/dir", "dir"), ("all", "dir"), ("weights.bin", "file"), ("a", "dir")]
    assert Path(lease["mounts"][0]["local_path"]).read_bytes() == b"data"
    assert (Path(lease["mounts"][4]["local_path"]) / "b.txt").read_bytes() == b"b"
    assert (Path(lease["storage_root"]) / "storage-id").read_text().strip() == lease["storage_id"]
    assert local.run(finished)["mounted_by"] == [run["id"]]
    fetched = local.worker.get(f"/workers/mounts/runs/{finished}/data.txt")
    assert fetched.status_code == 200 and fetched.content == b"data"
    assert local.worker.get("/workers/mounts/runs/1/%2e%2e/%2e%2e/cast.db").status_code == 400


def test_a_run_that_saved_nothing_mounts_as_an_empty_read_only_folder(local):
    empty = local.complete_run()  # nothing pushed
    run_id = local.create_run(mounts=[{"resource": f"runs/{empty}", "path": "in"}])["id"]
    lease = local.lease(local.register())
    assert lease["run_id"] == run_id
    folder = Path(lease["mounts"][0]["local_path"])
    assert list(folder.iterdir()) == [] and folder.stat().st_mode & 0o777 == 0o555
