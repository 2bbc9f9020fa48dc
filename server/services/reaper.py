"""The reaper: what ends a lease or a stage that no worker will.

Owns the periodic sweep's two passes, each a cheap read first (`any_*`) and
the change only when it finds something: runs whose lease ran out (the
worker stopped heartbeating) are interrupted, and requeued while they have
retries left; runs overdue in a bounded stage (a worker that heartbeats but
never gets past building, saving, pushing, stopping or killing) end
`failed`, or `killed` when they were being killed. And the fresh lease
period a control plane gives every leased run when it starts after being
down. Each function takes the caller's Session and only flushes.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from cast.protocol.status import RunStatus
from cast.protocol.units import format_duration
from cast.protocol.worker_messages import heartbeat_interval
from cast.server.models import Run, RunTransition, utcnow
from cast.server.services import leases, runs, storage
from cast.server.settings import Settings

S = RunStatus
_LEASED = Run.status.in_(leases.LEASED_VALUES)


# --- leases that ran out ----------------------------------------------------------------

def any_expired(session: Session) -> bool:
    now = utcnow()
    return session.scalar(
        select(Run.id).where(_LEASED, Run.lease_expires_at < now).limit(1)
    ) is not None


def reap_expired(session: Session, *, settings: Settings) -> list[int]:
    """Interrupt runs whose lease expired, requeueing those with retries left; their ids."""
    now = utcnow()
    expired = list(session.scalars(select(Run.id).where(_LEASED, Run.lease_expires_at < now)))
    reaped = []
    for run_id in expired:
        note = f"worker lost: no heartbeat for {settings.lease_seconds:g}s"
        run = runs.switch_status(session, run=run_id, to=S.INTERRUPTED, note=note, must=False,
                                 where=(Run.lease_expires_at < now,), values={"reason": note})
        if run is None:
            continue
        reaped.append(run_id)
        storage.drop_staged(settings, run_id)  # a worker that died mid-move left it half-staged
        if run.attempt <= run.retries:
            runs.switch_status(session, run=run_id, to=S.MACHINE_REQUESTED,
                               note=f"attempt {run.attempt + 1} of {run.retries + 1}")
    return reaped


# --- stages that never end -------------------------------------------------------------

def _stage_bounds(settings: Settings) -> dict[RunStatus, tuple[float, str]]:
    """Each bounded status: its bound in seconds and the setting that sets it."""
    stage = (settings.stage_timeout_seconds, "CAST_STAGE_TIMEOUT_SECONDS")
    halt = (settings.halt_timeout_seconds, "CAST_HALT_TIMEOUT_SECONDS")
    return {S.BUILDING: stage, S.SAVING: stage, S.PUSHING: stage, S.STOPPING: halt, S.KILLING: halt}


def _overdue(settings: Settings, now) -> ColumnElement:
    """Runs in a bounded status entered longer ago than its bound."""
    entered = select(func.max(RunTransition.at)).where(RunTransition.run_id == Run.id).scalar_subquery()
    return or_(*(
        and_(Run.status == status.value, entered < now - timedelta(seconds=seconds))
        for status, (seconds, _) in _stage_bounds(settings).items()
    ))


def any_overdue(session: Session, *, settings: Settings) -> bool:
    return session.scalar(select(Run.id).where(_overdue(settings, utcnow())).limit(1)) is not None


def end_overdue(session: Session, *, settings: Settings) -> list[int]:
    """End runs that stayed in a bounded status past its bound, whatever their
    worker says: `failed`, or `killed` when they were being killed; their ids.
    A run the worker moved on meanwhile is left alone."""
    now = utcnow()
    bounds = _stage_bounds(settings)
    ended = []
    for run_id, status in session.execute(select(Run.id, Run.status).where(_overdue(settings, now))).all():
        status = RunStatus(status)
        seconds, setting = bounds[status]
        reason = f"{status.value} for longer than {format_duration(seconds)}, the server's bound ({setting})"
        to = S.KILLED if status is S.KILLING else S.FAILED
        run = runs.switch_status(session, run=run_id, to=to, note=reason, must=False,
                                 where=(Run.status == status.value, _overdue(settings, now)),
                                 values={"reason": reason})
        if run is None:
            continue
        if to is S.KILLED:
            leases.drop_outputs(session, run=run, settings=settings)
        ended.append(run_id)
    return ended


def extend_leases_after_restart(session: Session, *, settings: Settings) -> int:
    """Give every leased run a fresh lease period when the control plane starts
    after being down.

    Workers could not reach a stopped control plane, so a lease that ran out
    while it was down says nothing about the worker; its next heartbeat will
    tell. A replica that starts while another serves leaves the leases alone:
    there the workers were heard, and a lapsed lease is a lost worker's. It
    knows another serves when a lease was renewed within the last three
    heartbeat intervals (a renewal sets the lease's end a lease period ahead).
    """
    heard_since = utcnow() + timedelta(seconds=settings.lease_seconds - 3 * heartbeat_interval(settings.lease_seconds))
    newest = session.scalar(select(func.max(Run.lease_expires_at)).where(_LEASED))
    if newest is not None and newest > heard_since:
        return 0
    result = session.execute(
        update(Run).where(_LEASED)
        .values(lease_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
