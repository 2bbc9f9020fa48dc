"""Run logs: append-only entries numbered from 0, read from an offset.

Owns the worker's batch protocol (`seq` = entries the worker sent before this
batch, so a retried batch is never stored twice), the server's own `cast`
lines, and the per-run cap: past `max_log_entries_per_run` stdout/stderr lines
one visible marker is written and later lines are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cast.protocol.messages import LogStream
from cast.protocol.status import is_final
from cast.server import events
from cast.server.errors import LeaseLost, RunNotFound
from cast.server.models import LogEntry, Run, utcnow
from cast.server.settings import Settings

log = logging.getLogger(__name__)
MAX_READ = 10_000


def append(session: Session, run: Run, entries: Iterable[tuple[str, str, datetime]]) -> None:
    """Store (stream, text, time) entries at the end of `run`'s log."""
    entries = list(entries)
    if not entries:
        return
    # Offsets are reserved in SQL, not from the in-memory run, so they stay
    # right whatever the session holds.
    end = session.execute(
        update(Run).where(Run.id == run.id).values(log_size=Run.log_size + len(entries)).returning(Run.log_size)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    start = end - len(entries)
    session.execute(insert(LogEntry), [
        {"run_id": run.id, "offset": start + i, "stream": stream, "text": text, "time": time}
        for i, (stream, text, time) in enumerate(entries)
    ])
    set_committed_value(run, "log_size", end)
    events.changed(session, events.run_key(run.id))


def append_cast_lines(session: Session, run: Run, lines: list[str]) -> None:
    now = utcnow()
    append(session, run, [(LogStream.CAST.value, line, now) for line in lines])


def append_worker_batch(
    session: Session, *, run_id: int, lease_token: str, seq: int, entries: list, settings: Settings
) -> tuple[int, bool]:
    """Store a worker's batch (`entries` have .stream/.text/.time); (next_offset, truncated)."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    if run.lease_token != lease_token:
        raise LeaseLost(run_id)
    if seq > run.worker_log_seq:
        log.warning("run %s: worker log batch starts at %s, expected %s", run_id, seq, run.worker_log_seq)
    fresh = entries[max(0, run.worker_log_seq - seq):]
    run.worker_log_seq = max(run.worker_log_seq, seq + len(entries))
    room = max(0, settings.max_log_entries_per_run - run.worker_log_lines)
    now = utcnow()
    limit = settings.max_log_line_chars
    rows = []
    # Only the run's own output counts against the cap: the worker's `cast`
    # lines (the sandbox, what was not saved and why) are few and always kept.
    for entry in fresh:
        stream = LogStream(entry.stream)
        if stream is not LogStream.CAST:
            if room == 0:
                if not run.log_truncated:
                    rows.append((LogStream.CAST.value,
                                 f"[cast] log truncated after {settings.max_log_entries_per_run} lines", now))
                    run.log_truncated = True
                continue
            room -= 1
            run.worker_log_lines += 1
        text = entry.text if len(entry.text) <= limit else entry.text[:limit] + "…"
        rows.append((stream.value, text, entry.time or now))
    append(session, run, rows)
    session.flush()
    return run.log_size, run.log_truncated


def read(session: Session, *, run: Run, offset: int, limit: int) -> dict:
    """A chunk `{entries, next_offset, finished}`; a negative offset counts back from the end."""
    size = run.log_size
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    rows = session.scalars(
        select(LogEntry)
        .where(LogEntry.run_id == run.id, LogEntry.offset >= start)
        .order_by(LogEntry.offset)
        .limit(min(limit, MAX_READ))
    ).all()
    next_offset = start + len(rows)
    return {
        "entries": [
            {"offset": r.offset, "time": r.time, "stream": r.stream, "text": r.text} for r in rows
        ],
        "next_offset": next_offset,
        "finished": is_final(run.status) and next_offset >= size,
    }
