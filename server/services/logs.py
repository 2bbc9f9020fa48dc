"""Run logs: append-only entries numbered from 0, stored in chunks, read from an offset.

A chunk (`LogChunk`) holds consecutive lines of one stream as one JSON array
with one time, the time of its first line: a batch of N lines is a few rows,
not N. A chunk ends where the stream changes or a line comes a second or more
after the chunk's first, so a line's time is never more than a second early.
Readers still see single entries with exact offsets: a read slices chunks.

Owns the worker's batch protocol (`seq` = entries the worker sent before this
batch, so a retried batch is never stored twice), the server's own `cast`
lines, and the per-run cap: past `max_log_entries_per_run` stdout/stderr lines
one visible marker is written and later lines are dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cast.protocol.messages import LogStream
from cast.protocol.status import is_final
from cast.server import events
from cast.server.errors import LeaseLost, RunNotFound
from cast.server.models import LogChunk, Run, utcnow
from cast.server.settings import Settings

log = logging.getLogger(__name__)
MAX_READ = 10_000
CHUNK_SPAN = timedelta(seconds=1)


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
    session.execute(insert(LogChunk), list(_chunks(run.id, start, entries)))
    set_committed_value(run, "log_size", end)
    events.changed(session, events.run_key(run.id))


def _chunks(run_id: int, start: int, entries: list[tuple[str, str, datetime]]) -> Iterable[dict]:
    """Rows for `entries` numbered from `start`: one per run of one stream within CHUNK_SPAN."""
    first = 0
    for i in range(1, len(entries) + 1):
        if i < len(entries) and entries[i][0] == entries[first][0] and entries[i][2] - entries[first][2] < CHUNK_SPAN:
            continue
        # ensure_ascii: a lone surrogate in a line cannot break the column's UTF-8.
        yield {"run_id": run_id, "first_offset": start + first, "count": i - first, "stream": entries[first][0],
               "time": entries[first][2], "lines": json.dumps([text for _, text, _ in entries[first:i]])}
        first = i


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
        time = entry.time or now
        # Naive times are taken as UTC, as the database stores them: chunks compare times.
        rows.append((stream.value, text, time if time.tzinfo else time.replace(tzinfo=timezone.utc)))
    append(session, run, rows)
    session.flush()
    return run.log_size, run.log_truncated


def read(session: Session, *, run: Run, offset: int, limit: int) -> dict:
    """A chunk `{entries, next_offset, finished}`; a negative offset counts back from the end."""
    size = run.log_size
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    end = min(size, start + min(limit, MAX_READ))
    # The chunk holding `start`, then every chunk that begins before `end`.
    first = session.scalar(
        select(func.max(LogChunk.first_offset)).where(LogChunk.run_id == run.id, LogChunk.first_offset <= start)
    ) or 0
    chunks = session.execute(
        select(LogChunk.first_offset, LogChunk.time, LogChunk.stream, LogChunk.lines)
        .where(LogChunk.run_id == run.id, LogChunk.first_offset >= first, LogChunk.first_offset < end)
        .order_by(LogChunk.first_offset)
    ).all()
    rows = []
    for first_offset, time, stream, lines in chunks:
        texts = json.loads(lines)
        for i in range(max(0, start - first_offset), min(len(texts), end - first_offset)):
            rows.append({"offset": first_offset + i, "time": time, "stream": stream, "text": texts[i]})
    next_offset = start + len(rows)
    return {
        "entries": rows,
        "next_offset": next_offset,
        "finished": is_final(run.status) and next_offset >= size,
    }
