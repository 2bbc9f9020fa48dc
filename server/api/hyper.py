"""Hyperparameter search routes for users: create, list, get, stop, kill."""

from __future__ import annotations

from fastapi import APIRouter

from cast.server.api.deps import CurrentUser, SearchId, SessionDep, SessionRoute, SettingsDep
from cast.server.schemas.hyper import SearchCreate, SearchList, SearchOut
from cast.server.services import hyper

router = APIRouter(prefix="/searches", tags=["searches"], route_class=SessionRoute)


@router.post("", status_code=201, response_model=SearchOut)
def create_search(body: SearchCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> dict:
    search = hyper.create_search(session, owner=user, body=body, settings=settings)
    return hyper.describe(session, [search], with_trials=True)[0]


@router.get("", response_model=SearchList)
def list_searches(user: CurrentUser, session: SessionDep) -> dict:
    found = hyper.list_searches(session, viewer=user)
    return {"searches": hyper.describe(session, found, with_trials=False)}


@router.get("/{search_id}", response_model=SearchOut)
def get_search(search_id: SearchId, user: CurrentUser, session: SessionDep) -> dict:
    search = hyper.visible_search(session, search_id=search_id, viewer=user)
    return hyper.describe(session, [search], with_trials=True)[0]


@router.post("/{search_id}/stop", response_model=SearchOut)
def stop_search(search_id: SearchId, user: CurrentUser, session: SessionDep) -> dict:
    search = hyper.stop_search(session, search_id=search_id, viewer=user)
    return hyper.describe(session, [search], with_trials=True)[0]


@router.post("/{search_id}/kill", response_model=SearchOut)
def kill_search(search_id: SearchId, user: CurrentUser, session: SessionDep) -> dict:
    search = hyper.kill_search(session, search_id=search_id, viewer=user)
    return hyper.describe(session, [search], with_trials=True)[0]
