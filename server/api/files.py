"""Answering with stored bytes: a file as itself, a folder as a streamed tar."""

from __future__ import annotations

import posixpath
from pathlib import Path

from fastapi.responses import FileResponse, StreamingResponse

from cast.server.errors import PathNotFound
from cast.server.services import storage


def file_or_tar(path: Path, *, name: str):
    if path.is_file():
        return FileResponse(path, media_type="application/octet-stream",
                            filename=posixpath.basename(name.rstrip("/")) or "file")
    if path.is_dir():
        base = posixpath.basename(name.rstrip("/")) or "folder"
        return StreamingResponse(storage.tar_folder(path), media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{base}.tar"'})
    raise PathNotFound(name)
