"""The control plane's FastAPI application.

Owns wiring: settings, database (migrated at creation), bootstrap tokens,
routers under /api/v1, the ONE set of exception handlers that turns domain
errors into HTTP codes, the request body cap, the reaper task, the retention
task (when CAST_RETENTION_DAYS is set), the blob collector (with an S3 store;
its pass converts uploads of the earlier layout first, and runs at start-up),
the hyperparameter search driver, and the web
log viewer (`web/index.html` at `/`, `web/static/` at `/static`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import anyio.to_thread

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cast.protocol.messages import PERMANENT_HEADER
from cast.protocol.validate import SpecError, SpecTooLarge
from cast.server import errors
from cast.server.api import (code, health, hyper, logs, metrics, objects, outputs, protocol, retention, runs, status,
                             uploads, users, workers)
from cast.server.db import Database
from cast.server.services import deletion, hyper_driver, log_archive, object_files, reaper, storage, upload_layout
from cast.server.services.objectstore import object_store
from cast.server.services import users as user_service
from cast.server.settings import Settings

log = logging.getLogger("cast.server")
WEB_DIR = Path(__file__).resolve().parent / "web"
UPLOT_DIR = WEB_DIR / "node_modules" / "uplot" / "dist"
THREADS = 100

# Domain error → HTTP status; subclasses inherit their base's code.
ERROR_STATUS: dict[type[Exception], int] = {
    errors.BadRequest: 400,
    SpecError: 400,
    SpecTooLarge: 422,
    errors.NotAuthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.TooLarge: 413,
    errors.ShuttingDown: 503,
    errors.DatabaseUnavailable: 503,
    errors.StoreUnavailable: 503,
    errors.StorageFull: 507,
    # A client that left mid-body: nobody reads this answer, but it is no server error.
    ClientDisconnect: 400,
}


def _error_response(status: int, message: str, *, permanent: bool = False) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if permanent:
        headers[PERMANENT_HEADER] = "1"
    # The message may quote the bad input, lone surrogates included: keep it encodable.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _domain_response(error: Exception) -> JSONResponse:
    status = next(ERROR_STATUS[cls] for cls in type(error).__mro__ if cls in ERROR_STATUS)
    return _error_response(status, str(error), permanent=getattr(error, "permanent", False))


def _install_error_handlers(app: FastAPI, database: Database) -> None:
    for error_class in ERROR_STATUS:
        async def handle(_request: Request, error: Exception) -> JSONResponse:
            return _domain_response(error)

        app.add_exception_handler(error_class, handle)

    async def filesystem_error(_request: Request, error: OSError) -> JSONResponse:
        # A full disk or a name the filesystem refuses is no server bug; any
        # other OSError stays a 500 (re-raised: logged with its traceback).
        mapped = errors.from_os_error(error)
        if mapped is None:
            raise error
        return _domain_response(mapped)

    app.add_exception_handler(OSError, filesystem_error)

    async def database_error(_request: Request, error: DBAPIError) -> JSONResponse:
        # SQLite's own ENOSPC: the data dir's disk is full, as for a file.
        if "database or disk is full" in str(error.orig):
            return _domain_response(errors.StorageFull())
        if not database.unavailable(error):
            raise error
        # PostgreSQL restarting or failing over: the transaction rolled back, so
        # the client retries (workers and the CLI retry a 503) and loses nothing.
        log.warning("database unavailable: %s", str(error.orig).strip().splitlines()[0] if str(error.orig).strip()
                    else type(error.orig).__name__)
        response = _domain_response(errors.DatabaseUnavailable())
        response.headers["Retry-After"] = "1"
        return response

    app.add_exception_handler(DBAPIError, database_error)

    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        # One sentence for the first problem; a SpecError from our validators
        # is bad input (400), anything else (a size bound included) a schema
        # error (422).
        first = error.errors()[0] if error.errors() else {}
        cause = (first.get("ctx") or {}).get("error")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(cause) if isinstance(cause, Exception) else first.get("msg", "invalid request")
        bad_input = isinstance(cause, SpecError) and not isinstance(cause, SpecTooLarge)
        return _error_response(400 if bad_input else 422,
                               f"{where}: {message}" if where else message)

    app.add_exception_handler(RequestValidationError, invalid_request)


class RequestGate:
    """Refuses, before any route runs, what no route may take: a NUL in the URL,
    and a body over the cap on a non-PUT route (PUT routes stream to disk with
    their own caps).

    PostgreSQL's text cannot hold NUL while SQLite's can, so a path or query
    value holding one is refused here alike on both (request bodies are checked
    by schemas._base._In; the parsers refuse a NUL in a header).
    """

    def __init__(self, app, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            response = _error_response(400, "the URL must not contain a NUL character")
            return await response(scope, receive, send)
        if scope["method"] == "PUT":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = _error_response(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise errors.TooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _pass_failed(database: Database, job: str, error: Exception) -> None:
    # A database that is restarting is an outage, not a bug: one line, no traceback.
    if isinstance(error, DBAPIError) and database.unavailable(error):
        log.warning("%s pass skipped: the database is unavailable", job)
    else:
        log.exception("%s pass failed", job, exc_info=error)


async def _every(seconds: float, job: str, once, database: Database, settings: Settings, *,
                 first_at_start: bool = False) -> None:
    """Run the pass `once` every `seconds` for the server's life."""
    if not first_at_start:
        await asyncio.sleep(seconds)
    while True:
        try:
            await run_in_threadpool(once, database, settings)
        except Exception as error:  # a periodic job must survive a bad moment (a locked database, a store away)
            _pass_failed(database, job, error)
        await asyncio.sleep(seconds)


