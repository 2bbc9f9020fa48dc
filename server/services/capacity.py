"""What the registered workers could run, and what a queued run waits for.

Owns: which workers count as present (`present_workers`), what one of them
could never do for a run (`why_unable`: too few GPUs, an image build on an
executor that builds none, no sandbox on a server with several users), the
refusal at submit of a run that no present worker could ever run
(`NoWorkerCan`, unless the run is queued anyway), the one-line view of a
worker's capacities, and the line a queued run's log shows about what it
waits for (`waiting_line`).

A worker is present when it asked for work within `presence_seconds` (four
lease periods, at least a minute: an idle worker asks every 10 s), or when
it holds a run whose lease is current (a worker whose slots are all taken
stops asking, but heartbeats its runs). A worker that registered again under
the same name (a restarted one) replaces its earlier record. A run's wanted
memory and CPUs are not part of its spec, so only GPUs and the executor's
abilities are compared.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Row, bindparam, func, select
from sqlalchemy.orm import Session

from cast.protocol.messages import RunSpec
from cast.protocol.status import LEASED_STATUSES, RunStatus
from cast.protocol.units import human_size
from cast.server.errors import NoWorkerCan
from cast.server.models import Run, User, Worker, utcnow
from cast.server.settings import Settings

MIN_PRESENCE_SECONDS = 60.0
# Executors that build images, and so can install apt packages or start from a given image.
IMAGE_EXECUTORS = frozenset({"docker"})


def presence_seconds(settings: Settings) -> float:
    return max(MIN_PRESENCE_SECONDS, 4 * settings.lease_seconds)


@dataclass
class Load:
    """What a worker is busy with now: how many leased runs and the GPUs they hold."""

    busy: int = 0
    gpus: int = 0


_LEASED = [s.value for s in LEASED_STATUSES]
_WORKERS = Worker.__table__
# Built once: every submit runs it (building it cost more than running it).
# Each busy worker's load is counted by the database, one row a worker: a
# submit must not load every active run.
_LOADS = (select(Run.worker_id.label("worker_id"), func.count().label("busy"),
                 func.coalesce(func.sum(Run.gpus), 0).label("held_gpus"))
          .where(Run.status.in_(_LEASED), Run.worker_id.is_not(None)).group_by(Run.worker_id).subquery())
_PRESENT = (select(_WORKERS, _LOADS.c.busy, _LOADS.c.held_gpus)
            .select_from(_WORKERS.outerjoin(_LOADS, _LOADS.c.worker_id == _WORKERS.c.id))
            .where((_WORKERS.c.last_seen_at >= bindparam("since")) | _LOADS.c.worker_id.is_not(None))
            .order_by(_WORKERS.c.registered_at))


def present_workers(session: Session, *, settings: Settings) -> tuple[list[Row], dict[str, Load]]:
    """The workers that count, oldest registration first (see the module's
    rule), as rows of the workers table, not ORM objects (a submit reads them
    all); and each busy worker's current load, by worker id. One statement."""
    since = utcnow() - timedelta(seconds=presence_seconds(settings))
    candidates = session.execute(_PRESENT, {"since": since}).all()
    loads = {w.id: Load(busy=w.busy, gpus=w.held_gpus) for w in candidates if w.busy is not None}
    newest = {worker.name: worker.id for worker in candidates}  # the last registration of each name
    return [w for w in candidates if newest[w.name] == w.id or w.id in loads], loads


def describe_worker(worker: Worker | Row) -> str:
    """`w1 (local, 2 CPUs, 23.4 GB, no GPU)`."""
    gpus = len(worker.gpus or [])
    parts = [worker.executor, f"{worker.cpus} CPU{'' if worker.cpus == 1 else 's'}", human_size(worker.memory),
             f"{gpus} GPU{'' if gpus == 1 else 's'}" if gpus else "no GPU"]
    if not worker.sandboxed:
        parts.append("unsandboxed")
    return f"{worker.name} ({', '.join(parts)})"


def _several_users(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(User)) > 1


def why_unable(worker: Worker | Row, spec: RunSpec, *, unsandboxed_refused: bool) -> str | None:
    """Why `worker` could never run `spec`, or None if it could once free."""
    if spec.gpus > len(worker.gpus or []):
        return _gpus_text(spec.gpus)
    if worker.executor not in IMAGE_EXECUTORS:
        if spec.apt:
            return f"apt packages, which the {worker.executor} executor cannot install (docker can)"
        if spec.docker_image:
            return f"a Docker image, which the {worker.executor} executor cannot use (docker can)"
    if unsandboxed_refused and not worker.sandboxed:
        return "a sandboxed worker (this server has several users and CAST_ALLOW_UNSANDBOXED_WORKERS is off)"
    return None


