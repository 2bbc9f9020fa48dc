"""Run routes for users: create, list, get, stop, kill, labels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from cast.protocol.status import RunStatus
from cast.server.api.deps import CurrentUser, RunId, SessionDep, SessionRoute, SettingsDep
from cast.server.models import MAX_INTEGER
from cast.server.schemas.runs import LabelIn, RunCreate, RunCreated, RunList, RunOut
from cast.server.services import runs

router = APIRouter(prefix="/runs", tags=["runs"], route_class=SessionRoute)


@router.post("", status_code=201, response_model=RunCreated,
             responses={200: {"model": RunCreated, "description": "An earlier complete run did the same (idempotent)"}})
def create_run(body: RunCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep,
               response: Response) -> dict:
    run, origin = runs.create_run(session, owner=user, body=body, settings=settings)
    reused = origin is runs.Origin.REUSED
    if reused:
        response.status_code = 200
    view = (runs.describe_made(run, owner=user, labels=body.labels) if origin is runs.Origin.MADE
            else runs.describe(session, [run], with_transitions=True)[0])
    return {**view, "reused": reused}


@router.get("", response_model=RunList)
def list_runs(
    user: CurrentUser,
    session: SessionDep,
    status: Annotated[list[RunStatus], Query()] = [],
    label: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_INTEGER)] = None,
) -> dict:
    found, next_before = runs.list_runs(session, viewer=user, statuses=status, label=label, limit=limit, before=before)
    total = runs.count_runs(session, viewer=user, statuses=status, label=label)
    return {"runs": runs.describe(session, found, with_transitions=False), "next_before": next_before, "total": total}


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunId, user: CurrentUser, session: SessionDep) -> dict:
    run = runs.visible_run(session, run_id=run_id, viewer=user)
    return runs.describe(session, [run], with_transitions=True)[0]


@router.post("/{run_id}/stop", status_code=202, response_model=RunOut)
def stop_run(run_id: RunId, user: CurrentUser, session: SessionDep) -> dict:
    run = runs.stop_run(session, run_id=run_id, viewer=user)
    return runs.describe(session, [run], with_transitions=True)[0]


@router.post("/{run_id}/kill", status_code=202, response_model=RunOut)
def kill_run(run_id: RunId, user: CurrentUser, session: SessionDep) -> dict:
    run = runs.kill_run(session, run_id=run_id, viewer=user)
    return runs.describe(session, [run], with_transitions=True)[0]


@router.post("/{run_id}/labels", response_model=RunOut)
def add_label(run_id: RunId, body: LabelIn, user: CurrentUser, session: SessionDep) -> dict:
    run = runs.add_label(session, run_id=run_id, viewer=user, label=body.label)
    return runs.describe(session, [run], with_transitions=True)[0]


@router.delete("/{run_id}/labels/{label}", response_model=RunOut)
def remove_label(run_id: RunId, label: str, user: CurrentUser, session: SessionDep) -> dict:
    run = runs.remove_label(session, run_id=run_id, viewer=user, label=label)
    return runs.describe(session, [run], with_transitions=True)[0]
