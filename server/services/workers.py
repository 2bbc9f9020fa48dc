"""Workers: registration and the record of when each was last heard from (the caller commits)."""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from cast.server.errors import WorkerNotFound
from cast.server.models import Worker, utcnow
from cast.server.schemas import WorkerRegister


def register(session: Session, *, body: WorkerRegister) -> Worker:
    worker = Worker(id=f"w-{secrets.token_hex(8)}", **body.model_dump())
    session.add(worker)
    session.flush()
    return worker


def get(session: Session, *, worker_id: str) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise WorkerNotFound(worker_id)
    return worker


def seen(session: Session, *, worker: Worker) -> None:
    worker.last_seen_at = utcnow()
