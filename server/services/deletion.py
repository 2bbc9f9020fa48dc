"""Deleting stored data while keeping its record: `cast rm`, `cast prune`, the
retention pass, and what each user's runs and uploads hold (`cast du`).

Deleting frees the files of a run's outputs or of an upload and marks the
record (`deleted_at`); the run, its status, transitions, log and lineage stay.
Nothing is deleted that a queued or active run mounts, unless an admin forces
it. The files are removed only once the transaction that marks the record
commits, so a rolled-back deletion loses nothing; a crash in between leaves
files behind a deleted record, which deleting again removes (an upload's
objects in an S3 store: the blob collector, services/object_files.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from cast.protocol.status import FINAL_STATUSES
from cast.server.errors import Conflict, Forbidden, InUse, UserNotFound
from cast.server.models import OutputFile, Run, RunLabel, RunMount, Upload, UploadFile, User, utcnow
from cast.server.services import files, object_files, runs, storage
from cast.server.services.objectstore import ObjectStore, object_store
from cast.server.settings import Settings

_FINAL = [s.value for s in FINAL_STATUSES]
_REMOVE_AFTER_COMMIT = "cast_remove_after_commit"


@dataclass
class Deleted:
    """What one deletion did: `freed` bytes, or nothing when it was deleted before (`already`)."""

    resource: str
    deleted_at: datetime
    freed: int = 0
    already: bool = False


@dataclass
class Pruned:
    runs: list[int] = field(default_factory=list)
    freed: int = 0


# --- removing files once the record is committed -------------------------------------

def _remove_after_commit(session: Session, path: Path | Callable[[], None]) -> None:
    pending = session.info.get(_REMOVE_AFTER_COMMIT)
    if pending is None:
        pending = session.info[_REMOVE_AFTER_COMMIT] = []
        event.listen(session, "after_commit", _remove_pending)
        event.listen(session, "after_rollback", lambda s: s.info.pop(_REMOVE_AFTER_COMMIT, None))
    pending.append(path)


def _remove_objects_after_commit(session: Session, settings: Settings, prefix: Callable[[ObjectStore], str]) -> None:
    """With an object store, its objects under `prefix(store)` go once the deletion commits."""
    if (store := object_store(settings)) is not None:
        _remove_after_commit(session, lambda: store.delete_prefix(prefix(store)))


def _remove_pending(session: Session) -> None:
    for item in session.info.pop(_REMOVE_AFTER_COMMIT, None) or ():
        if callable(item):
            item()
        else:
            storage.remove(item)


# --- who mounts what --------------------------------------------------------------

def _live_mounters(session: Session, condition) -> list[Run]:
    """The queued or active runs with a mount matching `condition`."""
    query = (select(Run).where(Run.id.in_(select(RunMount.run_id).where(condition)), Run.status.not_in(_FINAL))
             .order_by(Run.id))
    return list(session.scalars(query))


def _refuse_while_mounted(resource: str, mounters: list[Run], *, viewer: User, force: bool) -> None:
    if not mounters or (force and viewer.is_admin):
        return
    named = ", ".join(f"run {r.id} ({r.status})" for r in mounters)
    them = "it" if len(mounters) == 1 else "them"
    raise InUse(f"{resource} is mounted by {named}; wait for {them} to finish or stop {them}"
                + (", or delete it anyway with --force" if viewer.is_admin else ""))


# --- rm -------------------------------------------------------------------------

def _check_force(viewer: User, force: bool) -> None:
    if force and not viewer.is_admin:
        raise Forbidden("only admins may delete with --force")


def delete_run_outputs(session: Session, *, settings: Settings, run_id: int, viewer: User, force: bool = False) -> Deleted:
    """Free run `run_id`'s outputs (its owner or an admin); the run's record stays."""
    _check_force(viewer, force)
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    resource = f"runs/{run_id}"
    if run.deleted_at is not None:
        _remove_after_commit(session, storage.run_outputs_dir(settings, run_id))  # left by a crash, if any
        _remove_objects_after_commit(session, settings, lambda store: store.run_prefix(run_id))
        return Deleted(resource, run.deleted_at, already=True)
    if run.status not in _FINAL:
        raise Conflict(f"run {run_id} is {run.status}; stop it first (cast stop {run_id}), then delete its outputs")
    _refuse_while_mounted(resource, _live_mounters(session, RunMount.source_run_id == run_id), viewer=viewer,
                          force=force)
    return _free_run(session, settings=settings, run=run)


def _free_run(session: Session, *, settings: Settings, run: Run) -> Deleted:
    freed = run.outputs_size or 0
    run.deleted_at = utcnow()
    session.execute(delete(OutputFile).where(OutputFile.run_id == run.id))
    session.flush()
    _remove_after_commit(session, storage.run_outputs_dir(settings, run.id))
    _remove_objects_after_commit(session, settings, lambda store: store.run_prefix(run.id))
    return Deleted(f"runs/{run.id}", run.deleted_at, freed=freed)


def delete_upload(session: Session, *, settings: Settings, name: str, viewer: User, force: bool = False) -> Deleted:
    """Free upload `name`'s files (its owner or an admin); its record stays for the runs that mounted it."""
    _check_force(viewer, force)
    upload = files.visible_upload(session, name=name, viewer=viewer)
    resource = f"uploads/{name}"
    path = storage.upload_path(settings, name)
    if upload.deleted_at is not None:
        _remove_after_commit(session, path)
        return Deleted(resource, upload.deleted_at, already=True)
    _refuse_while_mounted(resource, _live_mounters(session, files.upload_mounts(name)), viewer=viewer, force=force)
    upload.deleted_at = utcnow()
    shas = list(session.scalars(select(UploadFile.sha256).where(UploadFile.upload_name == name)))
    session.execute(delete(UploadFile).where(UploadFile.upload_name == name))
    session.flush()
    _remove_after_commit(session, path)
    if (store := object_store(settings)) is not None:
        # Content addressed: an object another of the owner's uploads names
        # stays, read again under the owner's blob guard once this commits (a
        # commit of the same content may come between).
        bind = session.get_bind()
        _remove_after_commit(session, lambda: object_files.remove_unnamed_blobs(
            bind, store=store, owner_id=upload.owner_id, shas=shas))
    return Deleted(resource, upload.deleted_at, freed=upload.size)


