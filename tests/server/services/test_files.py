"""cast.server.services.files: run outputs and uploads received whole or not
at all, replaced or refused as their rules say, and found again only by who
may see them and only inside their own folder."""

from __future__ import annotations

import io

import pytest

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
