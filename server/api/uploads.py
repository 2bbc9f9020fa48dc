"""Upload routes: `uploads/NAME` from a file or a folder (a tar stream),
replaced, listed, read back as bytes or a tar, and deleted."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from cast.server.api.bodies import receive_body
from cast.server.api.deps import CurrentUser, DatabaseDep, SessionDep, SessionRoute, SettingsDep
from cast.server.api.files import file_or_tar, object_answer
from cast.server.schemas.files import Deleted, FileList, UploadList, UploadOut
from cast.server.services import deletion, files

router = APIRouter(prefix="/uploads", tags=["uploads"], route_class=SessionRoute)
UploadName = Annotated[str, Path(min_length=1, max_length=200)]
_BYTES = {200: {"content": {"application/octet-stream": {}, "application/x-tar": {}, "application/json": {}}}}


def upload_view(upload) -> dict:
    return {"name": upload.name, "kind": upload.kind, "size": upload.size, "files": upload.files,
            "created_at": upload.created_at, "deleted_at": upload.deleted_at}


@router.put("/{name}", status_code=201, response_model=UploadOut,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_upload(
    name: UploadName, request: Request, user: CurrentUser, database: DatabaseDep, settings: SettingsDep,
    kind: Literal["file", "dir"] = "file", replace: bool = False,
) -> dict:
    async with receive_body(request) as body:
        upload = await run_in_threadpool(
            files.store_upload, database, settings=settings, owner=user, name=name, kind=kind,
            source=body, replace=replace,
        )
    return upload_view(upload)


@router.get("", response_model=UploadList)
def list_uploads(user: CurrentUser, session: SessionDep) -> dict:
    return {"uploads": [upload_view(u) for u in files.list_uploads(session, viewer=user)]}


def _get(name: str, path: str, listing: bool, user, session, settings):
    if listing:
        rows = files.upload_manifest(session, name=name, viewer=user, under=path)
        # An empty folder kept in the object store is a row of its own: the path and a trailing '/'.
        return {"files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                          for f in rows if not f.path.endswith("/")],
                "folders": [f.path[:-1] for f in rows if f.path.endswith("/")]}
    files.upload_manifest(session, name=name, viewer=user)  # the access check
    if (answer := object_answer(session, settings, resource=f"uploads/{name}/{path}".rstrip("/"),
                                name=path or name)) is not None:
        return answer
    found = files.upload_file_path(session, settings=settings, name=name, viewer=user, path=path)
    return file_or_tar(found, name=path or name)


@router.get("/{name}", responses={**_BYTES, 200: {**_BYTES[200], "model": FileList}})
def get_upload(name: UploadName, user: CurrentUser, session: SessionDep, settings: SettingsDep,
               listing: Annotated[bool, Query(alias="list")] = False):
    return _get(name, "", listing, user, session, settings)


@router.get("/{name}/{path:path}", responses={**_BYTES, 200: {**_BYTES[200], "model": FileList}})
def get_upload_path(name: UploadName, path: str, user: CurrentUser, session: SessionDep, settings: SettingsDep,
                    listing: Annotated[bool, Query(alias="list")] = False):
    return _get(name, path, listing, user, session, settings)


@router.delete("/{name}", response_model=Deleted)
def delete_upload(name: UploadName, user: CurrentUser, session: SessionDep, settings: SettingsDep,
                  force: Annotated[bool, Query()] = False) -> dict:
    return vars(deletion.delete_upload(session, settings=settings, name=name, viewer=user, force=force))
