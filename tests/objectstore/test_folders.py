"""An output's empty folders are kept on both stores and by every way a push
goes (to the object store, as a tar over HTTP, in a staging folder on the
server's own filesystem): `cast ls` lists them, `cast cp` copies them, and a
later run that mounts the outputs finds them. So are an uploaded folder's,
by `cast upload` (straight to the object store, or through the server to its
filesystem: `cast ls` lists them on both) and by an upload the server relays
to the object store."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.conftest import worker_on_tmpfs

PATHS = ["s3", "filesystem-http", "filesystem-staged"]


@pytest.fixture(params=PATHS)
def server(request, start_server):
    """This module's server, on the object store or on its own filesystem."""
    if request.param == "s3":
        return start_server(env=request.getfixturevalue("s3_env"))
    return start_server()


@pytest.fixture
def worker(request, server, start_worker, base_env):
    if request.node.callspec.params["server"] != "filesystem-http":
        yield start_worker(server)
        return
    with worker_on_tmpfs(server, base_env, name="shm") as started:
        yield started


def test_empty_output_folders_are_kept(cli, worker, server, tmp_path):
    made = cli("run", "mkdir -p out/empty out/deep/er/est out/full && echo hi > out/full/a.txt")
    assert made.returncode == 0, made

    assert cli("ls", "runs/1/out", "--json").json() == [
        {"name": "deep/", "type": "dir", "size": 0}, {"name": "empty/", "type": "dir", "size": 0},
        {"name": "full/", "type": "dir", "size": 3}]
    assert cli("ls", "runs/1/out/deep/er", "--json").json() == [{"name": "est/", "type": "dir", "size": 0}]
    assert cli("ls", "runs/1/out/empty", "--json").json() == []
    with server.api() as api:
        listed = api.get("/runs/1/outputs").json()
    assert [f["path"] for f in listed["files"]] == ["out/full/a.txt"]
    assert listed["folders"] == ["out/deep/er/est", "out/empty"]

    copied = cli("cp", "runs/1/out", "back")
    assert copied.returncode == 0, copied
    assert (tmp_path / "back" / "empty").is_dir() and (tmp_path / "back" / "deep" / "er" / "est").is_dir()
    assert (tmp_path / "back" / "full" / "a.txt").read_text() == "hi\n"

    mounted = cli("run", "-m", "runs/1/out:in", "find in -type d -empty | sort")
    assert mounted.returncode == 0, mounted
    assert [line for line in mounted.stdout.splitlines() if line.startswith("in/")] == ["in/deep/er/est", "in/empty"]
    alone = cli("run", "-m", "runs/1/out/empty:e", "test -d e && echo an-empty-folder")
    assert alone.returncode == 0 and "an-empty-folder" in alone.stdout.splitlines(), alone


def _folder_with_empty_ones(root):
    (root / "empty").mkdir(parents=True)
    (root / "deep" / "er").mkdir(parents=True)
    (root / "full").mkdir()
    (root / "full" / "a.txt").write_text("hi\n")


def test_empty_upload_folders_are_kept(cli, worker, server, tmp_path):
    _folder_with_empty_ones(tmp_path / "ds")
    uploaded = cli("upload", "ds")
    assert uploaded.returncode == 0, uploaded

    # Either store keeps them as entries of the upload's manifest, which `cast ls` lists.
    assert cli("ls", "uploads/ds", "--json").json() == [
        {"name": "deep/", "type": "dir", "size": 0}, {"name": "empty/", "type": "dir", "size": 0},
        {"name": "full/", "type": "dir", "size": 3}]
    assert cli("ls", "uploads/ds/deep", "--json").json() == [{"name": "er/", "type": "dir", "size": 0}]
    assert cli("ls", "uploads/ds/empty", "--json").json() == []
    with server.api() as api:
        listed = api.get("/uploads/ds", params={"list": True}).json()
    assert [f["path"] for f in listed["files"]] == ["full/a.txt"] and listed["folders"] == ["deep/er", "empty"]

    copied = cli("cp", "uploads/ds", "back")
    assert copied.returncode == 0, copied
    assert (tmp_path / "back" / "empty").is_dir() and (tmp_path / "back" / "deep" / "er").is_dir()
    assert (tmp_path / "back" / "full" / "a.txt").read_text() == "hi\n"
    mounted = cli("run", "-m", "uploads/ds:in", "find in -type d -empty | sort")
    assert mounted.returncode == 0, mounted
    assert [line for line in mounted.stdout.splitlines() if line.startswith("in/")] == ["in/deep/er", "in/empty"]
    alone = cli("run", "-m", "uploads/ds/empty:e", "test -d e && echo an-empty-folder")
    assert alone.returncode == 0 and "an-empty-folder" in alone.stdout.splitlines(), alone


def test_empty_folders_of_an_upload_relayed_to_the_store_are_kept(start_server, s3_env, tmp_path):
    server = start_server(env=s3_env)
    _folder_with_empty_ones(tmp_path / "ds")
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        tar.add(tmp_path / "ds", arcname=".")
    with server.api() as api:
        put = api.put("/uploads/relayed", params={"kind": "dir"}, content=body.getvalue(),
                      headers={"Content-Type": "application/x-tar"})
        assert put.status_code == 201, put.text
        assert api.get("/uploads/relayed", params={"list": True}).json()["folders"] == ["deep/er", "empty"]


@pytest.mark.parametrize("folders, detail", [
    (["../out"], "upload 'ds' folder '../out' escapes its root with '..'"),
    (["a//b"], "upload 'ds': the folder 'a//b' is not a clean path"),
    (["/abs"], "upload 'ds' folder '/abs' must be relative, not absolute"),
])
def test_an_upload_manifest_naming_a_bad_folder_is_refused(start_server, s3_env, folders, detail):
    server = start_server(env=s3_env)
    with server.api() as api:
        for step in ("plan", "commit"):
            answer = api.post(f"/uploads/ds/{step}", json={"kind": "dir", "files": [], "folders": folders})
            assert answer.status_code == 400 and detail in answer.json()["detail"], (step, answer.text)
        single = api.post("/uploads/ds/plan", json={"kind": "file", "folders": ["x"], "files": [
            {"path": "ds", "size": 1, "sha256": "0" * 64}]})
        assert (single.status_code, single.json()["detail"]) == (
            400, "upload 'ds': a file upload is one file, named as the upload")
