"""Metric routes: a summary per name, points from an offset, the follow stream
of NDJSON chunks (users); append a batch (workers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from cast.protocol.metrics import MAX_NAME_LENGTH
from cast.server.api.deps import CurrentUser, DatabaseDep, RunId, SessionDep, SessionRoute, WorkerAuth
from cast.server.schemas.metrics import MetricAppend, MetricAppended, MetricChunk, MetricSummaries
from cast.server.services import metrics

router = APIRouter(prefix="/runs", tags=["metrics"], route_class=SessionRoute)

Offset = Annotated[int, Query(ge=0, le=2**62, description="first point")]
Name = Annotated[str | None, Query(min_length=1, max_length=MAX_NAME_LENGTH, description="only this metric")]


@router.get("/{run_id}/metrics", response_model=MetricSummaries)
def metric_summary(run_id: RunId, user: CurrentUser, session: SessionDep) -> dict:
    return metrics.summary(session, run_id=run_id, viewer=user)


@router.get("/{run_id}/metrics/points", response_model=MetricChunk)
def metric_points(
    run_id: RunId, user: CurrentUser, session: SessionDep, offset: Offset = 0, name: Name = None,
    limit: Annotated[int, Query(ge=1, le=metrics.MAX_READ)] = 10_000,
) -> dict:
    return metrics.read_points(session, run_id=run_id, viewer=user, offset=offset, limit=limit, name=name)


@router.get(
    "/{run_id}/metrics/follow",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one MetricChunk per line"}},
)
async def follow_metrics(run_id: RunId, user: CurrentUser, database: DatabaseDep, offset: Offset = 0,
                         name: Name = None) -> StreamingResponse:
    chunks = await metrics.follow(database, run_id=run_id, viewer=user, offset=offset, name=name)
    lines = (MetricChunk.model_validate(chunk).model_dump_json().encode() + b"\n" async for chunk in chunks)
    return StreamingResponse(lines, media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/{run_id}/metrics", response_model=MetricAppended)
def append_metrics(run_id: RunId, body: MetricAppend, _: WorkerAuth, session: SessionDep) -> dict:
    next_offset = metrics.append_worker_batch(
        session, run_id=run_id, lease_token=body.lease_token, seq=body.seq, points=body.points)
    return {"next_offset": next_offset}
