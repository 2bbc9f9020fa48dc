"""Stored file sets: run outputs (pushed by workers) and uploads (pushed by users).

Owns receiving them (streamed into a temporary folder, or for outputs staged
there by a worker that shares this filesystem and then checked, recorded with
a manifest, renamed into place and committed together so a partial body is
never visible) and finding a path inside them. Receiving takes the Database rather
than a session: a transfer may take minutes and must not hold a transaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, not_, or_, select
from sqlalchemy.orm import Session

from cast.protocol.objects import empty_folders
from cast.protocol.outputs import StagedOutputs, is_staging_name
from cast.protocol.status import RunStatus
from cast.protocol.validate import normalize_relative_path, validate_upload_name
from cast.server.db import Database
from cast.server.errors import BadRequest, Conflict, DomainError, Gone, InUse, NameTaken, PathNotFound, UploadNotFound
from cast.server.models import OutputFile, RunMount, Upload, UploadFile, User
from cast.server.services import batches, runs, storage, unique
from cast.server.services.objectstore import object_store
from cast.server.settings import Settings


# --- outputs ------------------------------------------------------------------------

def _check_push(session: Session, *, run_id: int, lease_token: str):
    run = batches.held_run(session, run_id=run_id, lease_token=lease_token)
    if run.status == RunStatus.KILLING.value:
        raise Conflict(f"run {run_id} is being killed; its outputs are dropped")
    return run


def store_outputs(database: Database, *, settings: Settings, run_id: int, lease_token: str, source: BinaryIO) -> tuple[int, int]:
    """Replace run `run_id`'s outputs with the tar stream `source`; (files, bytes)."""
    with database.transaction(write=False) as session:
        _check_push(session, run_id=run_id, lease_token=lease_token)
    staging = storage.new_temp_dir(settings)
    try:
        folder = staging / "outputs"
        folder.mkdir()
        stored = storage.extract_tar(source, folder, max_bytes=settings.max_output_bytes, what=f"the output of run {run_id}")
        return _place_outputs(database, settings=settings, run_id=run_id, lease_token=lease_token,
                              folder=folder, stored=stored, folders=empty_folders_in(folder))
    finally:
        storage.remove(staging)


def empty_folders_in(folder: Path) -> list[str]:
    """The folders inside `folder` (a received tar, extracted) with nothing in them, relative to it."""
    return sorted(os.path.relpath(path, folder) for path, dirs, names in os.walk(folder)
                  if not dirs and not names and path != str(folder))


def folder_rows(model: type[OutputFile] | type[UploadFile], folders, **owner) -> list:
    """Empty folders as rows of a manifest (an output's, `run_id=`, or an
    upload's, `upload_name=`): the path and a trailing '/' (which no file's
    path has), no size, no sha256."""
    return [model(**owner, path=folder + "/", size=0, sha256="") for folder in folders]


def _place_outputs(database: Database, *, settings: Settings, run_id: int, lease_token: str, folder: Path,
                   stored: list[storage.StoredFile], folders) -> tuple[int, int]:
    total = sum(f.size for f in stored)
    with database.transaction() as session:
        run = _check_push(session, run_id=run_id, lease_token=lease_token)
        session.execute(delete(OutputFile).where(OutputFile.run_id == run_id))
        session.add_all(OutputFile(run_id=run_id, path=f.path, size=f.size, sha256=f.sha256) for f in stored)
        session.add_all(folder_rows(OutputFile, folders, run_id=run_id))
        run.outputs_size = total
        session.flush()
        final = storage.run_outputs_dir(settings, run_id)
        storage.replace_into_place(folder, final, settings)
        storage.seal(final)
    return len(stored), total


