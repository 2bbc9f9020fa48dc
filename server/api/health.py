"""GET /api/v1/health: the server is up, and its version (no token needed)."""

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from cast.server.schemas.status import Health

router = APIRouter(tags=["health"])

try:
    VERSION = version("cast-runner")
except PackageNotFoundError:
    VERSION = "0+unknown"


@router.get("/health", response_model=Health)
def health() -> dict:
    return {"status": "ok", "version": VERSION}
