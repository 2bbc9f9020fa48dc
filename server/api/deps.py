"""Request dependencies as `Annotated` aliases: the database session, the
settings, and who is calling (`CurrentUser` for user tokens, `WorkerAuth`
for worker tokens).

`SessionDep` owns a request's transaction: services only flush, and the
session commits once when the route function returns (before the answer is
sent, so a client that reads its own write sees it) or rolls back when it
raises. Routes that change things get a write session (BEGIN IMMEDIATE on
SQLite); GET and HEAD get a read session. A token is checked in its own short
read transaction, so a route's own session starts its transaction only when
the route first touches the database (a run creation resolves its git ref
before that).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cast.server.db import Database
from cast.server.errors import Forbidden, NotAuthenticated
from cast.server.models import Token, User
from cast.server.services import users
from cast.server.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A user token or a worker token")


# Trivial dependencies are coroutines: a sync one costs a hop through the
# thread pool, and worker calls must take a few milliseconds at most.
async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    database: Database = request.app.state.database
    write = request.method not in ("GET", "HEAD")
    with database.session(write=write) as session:
        yield session
        if write and session.in_transaction():
            await run_in_threadpool(session.commit)


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
# "function" scope: the commit runs when the route returns, before the answer is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _caller(
    database: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> tuple[Token, User | None]:
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("missing bearer token (Authorization: Bearer TOKEN)")
    with database.transaction(write=False) as session:
        return users.authenticate(session, secret=credentials.credentials)


Caller = Annotated[tuple[Token, User | None], Depends(_caller)]


async def current_user(caller: Caller) -> User:
    token, user = caller
    if token.kind != "user" or user is None:
        raise Forbidden("this route needs a user token, not a worker token")
    return user


async def worker_auth(caller: Caller) -> Token:
    token, _ = caller
    if token.kind != "worker":
        raise Forbidden("this route needs a worker token, not a user token")
    return token


CurrentUser = Annotated[User, Depends(current_user)]
WorkerAuth = Annotated[Token, Depends(worker_auth)]

# SQLite integers are 64-bit: bounding ids keeps a huge number a 422, not a 500.
RunId = Annotated[int, Path(ge=1, le=2**62, description="run number")]
