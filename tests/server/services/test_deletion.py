"""cast.server.services.deletion (and the upload rules of files.py it relies on):
what is freed and what is refused, the record kept, files removed only once
the deletion commits, pruning's choice of runs, and usage per user."""

from __future__ import annotations

import io

import pytest

from cast.server.errors import Conflict, Forbidden, Gone, InUse, NameTaken
from cast.server.models import Run, Upload
from cast.server.services import deletion, files, leases, storage
from cast.server.settings import Settings
from .conftest import add_user, admin_of


@pytest.fixture
def settings(tmp_path) -> Settings:
    # These tests' runs are carried by hand (no process), for more than one user.
    return Settings(data_dir=tmp_path / "data", lease_seconds=2, allow_unsandboxed_workers=True)


def _upload(app, settings, owner, name: str, body: bytes, *, replace: bool = False):
    return files.store_upload(app.state.database, settings=settings, owner=owner, name=name, kind="file",
                              source=io.BytesIO(body), replace=replace)


def _active_run(local, **spec) -> dict:
    """A run leased and running (so it is neither queued nor final)."""
    run_id = local.create_run(**spec)["id"]
    lease = local.lease(local.register("busy"))
    assert lease["run_id"] == run_id
    local.advance(lease, "mounting", "running")
    return lease


def test_a_deletion_that_does_not_commit_removes_nothing(local, app, settings):
    run_id = local.complete_run({"model.bin": b"x" * 1000})
    folder = storage.run_outputs_dir(settings, run_id)
    database = app.state.database
    admin = admin_of(database)
    with pytest.raises(RuntimeError):
        with database.transaction() as session:
            deletion.delete_run_outputs(session, settings=settings, run_id=run_id, viewer=admin)
            raise RuntimeError("rolled back")
    assert (folder / "model.bin").read_bytes() == b"x" * 1000
    with database.transaction() as session:
        done = deletion.delete_run_outputs(session, settings=settings, run_id=run_id, viewer=admin)
        assert folder.exists()  # still there until the commit
    assert (done.freed, done.already) == (1000, False)
    assert not folder.exists()
    with database.transaction() as session:
        again = deletion.delete_run_outputs(session, settings=settings, run_id=run_id, viewer=admin)
        assert (again.already, again.freed, again.deleted_at) == (True, 0, done.deleted_at)
        run = session.get(Run, run_id)
        assert (run.status, run.outputs_size) == ("complete", 1000)
        with pytest.raises(Gone, match=f"run {run_id}'s outputs were deleted at "):
            files.output_manifest(session, run_id=run_id, viewer=admin)


def test_what_a_live_run_mounts_or_runs_is_refused_and_only_admins_force(local, app, settings):
    database = app.state.database
    admin, alice = admin_of(database), add_user(database, "alice")
    source = local.complete_run({"a.txt": b"a"})
    _upload(app, settings, admin, "data.csv", b"1,2\n")
    lease = _active_run(local, mounts=[{"resource": f"runs/{source}"}, {"resource": "uploads/data.csv"}])
    with database.transaction() as session:
        with pytest.raises(InUse, match=rf"runs/{source} is mounted by run {lease['run_id']} \(running\); "
                                        "wait for it to finish or stop it, or delete it anyway with --force"):
            deletion.delete_run_outputs(session, settings=settings, run_id=source, viewer=admin)
        with pytest.raises(InUse, match=rf"uploads/data.csv is mounted by run {lease['run_id']} \(running\)"):
            deletion.delete_upload(session, settings=settings, name="data.csv", viewer=admin)
        with pytest.raises(Conflict, match=f"run {lease['run_id']} is running; stop it first"):
            deletion.delete_run_outputs(session, settings=settings, run_id=lease["run_id"], viewer=admin)
        with pytest.raises(Forbidden, match="only admins may delete with --force"):
            deletion.delete_upload(session, settings=settings, name="data.csv", viewer=alice, force=True)
        forced = deletion.delete_upload(session, settings=settings, name="data.csv", viewer=admin, force=True)
    assert forced.freed == 4 and not storage.upload_path(settings, "data.csv").exists()
    with database.transaction(write=False) as session:
        assert session.get(Upload, "data.csv").deleted_at == forced.deleted_at


