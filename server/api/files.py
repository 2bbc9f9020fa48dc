"""Answering with stored bytes: a file as itself, a folder as a streamed tar."""

from __future__ import annotations

import posixpath
from pathlib import Path

from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from cast.server.errors import PathNotFound
from cast.server.services import object_files, storage
from cast.server.services.objectstore import object_store
from cast.server.settings import Settings


def object_answer(session: Session, settings: Settings, *, resource: str, name: str, link: bool = False):
    """With an object store, a file as a redirect to a presigned GET (the bytes
    do not pass through the server), or with `link` that URL as JSON (a
    browser cannot follow a redirect to another origin with fetch, so the
    viewer navigates to it); a folder as a tar the server streams from the
    store; None with the filesystem store. The caller checked access."""
    store = object_store(settings)
    if store is None:
        return None
    found = object_files.download(session, store=store, resource=resource, name=name)
    if isinstance(found, str):
        return JSONResponse({"url": found}) if link else RedirectResponse(found, status_code=307)
    base = posixpath.basename(name.rstrip("/")) or "folder"
    return StreamingResponse(store.tar(found), media_type="application/x-tar",
                             headers={"Content-Disposition": f'attachment; filename="{base}.tar"'})


def file_or_tar(path: Path, *, name: str):
    if path.is_file():
        return FileResponse(path, media_type="application/octet-stream",
                            filename=posixpath.basename(name.rstrip("/")) or "file")
    if path.is_dir():
        base = posixpath.basename(name.rstrip("/")) or "folder"
        return StreamingResponse(storage.tar_folder(path), media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{base}.tar"'})
    raise PathNotFound(name)
