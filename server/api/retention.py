"""Retention routes: pruning old runs' outputs and what each user's data holds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cast.server.api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from cast.server.schemas.retention import PruneIn, Pruned, Usage
from cast.server.services import deletion

router = APIRouter(tags=["retention"], route_class=SessionRoute)


@router.post("/prune", response_model=Pruned)
def prune(body: PruneIn, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> dict:
    result = deletion.prune(session, settings=settings, viewer=user, older_than=body.older_than,
                            keep_labeled=body.keep_labeled, user=body.user, dry_run=body.dry_run)
    return {"runs": result.runs, "freed": result.freed, "dry_run": body.dry_run}


@router.get("/usage", response_model=Usage)
def usage(user: CurrentUser, session: SessionDep,
          of: Annotated[str | None, Query(alias="user", max_length=64)] = None) -> dict:
    return {"users": deletion.usage(session, viewer=user, user=of)}
