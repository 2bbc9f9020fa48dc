"""GET /api/v1/status: where you are — the server, its workers and their runs, the queue."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.engine import make_url

from cast.server.api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from cast.server.api.health import VERSION
from cast.server.schemas.status import ServerStatus
from cast.server.services import capacity

router = APIRouter(tags=["status"], route_class=SessionRoute)


@router.get("/status", response_model=ServerStatus)
def status(user: CurrentUser, session: SessionDep, settings: SettingsDep, request: Request) -> dict:
    admin = user.is_admin
    server = {
        "url": str(request.base_url).rstrip("/"), "version": VERSION,
        "database": make_url(settings.sqlalchemy_url).render_as_string(hide_password=True) if admin else None,
        "storage": (settings.storage_url or str(settings.resolved_data_dir)) if admin else None,
        "lease_seconds": settings.lease_seconds, "presence_seconds": capacity.presence_seconds(settings),
    }
    return {"server": server, **capacity.overview(session, settings=settings, viewer=user)}
