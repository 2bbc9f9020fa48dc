"""Workers: registration, the record of when each was last heard from, and
whether one may be leased runs (the caller commits)."""

from __future__ import annotations

import secrets

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.orm import Session

from cast.server.errors import Forbidden, WorkerNotFound
from cast.server.models import User, Worker, utcnow
from cast.server.schemas.workers import WorkerRegister
from cast.server.settings import Settings


def register(session: Session, *, body: WorkerRegister) -> Worker:
    worker = Worker(id=f"w-{secrets.token_hex(8)}", **body.model_dump())
    session.add(worker)
    session.flush()
    return worker


_WORKERS = Worker.__table__
# Built once: a claim runs it every time (building it cost more than running it).
_CLAIMING = (
    update(_WORKERS).where(_WORKERS.c.id == bindparam("worker")).values(last_seen_at=bindparam("now"))
    .returning(_WORKERS.c.id, _WORKERS.c.name, _WORKERS.c.executor, _WORKERS.c.sandboxed)
)


def claiming(session: Session, *, worker_id: str) -> Row:
    """The worker about to claim a run, marked seen now, in one statement:
    its id, name, executor and whether it sandboxes (no ORM object: a claim
    is among the control plane's most frequent requests); WorkerNotFound."""
    worker = session.execute(_CLAIMING, {"worker": worker_id, "now": utcnow()}).first()
    if worker is None:
        raise WorkerNotFound(worker_id)
    return worker


def check_may_lease(session: Session, *, worker: Worker | Row, settings: Settings) -> None:
    """Forbidden for a worker whose runs are not sandboxed while more than one
    user exists: one user's run could read another's runs and this server's
    files. Allowed where the operator said so, and always on a one-user server."""
    if worker.sandboxed or settings.allow_unsandboxed_workers:
        return
    if session.scalar(select(func.count()).select_from(User)) > 1:
        raise Forbidden(
            f"worker {worker.name!r} runs its runs unsandboxed and this server has more than one user: install "
            "bubblewrap on the worker or use the docker executor, or set CAST_ALLOW_UNSANDBOXED_WORKERS=1 "
            "on the server to allow it"
        )
