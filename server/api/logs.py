"""Log routes: read a page from an offset, follow as a stream of NDJSON pages,
download as text (users); append a batch (workers).

Pages are plain lists of strings, serialised by orjson (`_page_json`), not
by the response model, which only documents them: a page may hold 200,000
lines, and a follower of a busy run is sent a page several times a second.
"""

from __future__ import annotations

import json
from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from cast.protocol.logs import MAX_READ_LINES
from cast.server.api.deps import CurrentUser, DatabaseDep, RunId, SessionDep, SessionRoute, SettingsDep, WorkerAuth
from cast.server.schemas import LogAppend, LogAppended, LogPage
from cast.server.services import log_reads, logs

def _page_json(page: dict) -> bytes:
    try:
        return orjson.dumps(page)
    except TypeError:  # a lone surrogate (a worker may send one escaped), which orjson refuses
        return json.dumps(page).encode()


router = APIRouter(prefix="/runs", tags=["logs"], route_class=SessionRoute)

Offset = Annotated[int, Query(ge=-(2**62), le=2**62, description="first line; -N = the last N lines")]


@router.get("/{run_id}/logs", response_model=LogPage)
def read_log(
    run_id: RunId, user: CurrentUser, session: SessionDep, settings: SettingsDep, offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_READ_LINES)] = 1000,
) -> Response:
    page = log_reads.read_page(session, settings=settings, run_id=run_id, viewer=user, offset=offset, limit=limit)
    return Response(_page_json(page), media_type="application/json")


@router.get(
    "/{run_id}/logs/follow",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one LogPage per line"}},
)
async def follow_log(run_id: RunId, user: CurrentUser, database: DatabaseDep, settings: SettingsDep,
                     offset: Offset = 0) -> StreamingResponse:
    pages = await log_reads.follow(database, settings=settings, run_id=run_id, viewer=user, offset=offset)
    lines = (_page_json(page) + b"\n" async for page in pages)
    return StreamingResponse(lines, media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{run_id}/logs/download", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}}})
def download_log(run_id: RunId, user: CurrentUser, database: DatabaseDep, settings: SettingsDep) -> StreamingResponse:
    return StreamingResponse(log_reads.download(database, settings=settings, run_id=run_id, viewer=user),
                             media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}.log"'})


@router.post("/{run_id}/logs", response_model=LogAppended)
def append_log(run_id: RunId, body: LogAppend, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    next_offset, truncated = logs.append_worker_batch(
        session, run_id=run_id, lease_token=body.lease_token, seq=body.seq, runs=body.runs, settings=settings
    )
    return {"next_offset": next_offset, "truncated": truncated}
