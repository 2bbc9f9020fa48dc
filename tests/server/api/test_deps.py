"""cast.server.api.deps: a request's session commits once when its route
returns, a route that raises leaves nothing behind (nor the write lock), and
an async route cannot take a session."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import select

from cast.server import errors
from cast.server.api import deps
from cast.server.models import Worker
from cast.server.schemas.workers import WorkerRegister
from cast.server.services import workers


def test_a_route_commits_when_it_returns_and_rolls_back_when_it_raises(app):
    router = APIRouter(route_class=deps.SessionRoute)

    @router.post("/probe/{name}")
    def probe(name: str, session: deps.SessionDep, fail: bool = False) -> dict:
        workers.register(session, body=WorkerRegister(name=name, executor="local"))
        if fail:
            raise errors.Conflict("refused after a write")
        return {}

    app.include_router(router)
    client = TestClient(app)
    assert client.post("/probe/kept").status_code == 200
    assert client.post("/probe/dropped", params={"fail": True}).status_code == 409
    assert client.post("/probe/after").status_code == 200  # the failed request released the write lock
    with app.state.database.transaction(write=False) as session:
        assert set(session.scalars(select(Worker.name))) == {"kept", "after"}


def test_an_async_route_cannot_take_a_session():
    router = APIRouter(route_class=deps.SessionRoute)
    with pytest.raises(TypeError, match="async route cannot take SessionDep"):
        @router.get("/probe")
        async def probe(session: deps.SessionDep) -> dict:
            return {}
