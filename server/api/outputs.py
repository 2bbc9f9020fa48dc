"""Output routes: the manifest and the bytes of a run's outputs, and freeing
them (users); the push of a run's outputs as a tar stream, or the adoption of
outputs a worker staged on the server's own filesystem (workers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from cast.server.api.bodies import receive_body
from cast.server.api.deps import CurrentUser, DatabaseDep, RunId, SessionDep, SessionRoute, SettingsDep, WorkerAuth
from cast.server.api.files import file_or_tar, object_answer
from cast.server.schemas.files import Deleted, FileList, OutputsPushed, StagedOutputsIn
from cast.server.services import deletion, files

router = APIRouter(prefix="/runs", tags=["outputs"], route_class=SessionRoute)
_BYTES = {200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}}}


@router.get("/{run_id}/outputs", response_model=FileList)
def list_outputs(run_id: RunId, user: CurrentUser, session: SessionDep) -> dict:
    return {"files": files.output_manifest(session, run_id=run_id, viewer=user),
            "folders": files.output_folders(session, run_id=run_id)}


@router.get("/{run_id}/outputs/{path:path}", responses=_BYTES)
def download_output(run_id: RunId, path: str, user: CurrentUser, session: SessionDep, settings: SettingsDep,
                    link: Annotated[bool, Query(description="with an object store: a file's presigned URL as JSON")] = False):
    files.output_manifest(session, run_id=run_id, viewer=user)  # the access check
    if (answer := object_answer(session, settings, resource=f"runs/{run_id}/{path}".rstrip("/"), name=path,
                                link=link)) is not None:
        return answer
    found = files.output_path(session, settings=settings, run_id=run_id, viewer=user, path=path)
    return file_or_tar(found, name=path)


@router.put("/{run_id}/outputs", response_model=OutputsPushed,
            openapi_extra={"requestBody": {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
async def push_outputs(
    run_id: RunId, request: Request, _: WorkerAuth, database: DatabaseDep, settings: SettingsDep,
    x_lease_token: Annotated[str, Header(min_length=1, max_length=64)],
) -> dict:
    async with receive_body(request) as body:
        count, size = await run_in_threadpool(
            files.store_outputs, database, settings=settings, run_id=run_id, lease_token=x_lease_token,
            source=body,
        )
    return {"files": count, "size": size}


@router.post("/{run_id}/outputs/staged", response_model=OutputsPushed)
async def adopt_staged_outputs(run_id: RunId, body: StagedOutputsIn, _: WorkerAuth, database: DatabaseDep,
                               settings: SettingsDep) -> dict:
    count, size = await run_in_threadpool(
        files.adopt_outputs, database, settings=settings, run_id=run_id, staged=body.to_staged(),
    )
    return {"files": count, "size": size}


@router.delete("/{run_id}/outputs", response_model=Deleted)
def delete_outputs(run_id: RunId, user: CurrentUser, session: SessionDep, settings: SettingsDep,
                   force: Annotated[bool, Query()] = False) -> dict:
    result = deletion.delete_run_outputs(session, settings=settings, run_id=run_id, viewer=user, force=force)
    return vars(result)
