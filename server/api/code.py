"""Code bundle routes for users: store once per key, check, fetch back (each user's own)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from cast.server.api.bodies import receive_body
from cast.server.api.deps import CurrentUser, DatabaseDep, SessionDep, SessionRoute, SettingsDep
from cast.server.schemas.files import CODE_KEY_PATTERN
from cast.server.services import code

router = APIRouter(prefix="/code", tags=["code"], route_class=SessionRoute)
CodeKey = Annotated[str, Path(pattern=CODE_KEY_PATTERN, description="the client's sha256 of the bundle")]


@router.put("/{key}", status_code=201, responses={200: {"description": "already stored"}},
            openapi_extra={"requestBody": {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_code(key: CodeKey, request: Request, user: CurrentUser, database: DatabaseDep, settings: SettingsDep) -> Response:
    async with receive_body(request) as body:
        created = await run_in_threadpool(
            code.store, database, settings=settings, owner=user, key=key, source=body
        )
    return Response(status_code=201 if created else 200)


@router.head("/{key}")
def has_code(key: CodeKey, user: CurrentUser, session: SessionDep) -> Response:
    return Response(status_code=200 if code.exists(session, owner=user, key=key) else 404)


@router.get("/{key}", response_class=FileResponse, responses={200: {"content": {"application/x-tar": {}}}})
def get_code(key: CodeKey, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Response:
    if (url := code.object_url(settings, code.find(session, owner=user, key=key).digest)) is not None:
        return RedirectResponse(url, status_code=307)
    return FileResponse(code.owned_path(session, settings=settings, owner=user, key=key), media_type="application/x-tar")
