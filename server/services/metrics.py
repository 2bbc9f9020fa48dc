"""Run metrics: points numbered per run from 0 (like log entries), appended by
the worker, read by users, and aggregated for other services (searches).

Owns the worker's batch protocol (`seq` = points the worker sent before this
batch in this attempt, so a retried batch is never stored twice; a new
attempt starts at 0 and its points are numbered after the earlier ones), the
per-run bounds of cast.protocol.metrics (names and points past them are
dropped), the reads (a summary per name, points from an offset, the follow
stream) and `aggregate`. A run's metrics live in the database, not in its
outputs: deleting the outputs keeps them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cast.protocol.metrics import MAX_NAMES_PER_RUN, MAX_POINTS_PER_RUN
from cast.protocol.status import is_final
from cast.server import events
from cast.server.db import Database
from cast.server.errors import BadRequest
from cast.server.models import MetricPoint, Run, User, utcnow
from cast.server.services import batches, runs

MAX_READ = 100_000
FOLLOW_BATCH = 10_000
AGGREGATES = ("last", "min", "max")


def append_worker_batch(session: Session, *, run_id: int, lease_token: str, seq: int, points: list) -> int:
    """Store a worker's batch (`points` have .name/.value/.step/.time, already
    checked by the schema); the run's next offset."""
    run, skip = batches.admit(session, run_id=run_id, lease_token=lease_token, seq=seq, count=len(points),
                              mark="worker_metric_seq", columns=("metrics_size",))
    fresh = points[skip:]
    room = max(0, MAX_POINTS_PER_RUN - run.metrics_size)
    if fresh and room:
        known = set(session.scalars(select(MetricPoint.name).where(MetricPoint.run_id == run_id).distinct()))
        now = utcnow()
        rows = []
        for point in fresh:
            if len(rows) == room:
                break
            if point.name not in known:
                if len(known) >= MAX_NAMES_PER_RUN:
                    continue
                known.add(point.name)
            rows.append((point.name, point.step, point.value, point.time or now))
        _append(session, run, rows)
    session.flush()
    return run.metrics_size


def _append(session: Session, run: Run, rows: list[tuple[str, int | None, float, datetime]]) -> None:
    if not rows:
        return
    # Offsets are reserved in SQL, as for log entries.
    end = session.execute(
        update(Run).where(Run.id == run.id).values(metrics_size=Run.metrics_size + len(rows))
        .returning(Run.metrics_size).execution_options(synchronize_session=False)
    ).scalar_one()
    start = end - len(rows)
    session.execute(insert(MetricPoint), [
        {"run_id": run.id, "offset": start + i, "name": name, "step": step, "value": value, "time": time}
        for i, (name, step, value, time) in enumerate(rows)
    ])
    set_committed_value(run, "metrics_size", end)
    events.changed(session, events.run_key(run.id))


def summary(session: Session, *, run_id: int, viewer: User) -> dict:
    """`{metrics: [{name, count, last, min, max, last_step, last_time}], next_offset, finished}`, by name."""
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    stats = session.execute(
        select(MetricPoint.name, func.count(), func.min(MetricPoint.value), func.max(MetricPoint.value),
               func.max(MetricPoint.offset))
        .where(MetricPoint.run_id == run.id).group_by(MetricPoint.name).order_by(MetricPoint.name)
    ).all()
    last = {}
    if stats:
        offsets = [row[4] for row in stats]
        last = {p.offset: p for p in session.scalars(
            select(MetricPoint).where(MetricPoint.run_id == run.id, MetricPoint.offset.in_(offsets)))}
    return {
        "metrics": [
            {"name": name, "count": count, "min": low, "max": high, "last": last[end].value,
             "last_step": last[end].step, "last_time": last[end].time}
            for name, count, low, high, end in stats
        ],
        "next_offset": run.metrics_size,
        "finished": is_final(run.status),
    }


def read_points(session: Session, *, run_id: int, viewer: User, offset: int, limit: int,
                name: str | None = None) -> dict:
    """`{points, next_offset, finished}` from `offset` on; with `name`, only its
    points, `next_offset` still counting every point read past."""
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    size = run.metrics_size
    start = min(max(0, offset), size)
    limit = min(limit, MAX_READ)
    # The run's status first, then its points: a point written after the read
    # of the status can only make `finished` false too early, never lose a point.
    finished = is_final(run.status)
    # Bounded by the size read above: on PostgreSQL each statement has its own
    # snapshot, and a point committed between the two, answered here, would be
    # answered again from `next_offset` = size.
    query = select(MetricPoint).where(MetricPoint.run_id == run.id, MetricPoint.offset >= start,
                                      MetricPoint.offset < size)
    if name is not None:
        query = query.where(MetricPoint.name == name)
    rows = session.scalars(query.order_by(MetricPoint.offset).limit(limit)).all()
    if len(rows) == limit:
        next_offset = rows[-1].offset + 1
    else:  # every point up to the end of the run's metrics was looked at
        next_offset = size
    return {
        "points": [{"offset": r.offset, "name": r.name, "step": r.step, "value": r.value, "time": r.time}
                   for r in rows],
        "next_offset": next_offset,
        "finished": finished and next_offset >= size,
    }


def _read(database: Database, *, run_id: int, viewer: User, offset: int, name: str | None) -> dict:
    with database.transaction(write=False) as session:
        return read_points(session, run_id=run_id, viewer=viewer, offset=offset, limit=FOLLOW_BATCH, name=name)


async def follow(database: Database, *, run_id: int, viewer: User, offset: int,
                 name: str | None = None) -> AsyncIterator[dict]:
    """The chunks from `offset` on as points arrive (`events.follow_run`)."""
    return await events.follow_run(
        database.notifier, run_id=run_id, offset=offset, items="points",
        read=lambda at: _read(database, run_id=run_id, viewer=viewer, offset=at, name=name),
    )


def aggregate(session: Session, *, run_id: int, name: str, agg: str) -> float | None:
    """The last (by offset), smallest or largest value of `name` in the run; None
    when it has no such point."""
    where = (MetricPoint.run_id == run_id, MetricPoint.name == name)
    if agg == "last":
        return session.scalars(select(MetricPoint.value).where(*where)
                               .order_by(MetricPoint.offset.desc()).limit(1)).first()
    if agg == "min":
        return session.scalar(select(func.min(MetricPoint.value)).where(*where))
    if agg == "max":
        return session.scalar(select(func.max(MetricPoint.value)).where(*where))
    raise BadRequest(f"aggregate {agg!r} is not one of {', '.join(AGGREGATES)}")
