"""Upload routes: files and folders, streamed, visible only once complete,
names checked, owners respected."""

from __future__ import annotations

import io
import tarfile
import threading

import httpx
import pytest

from tests.conftest import wait_until

from ..conftest import make_tar


def test_file_and_folder_uploads(local, settings):
    created = local.user.put("/uploads/weights.bin", params={"kind": "file"}, content=b"w" * 1000)
    assert created.status_code == 201
    assert created.json() | {"created_at": None} == {"name": "weights.bin", "kind": "file", "size": 1000,
                                                    "files": 1, "created_at": None, "deleted_at": None}
    folder = local.user.put("/uploads/data set", params={"kind": "dir"},
                            content=make_tar({"train/a.txt": b"a", "test/b.txt": b"bb"}))
    assert folder.status_code == 201 and folder.json()["files"] == 2 and folder.json()["size"] == 3
    assert [u["name"] for u in local.user.get("/uploads").json()["uploads"]] == ["weights.bin", "data set"]
    assert local.user.get("/uploads/weights.bin").content == b"w" * 1000
    assert [f["path"] for f in local.user.get("/uploads/data set", params={"list": 1}).json()["files"]] == [
        "test/b.txt", "train/a.txt"]
    assert [f["path"] for f in local.user.get("/uploads/data set/train", params={"list": 1}).json()["files"]] == [
        "train/a.txt"]
    assert local.user.get("/uploads/data set/test/b.txt").content == b"bb"
    with tarfile.open(fileobj=io.BytesIO(local.user.get("/uploads/data set/train").content)) as archive:
        assert archive.getnames() == ["a.txt"]
    assert local.user.get("/uploads/weights.bin", params={"list": 1}).json()["files"][0]["path"] == "weights.bin"
    # Read-only at rest, so a worker sharing the server's files can mount them in place.
    stored = settings.uploads_dir
    assert (stored / "weights.bin").stat().st_mode & 0o777 == 0o444
    assert {path.relative_to(stored / "data set").as_posix(): path.stat().st_mode & 0o777
            for path in [stored / "data set", *(stored / "data set").rglob("*")]} == {
        ".": 0o555, "train": 0o555, "test": 0o555, "train/a.txt": 0o444, "test/b.txt": 0o444}


def test_a_taken_name_is_409_and_keeps_the_first(local):
    assert local.user.put("/uploads/x", content=b"first").status_code == 201
    taken = local.user.put("/uploads/x", content=b"second")
    assert taken.status_code == 409
    assert taken.json() == {"detail": "upload 'x' already exists"}
    assert local.user.get("/uploads/x").content == b"first"


@pytest.mark.parametrize("name, status", [("%2e%2e", 400), ("%2e", 400), ("a%00b", 400), ("bad|name", 400),
                                          ("new%0Aline", 400), ("x" * 201, 422)])
def test_bad_upload_names_are_refused(local, name, status):
    response = local.user.put(f"/uploads/{name}", content=b"x")
    assert response.status_code == status, response.text
    assert local.user.get("/uploads").json()["uploads"] == []


@pytest.mark.parametrize("path", ["%2e%2e/%2e%2e/admin-token", "sub/%2e%2e/%2e%2e/%2e%2e/cast.db"])
def test_paths_outside_an_upload_are_refused(local, path):
    local.user.put("/uploads/d", params={"kind": "dir"}, content=make_tar({"sub/a.txt": b"a"}))
    for params in ({}, {"list": 1}):
        response = local.user.get(f"/uploads/d/{path}", params=params)
        assert response.status_code in (400, 404)
        assert set(response.json()) == {"detail"}  # an error, not the file


def test_a_partial_upload_is_never_visible(live, server):
    release = threading.Event()
    result = {}
    # Larger than the server's read chunk: some of it is on its disk before the rest comes.
    first, rest = b"a" * (4 << 20), b"b" * 65536

    def slow_body():
        yield first
        release.wait(120)
        yield rest

    def upload():
        result["response"] = live.user.put("/uploads/slow.bin", content=slow_body())

    def staged_bytes() -> int:
        return sum(path.stat().st_size for path in (server.data_dir / "tmp").rglob("*") if path.is_file())

    uploader = threading.Thread(target=upload)
    uploader.start()
    # Part of it is on the server's disk, in its staging folder: the upload is under way.
    wait_until(lambda: staged_bytes() > 0, timeout=120, what="the first bytes to reach the server")
    assert live.user.get("/uploads").json()["uploads"] == []
    assert live.user.get("/uploads/slow.bin").status_code == 404
    assert live.user.put("/uploads/other", content=b"not blocked").status_code == 201
    release.set()
    uploader.join(120)
    assert result["response"].status_code == 201
    assert live.user.get("/uploads/slow.bin").content == first + rest


def test_an_aborted_upload_leaves_nothing(live, server):
    def broken_body():
        yield b"a" * 65536
        raise ConnectionAbortedError("client went away")

    with pytest.raises((ConnectionAbortedError, httpx.HTTPError)):
        live.user.put("/uploads/broken", content=broken_body())
    wait_until(lambda: not any((server.data_dir / "tmp").iterdir()), timeout=10, what="the temp folder to empty")
    assert live.user.get("/uploads").json()["uploads"] == []
    assert live.user.put("/uploads/broken", content=b"whole").status_code == 201


def test_users_see_only_their_own_uploads(local):
    bob = local.user.post("/users", json={"name": "bob"}).json()["token"]["token"]
    as_bob = {"Authorization": f"Bearer {bob}"}
    local.user.put("/uploads/admins", content=b"secret")
    assert local.user.put("/uploads/bobs", content=b"mine", headers=as_bob).status_code == 201
    assert [u["name"] for u in local.user.get("/uploads", headers=as_bob).json()["uploads"]] == ["bobs"]
    assert local.user.get("/uploads/admins", headers=as_bob).status_code == 404
    assert {u["name"] for u in local.user.get("/uploads").json()["uploads"]} == {"admins", "bobs"}