# --- prune and retention ------------------------------------------------------------

def prunable_runs(session: Session, *, older_than: float, keep_labeled: bool, owner_id: int | None) -> list[Run]:
    """Finished runs that hold outputs, ended more than `older_than` seconds ago,
    that no queued or active run mounts (and, with `keep_labeled`, unlabeled)."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    live_sources = (select(RunMount.source_run_id).join(Run, Run.id == RunMount.run_id)
                    .where(Run.status.not_in(_FINAL), RunMount.source_run_id.is_not(None)))
    query = select(Run).where(
        Run.status.in_(_FINAL), Run.deleted_at.is_(None), Run.finished_at < cutoff, Run.outputs_size > 0,
        Run.id.not_in(live_sources),
    ).order_by(Run.id)
    if keep_labeled:
        query = query.where(Run.id.not_in(select(RunLabel.run_id)))
    if owner_id is not None:
        query = query.where(Run.owner_id == owner_id)
    return list(session.scalars(query))


def prune(session: Session, *, settings: Settings, viewer: User, older_than: float, keep_labeled: bool,
          user: str | None, dry_run: bool) -> Pruned:
    """Free the outputs of `viewer`'s prunable runs (an admin's: everyone's, or `user`'s)."""
    owner_id = _owner_scope(session, viewer=viewer, user=user)
    return prune_runs(session, settings=settings, older_than=older_than, keep_labeled=keep_labeled,
                      owner_id=owner_id, dry_run=dry_run)


def prune_runs(session: Session, *, settings: Settings, older_than: float, keep_labeled: bool,
               owner_id: int | None, dry_run: bool) -> Pruned:
    result = Pruned()
    for run in prunable_runs(session, older_than=older_than, keep_labeled=keep_labeled, owner_id=owner_id):
        result.runs.append(run.id)
        result.freed += run.outputs_size or 0
        if not dry_run:
            _free_run(session, settings=settings, run=run)
    return result


def retention_pass(session: Session, *, settings: Settings) -> Pruned:
    """The server's automatic retention (CAST_RETENTION_DAYS), over every user's runs."""
    return prune_runs(session, settings=settings, older_than=settings.retention_days * 86400,
                      keep_labeled=settings.retention_keep_labeled, owner_id=None, dry_run=False)


def _owner_scope(session: Session, *, viewer: User, user: str | None) -> int | None:
    """Whose data a request covers: a user's own, or for admins everyone's or `user`'s."""
    if user is None:
        return None if viewer.is_admin else viewer.id
    if user != viewer.name and not viewer.is_admin:
        raise Forbidden("only admins may act on another user's runs and uploads")
    found = session.scalar(select(User).where(User.name == user))
    if found is None:
        raise UserNotFound(user)
    return found.id


# --- usage ------------------------------------------------------------------------

def usage(session: Session, *, viewer: User, user: str | None) -> list[dict]:
    """Per user: each run's outputs and each upload still stored, with their sizes and totals."""
    owner_id = _owner_scope(session, viewer=viewer, user=user)
    run_query = select(Run.id, Run.owner_id, Run.status, Run.outputs_size).where(
        Run.deleted_at.is_(None), Run.outputs_size > 0).order_by(Run.id)
    upload_query = select(Upload.name, Upload.owner_id, Upload.kind, Upload.size).where(
        Upload.deleted_at.is_(None)).order_by(Upload.name)
    user_query = select(User.id, User.name).order_by(User.name)
    if owner_id is not None:
        run_query = run_query.where(Run.owner_id == owner_id)
        upload_query = upload_query.where(Upload.owner_id == owner_id)
        user_query = user_query.where(User.id == owner_id)
    per_user = {uid: {"user": name, "runs": [], "uploads": [], "runs_size": 0, "uploads_size": 0, "total": 0}
                for uid, name in session.execute(user_query)}
    for run_id, uid, status, size in session.execute(run_query):
        per_user[uid]["runs"].append({"id": run_id, "status": status, "size": size})
        per_user[uid]["runs_size"] += size
    for name, uid, kind, size in session.execute(upload_query):
        per_user[uid]["uploads"].append({"name": name, "kind": kind, "size": size})
        per_user[uid]["uploads_size"] += size
    for entry in per_user.values():
        entry["total"] = entry["runs_size"] + entry["uploads_size"]
    return list(per_user.values())
