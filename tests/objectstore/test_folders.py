"""An output's empty folders are kept on both stores and by every way a push
goes (to the object store, as a tar over HTTP, in a staging folder on the
server's own filesystem): `cast ls` lists them, `cast cp` copies them, and a
later run that mounts the outputs finds them."""

from __future__ import annotations

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
