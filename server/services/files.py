"""Stored file sets: run outputs (pushed by workers) and uploads (pushed by users).

Owns receiving them (streamed into a temporary folder, recorded with a
manifest, renamed into place and committed together so a partial body is never
visible) and finding a path inside them. Receiving takes the Database rather
than a session: a transfer may take minutes and must not hold a transaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cast.protocol.status import RunStatus
from cast.protocol.validate import normalize_relative_path, validate_upload_name
from cast.server.db import Database
from cast.server.errors import Conflict, NameTaken, PathNotFound, UploadNotFound
from cast.server.models import OutputFile, Upload, UploadFile, User
from cast.server.services import leases, runs, storage
from cast.server.settings import Settings


# --- outputs ------------------------------------------------------------------------

def _check_push(session: Session, *, run_id: int, lease_token: str):
    run = leases.check_lease(session, run_id=run_id, lease_token=lease_token)
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
        total = sum(f.size for f in stored)
        with database.transaction() as session:
            run = _check_push(session, run_id=run_id, lease_token=lease_token)
            session.execute(delete(OutputFile).where(OutputFile.run_id == run_id))
            session.add_all(OutputFile(run_id=run_id, path=f.path, size=f.size, sha256=f.sha256) for f in stored)
            run.outputs_size = total
            session.flush()
            final = storage.run_outputs_dir(settings, run_id)
            storage.replace_into_place(folder, final, settings)
            storage.seal(final)
        return len(stored), total
    finally:
        storage.remove(staging)


def output_manifest(session: Session, *, run_id: int, viewer: User) -> list[OutputFile]:
    runs.visible_run(session, run_id=run_id, viewer=viewer)
    return list(session.scalars(select(OutputFile).where(OutputFile.run_id == run_id).order_by(OutputFile.path)))


def output_path(session: Session, *, settings: Settings, run_id: int, viewer: User, path: str) -> Path:
    runs.visible_run(session, run_id=run_id, viewer=viewer)
    found = storage.resolve_inside(storage.run_outputs_dir(settings, run_id), path, what="output path")
    if not found.exists():
        raise PathNotFound(f"runs/{run_id}/{path}")
    return found


# --- uploads ------------------------------------------------------------------------

def store_upload(
    database: Database, *, settings: Settings, owner: User, name: str, kind: str, source: BinaryIO
) -> Upload:
    """Receive `uploads/NAME` (a file, or a folder as a tar stream); visible only once complete."""
    validate_upload_name(name)
    with database.transaction(write=False) as session:
        if session.get(Upload, name) is not None:
            raise NameTaken(f"upload {name!r} already exists")
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
        final = storage.upload_path(settings, name)
        placed = False
        try:
            with database.transaction() as session:
                if session.get(Upload, name) is not None:
                    raise NameTaken(f"upload {name!r} already exists")
                upload = Upload(name=name, owner_id=owner.id, kind=kind, size=sum(f.size for f in stored),
                                files=len(stored))
                session.add(upload)
                session.flush()
                session.add_all(UploadFile(upload_name=name, path=f.path, size=f.size, sha256=f.sha256) for f in stored)
                session.flush()
                storage.remove(final)  # left by a crash between rename and commit: no row names it
                os.rename(content, final)
                placed = True
                storage.seal(final)
        except BaseException:
            if placed:  # not committed: no row names it
                storage.remove(final)
            raise
        return upload
    finally:
        storage.remove(staging)


def visible_upload(session: Session, *, name: str, viewer: User) -> Upload:
    upload = session.get(Upload, name)
    if upload is None or not (viewer.is_admin or upload.owner_id == viewer.id):
        raise UploadNotFound(name)
    return upload


def list_uploads(session: Session, *, viewer: User) -> list[Upload]:
    query = select(Upload).order_by(Upload.created_at, Upload.name)
    if not viewer.is_admin:
        query = query.where(Upload.owner_id == viewer.id)
    return list(session.scalars(query))


def upload_manifest(session: Session, *, name: str, viewer: User, under: str = "") -> list[UploadFile]:
    upload = visible_upload(session, name=name, viewer=viewer)
    query = select(UploadFile).where(UploadFile.upload_name == upload.name).order_by(UploadFile.path)
    files = list(session.scalars(query))
    if under:
        under = normalize_relative_path(under, what="upload path")
        files = [f for f in files if f.path == under or f.path.startswith(under + "/")]
        if not files:
            raise PathNotFound(f"uploads/{upload.name}/{under}")
    return files


def upload_file_path(session: Session, *, settings: Settings, name: str, viewer: User, path: str) -> Path:
    upload = visible_upload(session, name=name, viewer=viewer)
    root = storage.upload_path(settings, upload.name)
    if not path:
        return root
    if upload.kind == "file":
        raise PathNotFound(f"uploads/{upload.name}/{path}")
    found = storage.resolve_inside(root, path, what="upload path")
    if not found.exists():
        raise PathNotFound(f"uploads/{upload.name}/{path}")
    return found