def _gpus_text(count: int) -> str:
    return f"{count} GPU{'' if count == 1 else 's'}"


def check_runnable(session: Session, *, spec: RunSpec, settings: Settings, queue_anyway: bool) -> str | None:
    """Refuse (NoWorkerCan) a run no present worker could ever run, unless
    `queue_anyway`; otherwise the waiting line for its log, or None when a
    worker able to run it has room now."""
    present, loads = present_workers(session, settings=settings)
    # Users are counted only when the answer matters: a fleet of sandboxed workers never asks.
    unsandboxed_refused = (any(not w.sandboxed for w in present) and not settings.allow_unsandboxed_workers
                           and _several_users(session))
    reasons = {w.id: why_unable(w, spec, unsandboxed_refused=unsandboxed_refused) for w in present}
    if present and all(reasons.values()) and not queue_anyway:
        needs = list(dict.fromkeys(reasons.values()))
        raise NoWorkerCan(
            f"no worker can run this: it asks for {' or '.join(needs)}; workers: "
            + ", ".join(describe_worker(w) for w in present)
            + " (--queue-anyway waits for a worker that can)"
        )
    able = [w for w in present if reasons[w.id] is None]
    return waiting_line(session, spec=spec, settings=settings, present=present, able=able, loads=loads)


def waiting_line(session: Session, *, spec: RunSpec, settings: Settings, present: list[Row],
                 able: list[Row], loads: dict[str, Load]) -> str | None:
    """What a newly queued run waits for, in one line; None if nothing (a worker has room)."""
    if not present:
        if session.scalar(select(func.count()).select_from(Worker)):
            return "waiting: no worker is connected (none asked for work in the last " \
                   f"{presence_seconds(settings):.0f} s); it runs once one does"
        return "waiting: no worker registered yet; it runs once one does"
    if not able:
        return "waiting: no connected worker can run this (queued anyway); it runs once one that can connects"
    if any(_has_room(w, spec, loads.get(w.id, Load())) for w in able):
        return None
    kind = "GPU " if spec.gpus else ""
    if len(able) == 1:
        return f"waiting: 1 {kind}worker can run it ({able[0].name}), busy"
    return f"waiting: {len(able)} {kind}workers can run it, {'both' if len(able) == 2 else 'all'} busy"


def _has_room(worker: Row, spec: RunSpec, load: Load) -> bool:
    return load.busy < worker.max_runs and len(worker.gpus or []) - load.gpus >= spec.gpus


def overview(session: Session, *, settings: Settings, viewer: User) -> dict:
    """The present workers with their capacities and runs, and the queue by
    machine type; run numbers of other users' runs are only counted for non-admins."""
    present, loads = present_workers(session, settings=settings)
    held: dict[str, list[int]] = defaultdict(list)
    for worker_id, run_id in session.execute(
        select(Run.worker_id, Run.id).where(Run.status.in_(_LEASED), Run.worker_id.in_(list(loads))).order_by(Run.id)
    ):
        held[worker_id].append(run_id)
    visible = None
    if not viewer.is_admin:
        visible = set(session.scalars(select(Run.id).where(
            Run.owner_id == viewer.id, Run.id.in_([i for runs in held.values() for i in runs]))))
    workers = []
    for worker in present:
        load = loads.get(worker.id, Load())
        workers.append({
            "name": worker.name, "id": worker.id, "executor": worker.executor, "sandboxed": worker.sandboxed,
            "cpus": worker.cpus, "memory": worker.memory, "gpus": len(worker.gpus or []),
            "max_runs": worker.max_runs, "last_seen_at": worker.last_seen_at,
            "runs": [i for i in held[worker.id] if visible is None or i in visible], "busy": load.busy,
        })
    machine_type = Run.spec["machine_type"].as_string()
    queued = session.execute(
        select(machine_type, func.count()).where(Run.status == RunStatus.MACHINE_REQUESTED.value).group_by(machine_type)
    ).all()
    by_type = {machine_type or "cpu": count for machine_type, count in queued}
    return {"workers": workers, "queue": {"total": sum(by_type.values()), "by_machine_type": by_type}}
