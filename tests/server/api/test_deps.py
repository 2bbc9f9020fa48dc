"""cast.server.api.deps: a request's session commits once when its route
returns, and a route that raises leaves nothing behind (nor the write lock)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import select

from cast.server import errors
from cast.server.api import deps
from cast.server.models import Worker
from cast.server.schemas import WorkerRegister
from cast.server.services import workers


def test_a_route_commits_when_it_returns_and_rolls_back_when_it_raises(app):
    router = APIRouter()

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
