"""Request dependencies as `Annotated` aliases: the database session, the
settings, and who is calling (`CurrentUser` for user tokens, `WorkerAuth`
for worker tokens).

`SessionDep` is a request's transaction: services only flush, and routes of
a `SessionRoute` router commit it once when the route function returns, in the
route's own thread, before the answer is shaped and sent (a client that reads
its own write sees it); a route that raises leaves it to the dependency, which
rolls back. Committing in the route's thread keeps the write lock no longer
than the route runs: a commit that waited for a thread of its own could wait
behind requests that wait for that lock. Routes that change things get a write
session (BEGIN IMMEDIATE on SQLite); GET and HEAD get a read session. A token is
checked in its own short read transaction, so a route's own session starts its
transaction only when the route first touches the database (a run creation
resolves its git ref before that); a token found valid is answered from
memory afterwards until a revocation anywhere (`users.Tokens`), so a
worker's calls and a user's submit cost no transaction for their token.
The caller is plain values (`users.Viewer`, `users.Bearer`), not ORM objects.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cast.server.db import Database
from cast.server.errors import Forbidden, NotAuthenticated
from cast.server.models import MAX_INTEGER
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
    # Closing rolls back whatever the route did not commit (it raised).
    with database.session(write=request.method not in ("GET", "HEAD")) as session:
        yield session


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _committing(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    def run(**arguments: Any) -> Any:
        answer = endpoint(**arguments)
        for value in arguments.values():
            if isinstance(value, Session) and value.in_transaction():
                value.commit()
        return answer

    run.commits = True
    return run


class SessionRoute(APIRoute):
    """A route that commits its `SessionDep` when it returns; a route taking one must be sync."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint) and not getattr(endpoint, "commits", False):
            endpoint = _committing(endpoint)
        super().__init__(path, endpoint, **kwargs)
        if inspect.iscoroutinefunction(endpoint) and uses_session(self):
            raise TypeError(f"{path}: an async route cannot take SessionDep (its commit would wait for a thread)")


def uses_session(route: APIRoute) -> bool:
    return any(dependency.call is get_session for dependency in route.dependant.dependencies)


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> users.Bearer:
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("missing bearer token (Authorization: Bearer TOKEN)")
    # A token found valid before is answered without leaving the event loop:
    # no thread hop, no transaction (users.Tokens).
    known: users.Tokens = request.app.state.tokens
    digest = users.hash_token(credentials.credentials)
    if (bearer := await known.get(digest)) is not None:
        return bearer
    generation = known.generation()  # before the lookup: a revocation heard during it is not missed
    bearer = await run_in_threadpool(_authenticate, request.app.state.database, credentials.credentials)
    known.remember(digest, bearer, generation)
    return bearer


def _authenticate(database: Database, secret: str) -> users.Bearer:
    with database.transaction(write=False) as session:
        return users.authenticate(session, secret=secret)


Caller = Annotated[users.Bearer, Depends(_caller)]


async def current_user(caller: Caller) -> users.Viewer:
    if caller.kind != "user" or caller.user is None:
        raise Forbidden("this route needs a user token, not a worker token")
    return caller.user


async def worker_auth(caller: Caller) -> users.Bearer:
    if caller.kind != "worker":
        raise Forbidden("this route needs a worker token, not a user token")
    return caller


CurrentUser = Annotated[users.Viewer, Depends(current_user)]
WorkerAuth = Annotated[users.Bearer, Depends(worker_auth)]

# SQLite integers are 64-bit: bounding ids keeps a huge number a 422, not a 500.
RunId = Annotated[int, Path(ge=1, le=MAX_INTEGER, description="run number")]
SearchId = Annotated[int, Path(ge=1, le=MAX_INTEGER, description="search number")]
