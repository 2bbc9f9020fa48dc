"""Worker routes: register, lease the next run (long poll), heartbeat (a
worker's one heartbeat for all its runs, or one run's own), report status on a
leased run (one report, or consecutive ones in one request), and fetch a
mount's bytes or a run's code."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from cast.protocol.worker_messages import HeartbeatReply, Lease, StatusBatchReply, WorkerHeartbeatReply
from cast.server.api.deps import DatabaseDep, RunId, SessionDep, SessionRoute, SettingsDep, WorkerAuth
from cast.server.api.files import file_or_tar
from cast.server.schemas.files import CODE_KEY_PATTERN
from cast.server.schemas.runs import RunOut
from cast.server.schemas.workers import (HeartbeatIn, LeaseRequest, StatusBatchIn, StatusIn, WorkerHeartbeatIn,
                                         WorkerRegister, WorkerRegistered)
from cast.server.services import code, leases, runs, workers

router = APIRouter(tags=["workers"], route_class=SessionRoute)
WorkerId = Annotated[str, Path(max_length=64, description="the id registering answered")]


@router.post("/workers", response_model=WorkerRegistered)
def register_worker(body: WorkerRegister, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    worker = workers.register(session, body=body)
    return {"id": worker.id, "lease_seconds": settings.lease_seconds}


@router.post(
    "/workers/{worker_id}/lease",
    response_model=Lease,
    responses={204: {"description": "nothing to run within `wait` seconds"}},
)
async def lease_run(
    worker_id: str, body: LeaseRequest, _: WorkerAuth, database: DatabaseDep, settings: SettingsDep,
    request: Request,
):
    lease = await leases.wait_for_lease(
        database, worker_id=worker_id, free_gpus=body.free_gpus, wait=body.wait, settings=settings,
        storage_id=request.app.state.storage_id, gone=request.is_disconnected, claim=body.claim,
    )
    return Response(status_code=204) if lease is None else lease


@router.post("/workers/{worker_id}/heartbeat", response_model=WorkerHeartbeatReply)
def worker_heartbeat(worker_id: WorkerId, body: WorkerHeartbeatIn, _: WorkerAuth, session: SessionDep,
                     settings: SettingsDep) -> WorkerHeartbeatReply:
    return leases.heartbeat(session, worker_id=worker_id, leases=body.to_leases(), settings=settings)


@router.post("/runs/{run_id}/heartbeat", response_model=HeartbeatReply)
def heartbeat(run_id: RunId, body: HeartbeatIn, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> HeartbeatReply:
    return leases.heartbeat_run(session, run_id=run_id, lease_token=body.lease_token, settings=settings)


@router.post("/runs/{run_id}/status", response_model=RunOut)
def report_status(run_id: RunId, body: StatusIn, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    run = leases.report_status(session, run_id=run_id, report=body.to_report(), settings=settings)
    return runs.describe(session, [run], with_transitions=True)[0]


@router.post("/runs/{run_id}/statuses", response_model=StatusBatchReply, response_model_exclude_none=True)
def report_statuses(run_id: RunId, body: StatusBatchIn, _: WorkerAuth, session: SessionDep,
                    settings: SettingsDep) -> StatusBatchReply:
    return leases.report_statuses(session, run_id=run_id, reports=body.to_reports(), logs=body.lines_before(),
                                  settings=settings)


@router.get("/workers/mounts/{resource:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}}})
def fetch_mount(resource: str, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> Response:
    path, _kind = leases.resolve_mount_source(session, resource=resource, settings=settings)
    return file_or_tar(path, name=resource)


@router.get("/workers/code/{digest}", response_class=FileResponse,
            responses={200: {"content": {"application/x-tar": {}}}})
def fetch_code(digest: Annotated[str, Path(pattern=CODE_KEY_PATTERN, description="a run's code_digest")],
               _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> Response:
    found = code.path_by_digest(session, settings=settings, digest=digest)
    if (url := code.object_url(settings, digest)) is not None:
        return RedirectResponse(url, status_code=307)
    return FileResponse(found, media_type="application/x-tar")