def adopt_outputs(database: Database, *, settings: Settings, run_id: int, staged: StagedOutputs) -> tuple[int, int]:
    """Make the tree a worker staged in the server's temporary folder run
    `run_id`'s outputs, once every entry is checked; (files, bytes). The
    staging folder is removed whatever the answer but a transient failure
    (the worker retries the same request)."""
    if not is_staging_name(staged.staging, run_id):
        raise BadRequest(f"{staged.staging!r} is not a staging folder of run {run_id}")
    folder = settings.tmp_dir / staged.staging
    if not folder.is_dir() or folder.is_symlink():
        raise BadRequest(f"the staging folder {staged.staging!r} does not exist on the server's storage")
    what = f"the output of run {run_id}"
    try:
        with database.transaction(write=False) as session:
            _check_push(session, run_id=run_id, lease_token=staged.lease_token)
        for name in [*(f.path for f in staged.files), *staged.folders]:
            storage.resolve_inside(folder, name, what=f"{what} member")
        manifest = {f.path: (f.size, f.sha256) for f in staged.files}
        stored = storage.verify_staged(folder, manifest, set(staged.folders),
                                       max_bytes=settings.max_output_bytes, what=what)
        return _place_outputs(database, settings=settings, run_id=run_id, lease_token=staged.lease_token,
                              folder=folder, stored=stored,
                              folders=empty_folders((f.path for f in staged.files), staged.folders))
    except DomainError:
        storage.remove(folder)
        raise


def _stored_run(session: Session, *, run_id: int, viewer: User):
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    if run.deleted_at is not None:
        raise Gone(f"run {run_id}'s outputs were", run.deleted_at)
    return run


def output_manifest(session: Session, *, run_id: int, viewer: User) -> list[OutputFile]:
    """The files of run `run_id`'s outputs (its empty folders: `output_folders`)."""
    _stored_run(session, run_id=run_id, viewer=viewer)
    query = select(OutputFile).where(OutputFile.run_id == run_id, not_(OutputFile.path.endswith("/")))
    return list(session.scalars(query.order_by(OutputFile.path)))


def output_folders(session: Session, *, run_id: int) -> list[str]:
    """The empty folders of run `run_id`'s outputs; the caller checked access."""
    query = select(OutputFile.path).where(OutputFile.run_id == run_id, OutputFile.path.endswith("/"))
    return sorted(path[:-1] for path in session.scalars(query))


def output_path(session: Session, *, settings: Settings, run_id: int, viewer: User, path: str) -> Path:
    _stored_run(session, run_id=run_id, viewer=viewer)
    found = storage.resolve_inside(storage.run_outputs_dir(settings, run_id), path, what="output path")
    if not found.exists():
        raise PathNotFound(f"runs/{run_id}/{path}")
    return found


# --- uploads ------------------------------------------------------------------------

def upload_mounts(name: str):
    """The condition on RunMount rows that mount upload `name` or a path inside it."""
    return or_(RunMount.resource == f"uploads/{name}",
               RunMount.resource.startswith(f"uploads/{name}/", autoescape=True))


def runs_that_mounted(session: Session, name: str) -> list[int]:
    """Every run that mounted upload `name`, in any status: their lineage names it."""
    query = select(RunMount.run_id).where(upload_mounts(name)).distinct().order_by(RunMount.run_id)
    return list(session.scalars(query))


def _taken_name(session: Session, *, name: str, owner: User, replace: bool) -> Upload | None:
    """The upload a new `uploads/NAME` would take the place of, if it may; else the refusal."""
    existing = session.get(Upload, name)
    if existing is None:
        return None
    mounted = runs_that_mounted(session, name)
    named = ("runs " if len(mounted) > 1 else "run ") + ", ".join(str(run_id) for run_id in mounted)
    if existing.deleted_at is not None:
        if mounted:
            raise NameTaken(f"upload {name!r} was deleted, but {named} mounted it, so its name stays with it "
                            "(their lineage names it); upload under a new name")
        return existing
    if not replace:
        raise NameTaken(f"upload {name!r} already exists")
    if not (owner.is_admin or existing.owner_id == owner.id):
        raise NameTaken(f"upload {name!r} already exists and belongs to another user; upload under a new name")
    if mounted:
        raise InUse(f"upload {name!r} cannot be replaced: {named} mounted it; upload under a new name")
    return existing


