"""Worker routes: register, lease the next run (long poll), heartbeat and
report status on a leased run, and fetch a mount's bytes or a run's code."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from cast.server import errors, events
from cast.server.api.deps import DatabaseDep, RunId, SessionDep, SettingsDep, WorkerAuth
from cast.server.api.files import file_or_tar
from cast.server.db import Database
from cast.server.schemas import (
    CODE_KEY_PATTERN,
    HeartbeatIn,
    HeartbeatOut,
    Lease,
    LeaseRequest,
    RunOut,
    StatusIn,
    WorkerRegister,
    WorkerRegistered,
)
from cast.server.services import code, runs, workers
from cast.server.settings import Settings

router = APIRouter(tags=["workers"])


@router.post("/workers", response_model=WorkerRegistered)
def register_worker(body: WorkerRegister, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    worker = workers.register(session, body=body)
    return {"id": worker.id, "lease_seconds": settings.lease_seconds}


def _claim(database: Database, settings: Settings, storage_id: str, *, worker_id: str, free_gpus: int) -> dict | None:
    with database.session(write=True) as session:
        worker = workers.get(session, worker_id=worker_id)
        workers.seen(session, worker=worker)
        run = runs.claim_next(session, worker=worker, free_gpus=free_gpus, settings=settings)
        session.commit()
        if run is None:
            return None
        return runs.lease_view(session, run=run, settings=settings, storage_id=storage_id)


@router.post(
    "/workers/{worker_id}/lease",
    response_model=Lease,
    responses={204: {"description": "nothing to run within `wait` seconds"}},
)
async def lease_run(
    worker_id: str, body: LeaseRequest, _: WorkerAuth, database: DatabaseDep, settings: SettingsDep,
    request: Request,
):
    storage_id = request.app.state.storage_id
    deadline = time.monotonic() + body.wait
    with database.notifier.subscribe(events.QUEUE) as queue:
        while True:
            # Subscribed before trying: a run queued after this attempt wakes the wait below.
            lease = await run_in_threadpool(
                _claim, database, settings, storage_id, worker_id=worker_id, free_gpus=body.free_gpus
            )
            if lease is not None:
                return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status_code=204)
            await queue.wait(remaining)
            if database.notifier.closed:  # the worker retries against the next server
                raise errors.ShuttingDown()
            # A worker that gave up waiting must not be handed a run it will never hear of.
            if await request.is_disconnected():
                return Response(status_code=204)


@router.post("/runs/{run_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(run_id: RunId, body: HeartbeatIn, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    run = runs.heartbeat(session, run_id=run_id, lease_token=body.lease_token, settings=settings)
    return {"status": run.status, "lease_expires_at": run.lease_expires_at}


@router.post("/runs/{run_id}/status", response_model=RunOut)
def report_status(run_id: RunId, body: StatusIn, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    run = runs.report_status(
        session, run_id=run_id, lease_token=body.lease_token, status=body.status, note=body.note,
        exit_code=body.exit_code, reason=body.reason, settings=settings,
    )
    return runs.describe(session, [run], with_transitions=True)[0]


@router.get("/workers/mounts/{resource:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}}})
def fetch_mount(resource: str, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> Response:
    path, kind = runs.resolve_mount_source(session, resource=resource, settings=settings)
    return file_or_tar(path, name=resource)


@router.get("/workers/code/{digest}", response_class=FileResponse,
            responses={200: {"content": {"application/x-tar": {}}}})
def fetch_code(digest: Annotated[str, Path(pattern=CODE_KEY_PATTERN, description="a run's code_digest")],
               _: WorkerAuth, database: DatabaseDep, settings: SettingsDep) -> FileResponse:
    return FileResponse(code.path_by_digest(database, settings=settings, digest=digest), media_type="application/x-tar")
