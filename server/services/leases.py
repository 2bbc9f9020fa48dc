"""Leases: how a worker holds a run, from the claim to its last report.

Owns the claim (`switch_status` with the run id given as a scalar subquery:
the oldest queued run that fits the worker's free GPUs, so two workers never
get the same run), the lease a worker is handed (`cast.protocol.messages.Lease`),
a worker's heartbeat (one request and one UPDATE for all its runs), a
worker's status reports (alone or in a batch), the check every leased call
makes, the reaper of expired leases and of runs overdue in a bounded stage (a worker that
heartbeats but never gets past building, saving, pushing, stopping or
killing), the fresh lease period after a restart, and the workers' long poll
(`wait_for_lease`).

The session functions take the caller's Session and only flush. The long poll
spans several transactions, so it takes the Database and runs each attempt in
its own `Database.transaction()`: nothing is held while it waits.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, Row, bindparam, case, delete, func, literal, select, tuple_, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cast.protocol.messages import RunSpec
from cast.protocol.worker_messages import (HeartbeatReply, HeldLease, Lease, LeaseMount, LeaseState, StatusBatchReply,
                                           StatusReport, WorkerHeartbeatReply)
from cast.protocol.status import FINAL_STATUSES, LEASED_STATUSES, RunStatus
from cast.protocol.validate import parse_resource
from cast.server.db import Database
from cast.server.errors import InvalidTransition, LeaseLost, PathNotFound, RunNotFound, ShuttingDown
from cast.server.models import OutputFile, Run, RunMount, Upload, UploadFile, Worker, utcnow
from cast.server.schemas.logs import LogLinesIn
from cast.server.services import logs as log_store
from cast.server.services import runs, storage, workers
from cast.server.settings import Settings

S = RunStatus
LEASED_VALUES = [s.value for s in LEASED_STATUSES]  # as stored: the statuses a lease holds
_RUNS = Run.__table__


# --- claiming -----------------------------------------------------------------------

def claim_next(session: Session, *, worker: Worker | Row, free_gpus: int, settings: Settings,
               lease_token: str | None = None) -> Run | None:
    """Lease the oldest queued run that fits `free_gpus` to `worker`, or None;
    `lease_token` is the worker's claim (a fresh token if None)."""
    oldest = (
        select(Run.id)
        .where(Run.status == S.MACHINE_REQUESTED.value, Run.gpus <= free_gpus)
        .order_by(Run.id)
        .limit(1)
        # PostgreSQL: concurrent claimers each lock a different run instead of
        # queueing on the oldest one (SQLite's compiler renders nothing here:
        # its writers take turns anyway).
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    now = utcnow()
    return runs.switch_status(
        session, run=oldest, to=S.BUILDING, must=False,
        note=lambda r: f"{worker.executor}, {RunSpec.from_dict(r.spec).machine_type}"
                       + ("" if worker.sandboxed else ", NOT sandboxed"),
        values={
            "lease_token": lease_token or secrets.token_hex(16),
            "lease_expires_at": now + timedelta(seconds=settings.lease_seconds),
            "worker_id": worker.id, "worker_name": worker.name, "executor": worker.executor,
            "started_at": now, "worker_log_seq": 0, "worker_metric_seq": 0,
        },
    )


def lease_view(session: Session | None, *, run: Run, settings: Settings, storage_id: str) -> Lease:
    """The lease handed to the worker; `session` may be None for a run that mounts nothing."""
    spec = RunSpec.from_dict(run.spec)
    mounts = []
    if spec.mounts:
        for mount in session.scalars(select(RunMount).where(RunMount.run_id == run.id).order_by(RunMount.position)):
            local_path, kind = resolve_mount_source(session, resource=mount.resource, settings=settings)
            mounts.append(LeaseMount(resource=mount.resource, path=mount.path, kind=kind,
                                     local_path=str(local_path)))
    return Lease(
        run_id=run.id, lease_token=run.lease_token, lease_seconds=settings.lease_seconds, attempt=run.attempt,
        spec=spec, mounts=mounts, storage_root=str(settings.resolved_data_dir),
        # With an object store no worker shares the storage: every byte goes by presigned URL.
        storage_id="" if settings.storage_url else storage_id, object_store=bool(settings.storage_url),
        allow_local_git=settings.allow_local_git,
        max_output_bytes=settings.max_output_bytes,
    )


def resolve_mount_source(session: Session, *, resource: str, settings: Settings) -> tuple[Path, str]:
    """Where the server keeps a resource, and whether it is a 'file' or a 'dir'."""
    parsed = parse_resource(resource)
    if parsed.kind == "runs":
        root = storage.run_outputs_dir(settings, parsed.run_id)
        if not parsed.subpath:
            source = session.get(Run, parsed.run_id)
            # A run that saved nothing mounts as an empty folder, sealed as any
            # other; one whose outputs were deleted (forced) mounts nothing.
            if not root.exists() and source is not None and source.deleted_at is None:
                root.mkdir(parents=True, exist_ok=True)
                storage.seal(root)
            return root, "dir"
        kind = runs.manifest_kind(session, OutputFile, OutputFile.run_id == parsed.run_id, parsed.subpath)
    else:
        upload = session.get(Upload, parsed.name)
        if upload is None:
            raise PathNotFound(resource)
        root = storage.upload_path(settings, parsed.name)
        if not parsed.subpath:
            return root, upload.kind
        kind = runs.manifest_kind(session, UploadFile, UploadFile.upload_name == upload.name, parsed.subpath)
    if kind is None:
        raise PathNotFound(resource)
    return storage.resolve_inside(root, parsed.subpath, what="mount source"), kind


def _claim(database: Database, *, worker_id: str, free_gpus: int, settings: Settings, storage_id: str,
           claim: str | None = None) -> tuple[Lease | None, int | None]:
    """A lease on the next run that fits, or None; and, when a run was leased
    while this process has long polls waiting, the fewest GPUs a run still
    queued needs (None if no run is left queued): the wake-up to pass on."""
    queued = None
    with database.transaction() as session:
        worker = workers.claiming(session, worker_id=worker_id)
        workers.check_may_lease(session, worker=worker, settings=settings)
        # A retried request whose first try claimed a run (its answer lost
        # with a replica) is answered that run again, not a second one.
        run = claimed(session, worker=worker, claim=claim) if claim else None
        run = run or claim_next(session, worker=worker, free_gpus=free_gpus, settings=settings, lease_token=claim)
        if run is not None and database.notifier.waiting():
            queued = session.scalar(select(func.min(Run.gpus)).where(Run.status == S.MACHINE_REQUESTED.value))
    if run is None:
        return None, None
    if not RunSpec.from_dict(run.spec).mounts:  # nothing to look up: no second transaction
        return lease_view(None, run=run, settings=settings, storage_id=storage_id), queued
    # The claim is committed first: a lease that cannot be described is reaped
    # like any lost one, instead of blocking the queue for every worker.
    with database.transaction(write=False) as session:
        return lease_view(session, run=run, settings=settings, storage_id=storage_id), queued


def claimed(session: Session, *, worker: Worker | Row, claim: str) -> Run | None:
    """The run this worker's claim `claim` already leased, while it is still leased."""
    return session.scalars(select(Run).where(Run.worker_id == worker.id, Run.lease_token == claim,
                                             Run.status.in_(LEASED_VALUES))).first()


async def wait_for_lease(
    database: Database, *, worker_id: str, free_gpus: int, wait: float, settings: Settings, storage_id: str,
    gone: Callable[[], Awaitable[bool]], claim: str | None = None,
) -> Lease | None:
    """A lease on the next run that fits, waiting up to `wait` seconds for one; None if none came.

    `gone` tells whether the worker hung up: one that gave up waiting must not
    be handed a run it will never hear of. A queued run wakes one waiting
    long poll that it fits (events.RunWait), not all: a claim that leaves runs
    queued wakes one more, and a wake-up no claim attempt served (the worker
    gone, the time up, an error) is passed on when the wait ends, so no run
    stays queued while a waiter it fits sleeps: one that finds no waiter it
    fits on this replica goes to the others (events.Notifier.pass_on).
    """
    deadline = time.monotonic() + wait
    notifier = database.notifier
    with notifier.wait_for_run(free_gpus) as queue:
        while True:
            # Waiting before trying: a run queued after this attempt wakes the wait below.
            woken = queue.wakes()
            lease, queued = await run_in_threadpool(
                _claim, database, worker_id=worker_id, free_gpus=free_gpus, settings=settings, storage_id=storage_id,
                claim=claim,
            )
            queue.served(woken)
            if lease is not None:
                queue.close()  # no longer waiting: the wake-up passed on goes to another
                if queued is not None:
                    notifier.pass_on(queued)
                return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await queue.wait(remaining)
            if notifier.closed:  # the worker retries against the next server
                raise ShuttingDown()
            if await gone():
                return None


# --- while a worker holds the run -----------------------------------------------------

def _extended_lease(settings: Settings) -> ColumnElement:
    """The lease's new end: `lease_seconds` from now, or its current end if later.

    "Now" is read before the write lock is taken; a request that then waited
    for the lock must not move the end back over a heartbeat that got in first
    (the reaper would take a live run for a lost one).
    """
    column = _RUNS.c.lease_expires_at
    expires = literal(utcnow() + timedelta(seconds=settings.lease_seconds), column.type)
    return case((column > expires, column), else_=expires)


def _heartbeat_statement():
    """The heartbeat's UPDATE, built once: the leases, the worker and the new
    end are parameters (building the statement cost more than running it)."""
    held = _RUNS.c
    expires = bindparam("expires", type_=held.lease_expires_at.type)
    return (
        update(_RUNS)
        .where(tuple_(held.id, held.lease_token).in_(bindparam("held", expanding=True)),
               held.worker_id == bindparam("worker"), held.status.in_(LEASED_VALUES))
        .values(lease_expires_at=case((held.lease_expires_at > expires, held.lease_expires_at), else_=expires))
        .returning(held.id, held.status, held.lease_token, held.worker_id, held.lease_expires_at)
    )


_HEARTBEAT = _heartbeat_statement()
_HELD_RUNS = select(_RUNS.c.id, _RUNS.c.status, _RUNS.c.lease_token, _RUNS.c.worker_id).where(
    _RUNS.c.id.in_(bindparam("ids", expanding=True)))


def heartbeat(session: Session, *, worker_id: str, leases: list[HeldLease], settings: Settings) -> WorkerHeartbeatReply:
    """Extend every lease `worker_id` names that it still holds, in one UPDATE
    (to `lease_seconds` from now, or its current end if later: see
    `_extended_lease`), and say of each whether it is lost or what its run's
    status is.

    Plain SQL on the table, no ORM object: a worker with many runs heartbeats
    once a second, so this is the control plane's most frequent request."""
    if not leases:
        return WorkerHeartbeatReply()
    expires = utcnow() + timedelta(seconds=settings.lease_seconds)
    extended = {row.id: row for row in session.execute(_HEARTBEAT, {
        "held": [(lease.run_id, lease.lease_token) for lease in leases], "worker": worker_id, "expires": expires})}
    missing = [lease.run_id for lease in leases if lease.run_id not in extended]
    others = {row.id: row for row in session.execute(_HELD_RUNS, {"ids": missing})} if missing else {}
    states = []
    for lease in leases:
        row = extended.get(lease.run_id) or others.get(lease.run_id)
        # A heartbeat racing the worker's own final report is harmless; any
        # other miss means the lease is gone.
        if (row is None or row.lease_token != lease.lease_token or row.worker_id != worker_id
                or row.status == S.INTERRUPTED.value):
            states.append(LeaseState(run_id=lease.run_id, lost=True))
        else:
            states.append(LeaseState(run_id=lease.run_id, lost=False, status=RunStatus(row.status)))
    ends = [row.lease_expires_at for row in extended.values()]
    return WorkerHeartbeatReply(leases=states, lease_expires_at=min(ends) if ends else None)


def heartbeat_run(session: Session, *, run_id: int, lease_token: str, settings: Settings) -> HeartbeatReply:
    """One run's own heartbeat, for a caller that holds its token but not its
    worker's id: the same UPDATE on one lease; RunNotFound or LeaseLost when lost."""
    holder = session.execute(select(_RUNS.c.worker_id).where(_RUNS.c.id == run_id)).first()
    if holder is None:
        raise RunNotFound(run_id)
    reply = heartbeat(session, worker_id=holder.worker_id or "", leases=[HeldLease(run_id=run_id, lease_token=lease_token)],
                      settings=settings)
    state = reply.leases[0]
    if state.lost:
        raise LeaseLost(run_id)
    return HeartbeatReply(status=state.status, lease_expires_at=reply.lease_expires_at)


def report_status(session: Session, *, run_id: int, report: StatusReport, settings: Settings,
                  current: RunStatus | None = None, ahead: log_store.WorkerBatch | None = None) -> Run:
    """A worker moves its leased run on; the lease is extended while it stays
    leased. `current`: see `runs.switch_status`; `ahead`, the worker's lines
    printed before the report, stored by the same change."""
    run = runs.switch_status(session, run=run_id, to=report.status, note=report.note, lease_token=report.lease_token,
                             values=_report_values(report, settings), current=current, ahead=ahead)
    if report.status is S.KILLED:
        drop_outputs(session, run=run, settings=settings)
    return run


def _report_values(report: StatusReport, settings: Settings) -> dict:
    values: dict = {}
    if report.exit_code is not None:
        values["exit_code"] = report.exit_code
    if report.reason is not None:
        values["reason"] = report.reason
    if report.limits is not None:
        values["limits"] = report.limits
    if report.status in LEASED_STATUSES:
        values["lease_expires_at"] = _extended_lease(settings)
    return values


def report_statuses(session: Session, *, run_id: int, reports: list[StatusReport], settings: Settings,
                    logs: list[LogLinesIn | None] | None = None) -> StatusBatchReply:
    """Consecutive reports of one worker, applied in order as the same reports
    sent one by one would be: one the transition table refuses is skipped and
    named in the answer (the worker asks, as after a lone report's 409, whether
    it still holds the lease); a lost lease refuses them all. One request, one
    transaction, however many statuses the run passed through; reports that
    make a path through the table go as one status change (`_path_from`).
    `logs[i]`, the lines the run printed before report i, are stored ahead of
    it as their own append would store them (its `seq` dedup included), so a
    follower reads them between the stage lines of the reports around them."""
    before = logs or [None] * len(reports)
    refused, run, index, truncated = [], None, 0, None
    while index < len(reports):
        # A report applied holds the run's row to the end of the transaction:
        # what it left is what the next one finds, with no statement to ask.
        current = RunStatus(run.status) if run is not None else None
        ahead = None
        if (lines := before[index]) is not None:
            held, ahead = log_store.prepare_worker_batch(
                session, run_id=run_id, lease_token=reports[index].lease_token, seq=lines.seq, runs=lines.runs,
                settings=settings, held=run)
            truncated = held.log_truncated
            if run is None:  # no change holds the row yet to reserve their offsets with: stored now
                log_store.store_worker_batch(session, held, ahead)
                ahead = None
        path = _path_from(reports, index, lines=before)
        if len(path) > 1:
            try:
                run = _report_path(session, run_id=run_id, path=path, settings=settings, current=current, ahead=ahead)
                index += len(path)
                continue
            except InvalidTransition:  # its first report refused: one by one, each as the table says
                pass
        try:
            run = report_status(session, run_id=run_id, report=reports[index], settings=settings, current=current,
                                ahead=ahead)
        except InvalidTransition:
            refused.append(index)
            if ahead is not None:  # the lines are stored whether or not the report was
                log_store.store_worker_batch(session, run, ahead)
        index += 1
    # The last report applied left the run as it is; with none applied, it is read.
    status = run.status if run is not None else session.scalar(select(Run.status).where(Run.id == run_id))
    return StatusBatchReply(status=RunStatus(status), refused=refused, log_truncated=truncated)


def _path_from(reports: list[StatusReport], start: int, *, lines: list) -> list[StatusReport]:
    """The reports from `start` on that can be one status change: each may
    follow the one before in the table, under one lease token, carries no
    lines (they go between two changes), and none requeues, kills (which
    drops outputs) or ends the run before the last."""
    path = [reports[start]]
    for index in range(start + 1, len(reports)):
        last, report = path[-1], reports[index]
        if last.status in FINAL_STATUSES or _ALONE & {last.status, report.status} or lines[index] is not None:
            break
        if report.lease_token != last.lease_token or not runs.is_path([last.status, report.status]):
            break
        path.append(report)
    return path


# Reports applied on their own: a kill drops the outputs, a requeue starts the run afresh.
_ALONE = frozenset({S.KILLED, S.MACHINE_REQUESTED})


def _report_path(session: Session, *, run_id: int, path: list[StatusReport], settings: Settings,
                 current: RunStatus | None, ahead: log_store.WorkerBatch | None) -> Run:
    values: dict = {}
    for report in path:  # later reports' values win, as when sent one by one
        values.update(_report_values(report, settings))
    last = path[-1]
    return runs.switch_status(session, run=run_id, to=last.status, note=last.note, lease_token=last.lease_token,
                              values=values, via=tuple((report.status, report.note) for report in path[:-1]),
                              current=current, ahead=ahead)


def drop_outputs(session: Session, *, run: Run, settings: Settings) -> None:
    """A killed run keeps no outputs."""
    session.execute(delete(OutputFile).where(OutputFile.run_id == run.id))
    run.outputs_size = None
    session.flush()
    storage.remove(storage.run_outputs_dir(settings, run.id))
