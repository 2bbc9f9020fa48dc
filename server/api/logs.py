"""Log routes: read a page from an offset, follow as a stream of NDJSON pages,
download as text (users); append a batch (workers).

Pages are answered as the chunks' stored JSON spliced together
(`logs.page_json`), not through the response model, which only documents
them: a page may hold 200,000 lines, and a follower of a busy run is sent a
page several times a second.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from cast.protocol.logs import MAX_READ_LINES, LogPage
from cast.server.api.deps import CurrentUser, DatabaseDep, RunId, SessionDep, SessionRoute, SettingsDep, WorkerAuth
from cast.server.schemas.logs import LogAppend, LogAppended
from cast.server.services import log_reads, logs

router = APIRouter(prefix="/runs", tags=["logs"], route_class=SessionRoute)

Offset = Annotated[int, Query(ge=-(2**62), le=2**62, description="first line; -N = the last N lines")]


@router.get("/{run_id}/logs", response_model=LogPage)
def read_log(
    run_id: RunId, user: CurrentUser, session: SessionDep, settings: SettingsDep, offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_READ_LINES)] = 1000,
) -> Response:
    page = log_reads.read_page(session, settings=settings, run_id=run_id, viewer=user, offset=offset, limit=limit,
                               encoded=True)
    return Response(logs.page_json(page), media_type="application/json")


@router.get(
    "/{run_id}/logs/follow",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one LogPage per line"}},
)
async def follow_log(run_id: RunId, user: CurrentUser, database: DatabaseDep, settings: SettingsDep,
                     offset: Offset = 0) -> StreamingResponse:
    pages = await log_reads.follow(database, settings=settings, run_id=run_id, viewer=user, offset=offset)
    lines = (logs.page_json(page) + b"\n" async for page in pages)
    return StreamingResponse(lines, media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{run_id}/logs/download", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}}})
def download_log(run_id: RunId, user: CurrentUser, database: DatabaseDep, settings: SettingsDep) -> StreamingResponse:
    return StreamingResponse(log_reads.download(database, settings=settings, run_id=run_id, viewer=user),
                             media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}.log"'})


@router.post("/{run_id}/logs", response_model=LogAppended)
def append_log(run_id: RunId, body: LogAppend, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> Response:
    next_offset, truncated = logs.append_worker_batch(
        session, run_id=run_id, lease_token=body.lease_token, seq=body.seq, runs=body.runs, settings=settings
    )
    # Answered as it is, not through the response model: a busy run appends many times a second.
    return Response(orjson.dumps({"next_offset": next_offset, "truncated": truncated}), media_type="application/json")
