"""Log routes: read from an offset, follow as a stream of NDJSON chunks,
download as text (users); append a batch (workers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from cast.server import events
from cast.server.api.deps import CurrentUser, DatabaseDep, RunId, SessionDep, SettingsDep, WorkerAuth
from cast.server.db import Database
from cast.server.models import User
from cast.server.schemas import LogAppend, LogAppended, LogChunk
from cast.server.services import logs, runs

router = APIRouter(prefix="/runs", tags=["logs"])

Offset = Annotated[int, Query(ge=-(2**62), le=2**62, description="first entry; -N = the last N entries")]
# A follower with nothing new still gets an empty chunk this often, so dead
# connections are noticed and proxies keep the stream open.
KEEPALIVE_SECONDS = 15.0
FOLLOW_BATCH = 1000


@router.get("/{run_id}/logs", response_model=LogChunk)
def read_log(
    run_id: RunId, user: CurrentUser, session: SessionDep, offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=logs.MAX_READ)] = 1000,
) -> dict:
    run = runs.visible_run(session, run_id=run_id, viewer=user)
    return logs.read(session, run=run, offset=offset, limit=limit)


def _read_chunk(database: Database, *, run_id: int, viewer: User, offset: int) -> dict:
    with database.session(write=False) as session:
        run = runs.visible_run(session, run_id=run_id, viewer=viewer)
        return logs.read(session, run=run, offset=offset, limit=FOLLOW_BATCH)


def _encode(chunk: dict) -> bytes:
    return LogChunk.model_validate(chunk).model_dump_json().encode() + b"\n"


@router.get(
    "/{run_id}/logs/follow",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one LogChunk per line"}},
)
async def follow_log(run_id: RunId, user: CurrentUser, database: DatabaseDep, offset: Offset = 0) -> StreamingResponse:
    # Read once before answering, so an unknown run is a plain 404.
    first = await run_in_threadpool(_read_chunk, database, run_id=run_id, viewer=user, offset=offset)

    async def chunks() -> AsyncIterator[bytes]:
        with database.notifier.subscribe(events.run_key(run_id)) as changes:
            chunk = first
            while True:
                yield _encode(chunk)
                if chunk["finished"]:
                    return
                while True:
                    # Subscribed before this read: a change after it wakes the wait below.
                    chunk = await run_in_threadpool(
                        _read_chunk, database, run_id=run_id, viewer=user, offset=chunk["next_offset"]
                    )
                    if chunk["entries"] or chunk["finished"]:
                        break
                    if not await changes.wait(KEEPALIVE_SECONDS):
                        break
                    if database.notifier.closed:  # the client resumes from its offset elsewhere
                        return

    return StreamingResponse(chunks(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{run_id}/logs/download", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}}})
def download_log(run_id: RunId, user: CurrentUser, session: SessionDep, database: DatabaseDep) -> StreamingResponse:
    runs.visible_run(session, run_id=run_id, viewer=user)

    def lines() -> Iterator[bytes]:
        offset = 0
        while True:
            chunk = _read_chunk(database, run_id=run_id, viewer=user, offset=offset)
            if not chunk["entries"]:
                return
            yield "".join(entry["text"] + "\n" for entry in chunk["entries"]).encode("utf-8", "surrogateescape")
            offset = chunk["next_offset"]

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}.log"'})


@router.post("/{run_id}/logs", response_model=LogAppended)
def append_log(run_id: RunId, body: LogAppend, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    next_offset, truncated = logs.append_worker_batch(
        session, run_id=run_id, lease_token=body.lease_token, seq=body.seq, entries=body.entries, settings=settings
    )
    return {"next_offset": next_offset, "truncated": truncated}
