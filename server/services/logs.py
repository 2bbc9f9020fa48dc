"""Run logs: append-only lines numbered from 0, stored and served in chunks.

A chunk (`LogChunk` row) holds consecutive lines of one stream as one JSON
array with one time, the time of its first line. A worker's batch arrives as
runs of lines (`cast.protocol.logs.LogBatch`) and each run is stored as one
row; a read answers rows as they are (`LogPage`), sliced only at its two ends,
so offsets stay exact per line. Nothing here walks a batch or a read line by
line in Python: lines are counted, measured, joined and (de)serialised by
`len`, `str.join` and `json`, in C. Only a batch holding an over-long line or
crossing the cap takes a per-line path, once.

Owns the worker's batch (deduplicated by `seq` through `batches.admit`), the
server's own `cast` lines, and the per-run cap: the run's own stdout/stderr
bytes (`runs.log_bytes`, a newline counted per line) past
`max_log_bytes_per_run` are dropped after one visible marker; `cast` lines are
always kept. A line longer than `max_log_line_chars` is split, not cut.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from itertools import accumulate

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cast.protocol.logs import MAX_READ_BYTES, MAX_READ_LINES, split_lines
from cast.protocol.messages import LogStream
from cast.protocol.status import is_final
from cast.protocol.units import human_size
from cast.server import events
from cast.server.models import LogChunk, Run, utcnow
from cast.server.services import batches
from cast.server.settings import Settings

log = logging.getLogger(__name__)

Rows = list[tuple[str, list[str], datetime]]  # (stream, lines, time of the first line)


def append(session: Session, run: Run, rows: Rows) -> None:
    """Store runs of lines at the end of `run`'s log, one chunk each."""
    rows = [row for row in rows if row[1]]
    if not rows:
        return
    count = sum(len(lines) for _, lines, _ in rows)
    # Offsets are reserved in SQL, not from the in-memory run, so they stay
    # right whatever the session holds.
    end = session.execute(
        update(Run).where(Run.id == run.id).values(log_size=Run.log_size + count).returning(Run.log_size)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    offset, chunks = end - count, []
    for stream, lines, time in rows:
        chunks.append({"run_id": run.id, "first_offset": offset, "count": len(lines), "stream": stream,
                       "time": time, "lines": _lines_json(lines)})
        offset += len(lines)
    session.execute(insert(LogChunk), chunks)
    set_committed_value(run, "log_size", end)
    events.changed(session, events.run_key(run.id))


def _lines_json(lines: list[str]) -> str:
    """`lines` as the JSON array a chunk stores: orjson's (several times
    `json`'s speed), or `json`'s escaped ASCII for a lone surrogate, which
    orjson refuses and which escaped cannot break the column's UTF-8."""
    try:
        return orjson.dumps(lines).decode()
    except TypeError:
        return json.dumps(lines)


def _lines_of(stored: str) -> list[str]:
    """A chunk's lines from its JSON array (see `_lines_json`)."""
    try:
        return orjson.loads(stored)
    except orjson.JSONDecodeError:  # an escaped lone surrogate, which orjson refuses
        return json.loads(stored)


def append_cast_lines(session: Session, run: Run, lines: list[str]) -> None:
    append(session, run, [(LogStream.CAST.value, list(lines), utcnow())])


def _size(lines: list[str]) -> int:
    """Bytes of `lines` as the log's text: UTF-8, a newline each."""
    return len("\n".join(lines).encode("utf-8", "surrogatepass")) + 1


def append_worker_batch(session: Session, *, run_id: int, lease_token: str, seq: int, runs: list,
                        settings: Settings) -> tuple[int, bool]:
    """Store a worker's batch (`runs` have .stream/.lines/.time); (next_offset, truncated)."""
    run, skip = batches.admit(session, run_id=run_id, lease_token=lease_token, seq=seq,
                              count=sum(len(r.lines) for r in runs), mark="worker_log_seq")
    now = utcnow()
    cap = settings.max_log_bytes_per_run
    rows: Rows = []
    marker = []
    for item in runs:
        lines = item.lines
        if skip:  # stored by an earlier try of this batch
            lines, skip = lines[skip:], max(0, skip - len(lines))
            if not lines:
                continue
        stream = LogStream(item.stream)
        lines = split_lines(lines, settings.max_log_line_chars)
        if stream is not LogStream.CAST:
            if run.log_truncated:
                continue
            size = _size(lines)
            if run.log_bytes + size > cap:
                # The one batch that crosses the cap: keep the lines that fit.
                room = cap - run.log_bytes
                sizes = accumulate(len(line.encode("utf-8", "surrogatepass")) + 1 for line in lines)
                fits = sum(1 for total in sizes if total <= room)
                lines, size = lines[:fits], _size(lines[:fits]) if fits else 0
                run.log_truncated = True
                marker = [(LogStream.CAST.value, [f"[cast] log truncated after {cap:,} bytes ({human_size(cap)})"],
                           now)]
            run.log_bytes += size
            run.worker_log_lines += len(lines)
        time = item.time or now
        # Naive times are taken as UTC, as the database stores them.
        rows.append((stream.value, lines, time if time.tzinfo else time.replace(tzinfo=timezone.utc)))
        rows.extend(marker)
        marker = []
    append(session, run, rows)
    session.flush()
    return run.log_size, run.log_truncated


def iso_time(time: datetime) -> str:
    """A stored time as pages and archives carry it: ISO 8601, UTC, with a Z."""
    return (time if time.tzinfo else time.replace(tzinfo=timezone.utc)).isoformat().replace("+00:00", "Z")


def read(session: Session, *, run: Run, offset: int, limit: int) -> dict:
    """A page `{chunks, next_offset, finished}` (`cast.protocol.logs.LogPage`) of
    at most `limit` lines from `offset`; a negative offset counts back from the
    end. A page ends early past MAX_READ_BYTES of line text."""
    start, end = bounds(run, offset=offset, limit=limit)
    # The chunk holding `start`, then every chunk that begins before `end`.
    first = session.scalar(
        select(func.max(LogChunk.first_offset)).where(LogChunk.run_id == run.id, LogChunk.first_offset <= start)
    ) or 0
    rows = session.execute(
        select(LogChunk.first_offset, LogChunk.time, LogChunk.stream, LogChunk.lines)
        .where(LogChunk.run_id == run.id, LogChunk.first_offset >= first, LogChunk.first_offset < end)
        .order_by(LogChunk.first_offset)
    )
    try:
        return page(((first_offset, iso_time(time), stream, lines) for first_offset, time, stream, lines in rows),
                    run=run, start=start, end=end)
    finally:
        rows.close()


def bounds(run: Run, *, offset: int, limit: int) -> tuple[int, int]:
    """The lines `start .. end - 1` a read from `offset` of at most `limit` lines covers."""
    size = run.log_size
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    return start, min(size, start + min(limit, MAX_READ_LINES))


def page(rows: Iterable[tuple[int, str, str, str]], *, run: Run, start: int, end: int) -> dict:
    """The page of lines `start .. end - 1` out of stored chunks `(first offset,
    ISO time, stream, lines as JSON text)`: the chunk holding `start`, then those
    that begin before `end`, in order, from the database or an archive alike."""
    chunks, at, read_bytes = [], start, 0
    for first_offset, time, stream, lines in rows:
        if read_bytes >= MAX_READ_BYTES:
            break
        read_bytes += len(lines)
        texts = _lines_of(lines)
        if first_offset < at or first_offset + len(texts) > end:
            texts = texts[at - first_offset:end - first_offset]
        if texts:
            chunks.append({"offset": at, "stream": stream, "time": time, "lines": texts})
            at += len(texts)
    return {"chunks": chunks, "next_offset": at, "finished": is_final(run.status) and at >= run.log_size}
