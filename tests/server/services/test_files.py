"""cast.server.services.files: run outputs and uploads received whole or not
at all, replaced or refused as their rules say, and found again only by who
may see them and only inside their own folder."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from cast.protocol.outputs import StagedFile, StagedOutputs, staging_name
from cast.protocol.validate import SpecError
from cast.server.errors import BadRequest, Conflict, LeaseLost, NameTaken, PathNotFound, RunNotFound, UploadNotFound
from cast.server.models import Run
from cast.server.services import files
from ..conftest import make_tar
from .conftest import add_user, admin_of


def _push(app, settings, lease: dict, outputs: dict[str, bytes]) -> tuple[int, int]:
    return files.store_outputs(app.state.database, settings=settings, run_id=lease["run_id"],
                               lease_token=lease["lease_token"], source=io.BytesIO(make_tar(outputs)))


def _upload(app, settings, owner, name: str, kind: str, body: bytes):
    return files.store_upload(app.state.database, settings=settings, owner=owner, name=name, kind=kind,
                              source=io.BytesIO(body))


def test_a_push_replaces_the_outputs_whole_and_records_their_size(local, app, settings):
    local.create_run()
    lease = local.lease(local.register())
    local.advance(lease, "mounting", "running", "saving", "pushing")
    assert _push(app, settings, lease, {"a.txt": b"aa", "sub/b.txt": b"bbb"}) == (2, 5)
    assert _push(app, settings, lease, {"c.txt": b"c"}) == (1, 1)
    admin, run_id = admin_of(app.state.database), lease["run_id"]
    with app.state.database.transaction(write=False) as session:
        assert [(f.path, f.size) for f in files.output_manifest(session, run_id=run_id, viewer=admin)] == [("c.txt", 1)]
        assert session.get(Run, run_id).outputs_size == 1
        assert files.output_path(session, settings=settings, run_id=run_id, viewer=admin,
                                 path="c.txt").read_bytes() == b"c"
        with pytest.raises(PathNotFound, match=f"runs/{run_id}/a.txt not found"):
            files.output_path(session, settings=settings, run_id=run_id, viewer=admin, path="a.txt")
        with pytest.raises(BadRequest):
            files.output_path(session, settings=settings, run_id=run_id, viewer=admin, path="../../admin-token")
    alice = add_user(app.state.database, "alice")
    with app.state.database.transaction(write=False) as session:
        with pytest.raises(RunNotFound):
            files.output_manifest(session, run_id=run_id, viewer=alice)
        with pytest.raises(RunNotFound):
            files.output_path(session, settings=settings, run_id=run_id, viewer=alice, path="c.txt")
    assert list(settings.tmp_dir.iterdir()) == []


def test_a_push_without_the_lease_or_to_a_run_being_killed_is_refused(local, app, settings):
    local.create_run()
    lease = local.lease(local.register())
    local.advance(lease, "mounting", "running")
    with pytest.raises(LeaseLost):
        _push(app, settings, {**lease, "lease_token": "stolen"}, {"a": b"a"})
    assert local.user.post(f"/runs/{lease['run_id']}/kill").json()["status"] == "killing"
    with pytest.raises(Conflict, match=f"run {lease['run_id']} is being killed; its outputs are dropped"):
        _push(app, settings, lease, {"a": b"a"})
    with app.state.database.transaction(write=False) as session:
        assert files.output_manifest(session, run_id=lease["run_id"], viewer=admin_of(app.state.database)) == []


def test_uploads_are_named_once_and_seen_only_by_their_owner_and_admins(app, settings):
    database = app.state.database
    admin, alice = admin_of(database), add_user(database, "alice")
    upload = _upload(app, settings, alice, "weights.bin", "file", b"12345")
    assert (upload.kind, upload.size, upload.files) == ("file", 5, 1)
    _upload(app, settings, admin, "data", "dir", make_tar({"train/x.csv": b"x", "train/y.csv": b"yy", "test.csv": b""}))
    with pytest.raises(NameTaken, match="upload 'data' already exists"):
        _upload(app, settings, alice, "data", "file", b"other")
    with pytest.raises(SpecError, match="upload name '..' must be"):
        _upload(app, settings, alice, "..", "file", b"x")
    with database.transaction(write=False) as session:
        assert [u.name for u in files.list_uploads(session, viewer=admin)] == ["weights.bin", "data"]
        assert [u.name for u in files.list_uploads(session, viewer=alice)] == ["weights.bin"]
        assert files.visible_upload(session, name="weights.bin", viewer=admin).owner_id == alice.id
        with pytest.raises(UploadNotFound, match="upload 'data' not found"):
            files.visible_upload(session, name="data", viewer=alice)
        with pytest.raises(UploadNotFound):
            files.upload_manifest(session, name="data", viewer=alice)
    assert list(settings.tmp_dir.iterdir()) == []


def test_an_upload_is_listed_and_found_under_a_path(app, settings):
    admin = admin_of(app.state.database)
    _upload(app, settings, admin, "one", "file", b"1")
    _upload(app, settings, admin, "data", "dir", make_tar({"train/x.csv": b"x", "train2/y.csv": b"yy", "t.csv": b""}))
    with app.state.database.transaction(write=False) as session:
        listed = lambda name, under="": [  # noqa: E731
            f.path for f in files.upload_manifest(session, name=name, viewer=admin, under=under)]
        assert listed("data") == ["t.csv", "train/x.csv", "train2/y.csv"]
        assert listed("data", "train") == ["train/x.csv"]  # not train2/
        assert listed("data", "./train/x.csv") == ["train/x.csv"]
        assert listed("one") == ["one"]
        with pytest.raises(PathNotFound, match="uploads/data/nothing not found"):
            listed("data", "nothing")
        found = lambda name, path: files.upload_file_path(  # noqa: E731
            session, settings=settings, name=name, viewer=admin, path=path)
        assert found("one", "").read_bytes() == b"1"
        assert found("data", "train2/y.csv").read_bytes() == b"yy"
        assert found("data", "train").is_dir()
        with pytest.raises(PathNotFound, match="uploads/one/x not found"):
            found("one", "x")
        with pytest.raises(PathNotFound, match="uploads/data/train/z.csv not found"):
            found("data", "train/z.csv")
        with pytest.raises(BadRequest):
            found("data", "../one")


def test_a_refused_upload_leaves_nothing_behind(app, settings):
    admin = admin_of(app.state.database)
    assert _upload(app, settings, admin, "empty", "dir", make_tar({})).files == 0  # a valid, empty folder
    with pytest.raises(BadRequest, match="not a tar"):
        _upload(app, settings, admin, "broken", "dir", b"garbage" * 100)
    with app.state.database.transaction(write=False) as session:
        assert [u.name for u in files.list_uploads(session, viewer=admin)] == ["empty"]
    assert not (settings.uploads_dir / "broken").exists() and list(settings.tmp_dir.iterdir()) == []


# --- outputs staged by a worker that shares this filesystem -----------------------------

def _staged(settings, run_id: int, contents: dict[str, bytes]) -> tuple[StagedOutputs, Path]:
    """A staging folder as the worker leaves it, and the manifest it sends."""
    name = staging_name(run_id)
    folder = settings.tmp_dir / name
    folder.mkdir()
    for path, data in contents.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    listed = [StagedFile(path, len(data), hashlib.sha256(data).hexdigest()) for path, data in contents.items()]
    return StagedOutputs(lease_token="", staging=name, files=listed, folders=[]), folder


def _pushing(local) -> dict:
    local.create_run()
    lease = local.lease(local.register())
    local.advance(lease, "mounting", "running", "saving", "pushing")
    return lease


def test_a_staged_tree_is_adopted_in_place_sealed_with_its_manifest(local, app, settings):
    lease = _pushing(local)
    run_id = lease["run_id"]
    staged, folder = _staged(settings, run_id, {"a.txt": b"aa", "sub/b.bin": b"bbb"})
    staged.lease_token, staged.folders = lease["lease_token"], ["empty"]
    (folder / "empty").mkdir()
    inode = (folder / "sub/b.bin").stat().st_ino
    assert files.adopt_outputs(app.state.database, settings=settings, run_id=run_id, staged=staged) == (2, 5)
    admin = admin_of(app.state.database)
    with app.state.database.transaction(write=False) as session:
        manifest = files.output_manifest(session, run_id=run_id, viewer=admin)
        stored = files.output_path(session, settings=settings, run_id=run_id, viewer=admin, path="sub/b.bin")
    assert [(f.path, f.size, f.sha256) for f in manifest] == [
        ("a.txt", 2, hashlib.sha256(b"aa").hexdigest()), ("sub/b.bin", 3, hashlib.sha256(b"bbb").hexdigest())]
    assert stored.stat().st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(stored.stat().st_mode) == 0o444 and stat.S_IMODE(stored.parent.stat().st_mode) == 0o555
    assert (stored.parent.parent / "empty").is_dir()
    assert list(settings.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("spoil, why", [
    (lambda folder, outside: os.symlink(outside, folder / "link"), "'link' is not a file the manifest names"),
    (lambda folder, outside: os.mkfifo(folder / "fifo"), "'fifo' is not a file the manifest names"),
    (lambda folder, outside: (folder / "extra.txt").write_bytes(b"x"), "'extra.txt' is not a file the manifest names"),
    (lambda folder, outside: os.link(outside, folder / "a.txt") if not (folder / "a.txt").unlink() else None,
     "'a.txt' is linked elsewhere"),
    (lambda folder, outside: (folder / "a.txt").write_bytes(b"longer"), "'a.txt' holds 6 bytes, not 2"),
    (lambda folder, outside: (folder / "a.txt").unlink(), "'a.txt' is named but was not staged"),
    (lambda folder, outside: (folder / "bad\nname").write_bytes(b""), "cannot be stored"),
], ids=["symlink", "fifo", "unlisted", "hardlink-outside", "size", "missing", "name"])
def test_a_staged_tree_that_differs_from_its_manifest_is_refused_and_removed(local, app, settings, tmp_path,
                                                                             spoil, why):
    lease = _pushing(local)
    outside = tmp_path / "host-file"
    outside.write_bytes(b"hh")
    staged, folder = _staged(settings, lease["run_id"], {"a.txt": b"aa"})
    staged.lease_token = lease["lease_token"]
    spoil(folder, outside)
    with pytest.raises(BadRequest, match=why):
        files.adopt_outputs(app.state.database, settings=settings, run_id=lease["run_id"], staged=staged)
    assert list(settings.tmp_dir.iterdir()) == []
    assert stat.S_IMODE(outside.stat().st_mode) != 0o444 and outside.read_bytes() == b"hh"
    with app.state.database.transaction(write=False) as session:
        assert files.output_manifest(session, run_id=lease["run_id"], viewer=admin_of(app.state.database)) == []


def test_only_a_staging_folder_of_the_run_itself_is_adopted(local, app, settings):
    lease = _pushing(local)
    run_id = lease["run_id"]
    staged, folder = _staged(settings, run_id, {"a.txt": b"aa"})
    staged.lease_token = lease["lease_token"]
    for name in ["../runs", f"staged-{run_id + 1}-{'0' * 32}", "."]:
        with pytest.raises(BadRequest, match="is not a staging folder of run"):
            files.adopt_outputs(app.state.database, settings=settings, run_id=run_id,
                                staged=StagedOutputs(lease["lease_token"], name, staged.files))
    with pytest.raises(LeaseLost):
        files.adopt_outputs(app.state.database, settings=settings, run_id=run_id,
                            staged=StagedOutputs("stolen", staged.staging, staged.files))
    assert not folder.exists()  # a push refused for good leaves nothing behind