def _reap_once(database: Database, settings: Settings) -> None:
    # Every replica runs the periodic jobs; one at a time does each pass.
    with database.exclusive("reaper") as mine:
        if mine:
            _reap(database, settings)


def _reap(database: Database, settings: Settings) -> None:
    # Most passes find nothing: a read first keeps them off the write lock.
    with database.transaction(write=False) as session:
        expired = reaper.any_expired(session)
        overdue = reaper.any_overdue(session, settings=settings)
    if expired:
        with database.transaction() as session:
            reaped = reaper.reap_expired(session, settings=settings)
        if reaped:
            log.info("interrupted runs whose worker stopped heartbeating: %s", reaped)
    if overdue:
        with database.transaction() as session:
            ended = reaper.end_overdue(session, settings=settings)
        if ended:
            log.info("ended runs that stayed in a stage past its bound: %s", ended)


def _retain_once(database: Database, settings: Settings) -> None:
    with database.exclusive("retention") as mine:
        if not mine:
            return
        with database.transaction() as session:
            pruned = deletion.retention_pass(session, settings=settings)
    if pruned.runs:
        log.info("retention freed the outputs of runs %s (%d bytes)", pruned.runs, pruned.freed)


def _archive_logs_once(database: Database, settings: Settings) -> None:
    with database.exclusive("log archive") as mine:
        if not mine:
            return
        archived = log_archive.archive_pass(database, settings)
    if archived:
        log.info("archived the logs of runs %s", archived)


def _collect_blobs_once(database: Database, settings: Settings) -> None:
    with database.exclusive("blob collector") as mine:
        if not mine:
            return
        store = object_store(settings)
        # Uploads an earlier cast stored under uploads/<name>/ first: their blobs are named.
        converted = upload_layout.convert(database, store=store, grace_seconds=settings.blob_grace_seconds)
        removed = object_files.collect_blobs(database, store=store, grace_seconds=settings.blob_grace_seconds)
    if converted:
        log.info("converted the objects of uploads %s to content-addressed blobs", converted)
    if removed:
        log.info("deleted %d upload objects no upload names", len(removed))


def _drive_once(database: Database, settings: Settings) -> None:
    with database.exclusive("search driver") as mine:
        if mine:
            hyper_driver.drive_once(database, settings)


def _mount_web(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        page = WEB_DIR / "index.html"
        if not page.is_file():
            raise errors.NotFound("the web viewer is not installed")
        return FileResponse(page, media_type="text/html")

    # uPlot, installed by `npm ci` (scripts/setup.sh) from web/package-lock.json;
    # without it the viewer says charts are unavailable. Mounted before /static,
    # which would otherwise take the path.
    if UPLOT_DIR.is_dir():
        app.mount("/static/vendor/uplot", StaticFiles(directory=UPLOT_DIR), name="uplot")
    if (WEB_DIR / "static").is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.make_dirs()
    storage.clear_temp(settings)
    database = Database(settings.sqlalchemy_url)
    database.migrate()
    with database.transaction() as session:
        database.serialize(session, "bootstrap")
        if user_service.bootstrap(session, settings=settings):
            log.info("new data dir: wrote %s and %s", settings.admin_token_file, settings.worker_token_file)
        if extended := reaper.extend_leases_after_restart(session, settings=settings):
            log.info("gave %d leased runs a fresh lease period to hear from their workers", extended)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Streamed uploads and pushes each hold a thread for their whole
        # transfer; leave plenty for the short database calls of everyone else.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        database.start_listener()
        reaper = asyncio.create_task(_every(settings.reaper_interval, "reaper", _reap_once, database, settings))
        driver = asyncio.create_task(_every(settings.search_interval_seconds, "search driver", _drive_once,
                                            database, settings))
        retainer = (asyncio.create_task(_every(settings.retention_interval, "retention", _retain_once,
                                               database, settings, first_at_start=True))
                    if settings.retention_days is not None else None)
        archiver = (asyncio.create_task(_every(settings.log_archive_interval, "log archive", _archive_logs_once,
                                               database, settings))
                    if settings.log_archive_after_seconds else None)
        collector = (asyncio.create_task(_every(settings.blob_collect_interval, "blob collector",
                                                _collect_blobs_once, database, settings, first_at_start=True))
                     if object_store(settings) is not None else None)
        try:
            yield
        finally:
            for task in (reaper, driver, retainer, archiver, collector):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            database.dispose()

    app = FastAPI(
        title="cast control plane", version=health.VERSION, lifespan=lifespan,
        openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.tokens = user_service.Tokens(database.notifier)
    app.state.storage_id = storage.ensure_storage_id(settings)
    api = APIRouter(prefix="/api/v1")
    # Each request is matched against the routers in this order, route by
    # route: the workers' routes (heartbeats, claims, reports) and log appends
    # come first, being most of the requests under load. No two modules' paths
    # match the same request, so the order decides nothing else.
    for module in (workers, logs, runs, metrics, health, protocol, objects, outputs, uploads, code, users, status,
                   retention, hyper):
        api.include_router(module.router)
    app.include_router(api)
    _install_error_handlers(app, database)
    _mount_web(app)
    app.add_middleware(RequestGate, max_bytes=settings.max_json_body_bytes)
    return app