def store_upload(
    database: Database, *, settings: Settings, owner: User, name: str, kind: str, source: BinaryIO,
    replace: bool = False,
) -> Upload:
    """Receive `uploads/NAME` (a file, or a folder as a tar stream); visible only once complete.

    It takes the place of an upload of that name only if no run ever mounted
    that one: a deleted upload's name when asked or not, a stored one with `replace`."""
    validate_upload_name(name)
    with database.transaction(write=False) as session:
        _taken_name(session, name=name, owner=owner, replace=replace)
    staging = storage.new_temp_dir(settings)
    try:
        content = staging / "content"
        what = f"upload {name!r}"
        if kind == "file":
            stored = [storage.write_file(source, content, max_bytes=settings.max_upload_bytes, what=what)]
            stored = [storage.StoredFile(name, stored[0].size, stored[0].sha256)]
        else:
            content.mkdir()
            stored = storage.extract_tar(source, content, max_bytes=settings.max_upload_bytes, what=what)
        if (store := object_store(settings)) is not None:
            from cast.server.services import object_files  # it builds on this module

            return object_files.store_upload(database, store=store, owner=owner, name=name, kind=kind,
                                             stored=stored, content=content, replace=replace)
        final = storage.upload_path(settings, name)
        previous = staging / "previous"
        placed = False
        try:
            with database.transaction() as session:
                # Checked again under the write lock: a run may have mounted it meanwhile.
                if (existing := _taken_name(session, name=name, owner=owner, replace=replace)) is not None:
                    session.execute(delete(UploadFile).where(UploadFile.upload_name == name))
                    session.delete(existing)
                    session.flush()
                upload = Upload(name=name, owner_id=owner.id, kind=kind, size=sum(f.size for f in stored),
                                files=len(stored))
                if not unique.insert_once(session, upload):  # another request took the name since
                    raise NameTaken(f"upload {name!r} already exists")
                session.add_all(UploadFile(upload_name=name, path=f.path, size=f.size, sha256=f.sha256) for f in stored)
                if kind == "dir":
                    session.add_all(folder_rows(UploadFile, empty_folders_in(content), upload_name=name))
                session.flush()
                if existing is not None and existing.deleted_at is None and os.path.lexists(final):
                    if final.is_dir():
                        os.chmod(final, 0o755)  # moving a folder to another parent rewrites its `..`
                    os.rename(final, previous)  # put back below if this does not commit
                else:
                    storage.remove(final)  # left by a crash between rename and commit: no row names it
                os.rename(content, final)
                placed = True
                storage.seal(final)
        except BaseException:
            if placed:  # not committed: no row names it
                storage.remove(final)
            if os.path.lexists(previous):
                os.rename(previous, final)
                storage.seal(final)
            raise
        return upload
    finally:
        storage.remove(staging)


def visible_upload(session: Session, *, name: str, viewer: User) -> Upload:
    upload = session.get(Upload, name)
    if upload is None or not (viewer.is_admin or upload.owner_id == viewer.id):
        raise UploadNotFound(name)
    return upload


def _stored_upload(session: Session, *, name: str, viewer: User) -> Upload:
    upload = visible_upload(session, name=name, viewer=viewer)
    if upload.deleted_at is not None:
        raise Gone(f"uploads/{name} was", upload.deleted_at)
    return upload


def list_uploads(session: Session, *, viewer: User) -> list[Upload]:
    query = select(Upload).order_by(Upload.created_at, Upload.name)
    if not viewer.is_admin:
        query = query.where(Upload.owner_id == viewer.id)
    return list(session.scalars(query))


def upload_manifest(session: Session, *, name: str, viewer: User, under: str = "") -> list[UploadFile]:
    upload = _stored_upload(session, name=name, viewer=viewer)
    query = select(UploadFile).where(UploadFile.upload_name == upload.name).order_by(UploadFile.path)
    files = list(session.scalars(query))
    if under:
        under = normalize_relative_path(under, what="upload path")
        files = [f for f in files if f.path == under or f.path.startswith(under + "/")]
        if not files:
            raise PathNotFound(f"uploads/{upload.name}/{under}")
    return files


def upload_file_path(session: Session, *, settings: Settings, name: str, viewer: User, path: str) -> Path:
    upload = _stored_upload(session, name=name, viewer=viewer)
    root = storage.upload_path(settings, upload.name)
    if not path:
        return root
    if upload.kind == "file":
        raise PathNotFound(f"uploads/{upload.name}/{path}")
    found = storage.resolve_inside(root, path, what="upload path")
    if not found.exists():
        raise PathNotFound(f"uploads/{upload.name}/{path}")
    return found