def test_an_upload_is_replaced_only_while_no_run_mounted_it(local, app, settings):
    database = app.state.database
    admin, alice = admin_of(database), add_user(database, "alice")
    _upload(app, settings, admin, "w.bin", b"old")
    with pytest.raises(NameTaken, match="upload 'w.bin' already exists"):
        _upload(app, settings, admin, "w.bin", b"new")
    with pytest.raises(NameTaken, match="belongs to another user"):
        _upload(app, settings, alice, "w.bin", b"new", replace=True)
    assert _upload(app, settings, admin, "w.bin", b"newer", replace=True).size == 5
    assert storage.upload_path(settings, "w.bin").read_bytes() == b"newer"
    local.complete_run(mounts=[{"resource": "uploads/w.bin"}])
    with pytest.raises(InUse, match=r"upload 'w.bin' cannot be replaced: run 1 mounted it; upload under a new name"):
        _upload(app, settings, admin, "w.bin", b"x", replace=True)
    assert storage.upload_path(settings, "w.bin").read_bytes() == b"newer"
    with database.transaction() as session:
        deletion.delete_upload(session, settings=settings, name="w.bin", viewer=admin)
    with pytest.raises(NameTaken, match="was deleted, but run 1 mounted it, so its name stays with it"):
        _upload(app, settings, admin, "w.bin", b"x")
    # Never mounted: once deleted, its name is free again, for anyone.
    _upload(app, settings, admin, "scratch", b"1")
    with database.transaction() as session:
        deletion.delete_upload(session, settings=settings, name="scratch", viewer=admin)
    again = _upload(app, settings, alice, "scratch", b"22")
    assert (again.owner_id, again.size, again.deleted_at) == (alice.id, 2, None)
    assert list(settings.tmp_dir.iterdir()) == []


def test_prune_picks_old_finished_unmounted_runs(local, app, settings):
    database = app.state.database
    admin = admin_of(database)
    labeled = local.complete_run({"a": b"1" * 10}, labels=["keep"])
    mounted = local.complete_run({"b": b"2" * 20})
    failed = local.complete_run({"c": b"3" * 30}, status="failed")
    empty = local.complete_run({})
    _active_run(local, mounts=[{"resource": f"runs/{mounted}"}])
    with database.transaction() as session:
        def prune(**options) -> deletion.Pruned:
            given = {"older_than": 0.001, "keep_labeled": False, "user": None, "dry_run": True, **options}
            return deletion.prune(session, settings=settings, viewer=admin, **given)

        assert prune(older_than=3600).runs == []
        assert (prune().runs, prune().freed) == ([labeled, failed], 40)
        assert prune(keep_labeled=True).runs == [failed]
        assert prune(user="admin").runs == [labeled, failed]
        real = prune(dry_run=False, keep_labeled=True)
    assert (real.runs, real.freed) == ([failed], 30)
    assert not storage.run_outputs_dir(settings, failed).exists()
    assert storage.run_outputs_dir(settings, labeled).exists() and storage.run_outputs_dir(settings, mounted).exists()
    with database.transaction(write=False) as session:
        assert session.get(Run, empty).deleted_at is None
        assert session.get(Run, failed).status == "failed"


def test_usage_per_user_and_who_may_ask(local, app, settings):
    database = app.state.database
    admin, alice = admin_of(database), add_user(database, "alice")
    run_id = local.complete_run({"a": b"1" * 100})
    _upload(app, settings, admin, "d", b"22")
    _upload(app, settings, alice, "e", b"333")
    with database.transaction(write=False) as session:
        everyone = {u["user"]: u for u in deletion.usage(session, viewer=admin, user=None)}
        assert everyone["admin"]["runs"] == [{"id": run_id, "status": "complete", "size": 100}]
        assert (everyone["admin"]["total"], everyone["alice"]["total"]) == (102, 3)
        assert [u["user"] for u in deletion.usage(session, viewer=alice, user=None)] == ["alice"]
        assert [u["user"] for u in deletion.usage(session, viewer=admin, user="alice")] == ["alice"]
        with pytest.raises(Forbidden):
            deletion.usage(session, viewer=alice, user="admin")


def test_a_forced_deletion_leaves_the_queued_run_that_mounts_it_nothing_to_mount(local, app, settings):
    database = app.state.database
    admin = admin_of(database)
    source = local.complete_run({"a.txt": b"a"})
    local.create_run(mounts=[{"resource": f"runs/{source}"}])  # queued: no worker claims it here
    with database.transaction() as session:
        with pytest.raises(InUse):
            deletion.delete_run_outputs(session, settings=settings, run_id=source, viewer=admin)
        deletion.delete_run_outputs(session, settings=settings, run_id=source, viewer=admin, force=True)
    with database.transaction(write=False) as session:
        path, kind = leases.resolve_mount_source(session, resource=f"runs/{source}", settings=settings)
    # Not recreated as an empty folder: the worker finds nothing and the mount fails.
    assert (path, kind) == (storage.run_outputs_dir(settings, source), "dir") and not path.exists()
    fetched = local.worker.get(f"/workers/mounts/runs/{source}")
    assert fetched.status_code == 404, fetched.text
