"""Run logs: append-only lines numbered from 0, stored and served in chunks.

A chunk (`LogChunk` row) holds consecutive lines of one stream as one JSON
array with one time, the time of its first line. A worker's batch arrives as
runs of lines (`cast.protocol.logs.LogBatch`) and each run is stored as one
row; a read answers rows as they are (`LogPage`), sliced only at its two ends,
so offsets stay exact per line. Nothing here walks a batch or a read line by
line in Python: lines are counted, measured, joined and (de)serialised by
`len`, `str.join` and `json`, in C. Only a batch holding an over-long line or
crossing the cap takes a per-line path, once.

A route answers a page as the chunks' stored arrays spliced into its JSON
(`page_json`): a line is decoded only where a page slices a chunk. A
follower's later reads take the run's `LogState` (its size, status and archive),
not the run.

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
from typing import NamedTuple

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


def append(session: Session, run: Run, rows: Rows, *, counters: tuple[str, ...] = ()) -> None:
    """Store runs of lines at the end of `run`'s log, one chunk each. The
    `counters` (attributes of `run` it changed) are written by the same UPDATE
    that reserves the offsets, so no flush of the run follows."""
    rows = [row for row in rows if row[1]]
    changed = {name: getattr(run, name) for name in counters}
    if not rows:
        if changed:
            session.execute(update(Run).where(Run.id == run.id).values(**changed)
                            .execution_options(synchronize_session=False))
            _committed(run, changed)
        return
    count = sum(len(lines) for _, lines, _ in rows)
    # Offsets are reserved in SQL, not from the in-memory run, so they stay
    # right whatever the session holds.
    end = session.execute(
        update(Run).where(Run.id == run.id).values(log_size=Run.log_size + count, **changed)
        .returning(Run.log_size).execution_options(synchronize_session=False)
    ).scalar_one()
    _committed(run, changed)
    insert_chunks(session, run_id=run.id, end=end, rows=rows)
    set_committed_value(run, "log_size", end)
    events.changed(session, events.run_key(run.id))


def insert_chunks(session: Session, *, run_id: int, end: int, rows: Rows) -> None:
    """Store `rows` (none empty) as chunks ending at offset `end`, whose
    offsets the caller reserved by moving the run's `log_size` to `end` (a
    status change does it in its own UPDATE of the run)."""
    offset, chunks = end - sum(len(lines) for _, lines, _ in rows), []
    for stream, lines, time in rows:
        chunks.append({"run_id": run_id, "first_offset": offset, "count": len(lines), "stream": stream,
                       "time": time, "lines": _lines_json(lines)})
        offset += len(lines)
    session.execute(_INSERT_CHUNK, chunks if len(chunks) > 1 else chunks[0])


# Built once, on the table (no ORM bulk insert): every status change runs it.
_INSERT_CHUNK = insert(LogChunk.__table__)


def _committed(run: Run, values: dict) -> None:
    """`values` as written to `run`'s row: no longer changes a flush would write again."""
    for name, value in values.items():
        set_committed_value(run, name, value)


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


def _size(lines: list[str]) -> int:
    """Bytes of `lines` as the log's text: UTF-8, a newline each."""
    return len("\n".join(lines).encode("utf-8", "surrogatepass")) + 1


# The run's columns a worker's batch changes besides its size (batches.admit sets the seq mark).
_WORKER_COUNTERS = ("worker_log_seq", "worker_log_lines", "log_bytes", "log_truncated")


class WorkerBatch(NamedTuple):
    """A worker's batch made ready to store: its rows (those an earlier try
    stored and those past the cap left out) and the run's counters as storing
    them leaves them, for the UPDATE that reserves their offsets."""

    rows: Rows
    counters: dict


def append_worker_batch(session: Session, *, run_id: int, lease_token: str, seq: int, runs: list,
                        settings: Settings, held: Run | None = None) -> tuple[int, bool]:
    """Store a worker's batch (`runs` have .stream/.lines/.time); (next_offset,
    truncated). `held`: see `batches.admit`."""
    run, batch = prepare_worker_batch(session, run_id=run_id, lease_token=lease_token, seq=seq, runs=runs,
                                      settings=settings, held=held)
    store_worker_batch(session, run, batch)
    return run.log_size, run.log_truncated


def store_worker_batch(session: Session, run: Run, batch: WorkerBatch) -> None:
    """Store a prepared batch with no status change to carry it: its rows and
    the counters it moved in one UPDATE of the run (set again on `run`, which
    a refused change since may have read afresh)."""
    for name, value in batch.counters.items():
        setattr(run, name, value)
    append(session, run, batch.rows, counters=_WORKER_COUNTERS)


def prepare_worker_batch(session: Session, *, run_id: int, lease_token: str, seq: int, runs: list,
                         settings: Settings, held: Run | None = None) -> tuple[Run, WorkerBatch]:
    """The run and a worker's batch ready to store (`append_worker_batch`, or
    a status change that stores it ahead of its stage lines): the `seq`
    dedup, lines split at the cap on a line's length, the per-run byte cap.
    The run's counters are moved in memory only."""
    run, skip = batches.admit(session, run_id=run_id, lease_token=lease_token, seq=seq,
                              count=sum(len(r.lines) for r in runs), mark="worker_log_seq",
                              columns=_WORKER_COUNTERS + ("log_size",), held=held)
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
    return run, WorkerBatch([row for row in rows if row[1]], {name: getattr(run, name) for name in _WORKER_COUNTERS})


def iso_time(time: datetime) -> str:
    """A stored time as pages and archives carry it: ISO 8601, UTC, with a Z."""
    return (time if time.tzinfo else time.replace(tzinfo=timezone.utc)).isoformat().replace("+00:00", "Z")


def read(session: Session, *, run: "Run | LogState", offset: int, limit: int, encoded: bool = False) -> dict:
    """A page `{chunks, next_offset, finished}` (`cast.protocol.logs.LogPage`) of
    at most `limit` lines from `offset`; a negative offset counts back from the
    end. A page ends early past MAX_READ_BYTES of line text. With `encoded`,
    each chunk's lines stay the JSON text they are stored as (see `page_json`)."""
    start, end = bounds(run, offset=offset, limit=limit)
    # One statement: every chunk from the one holding `start` (the last to begin
    # at or before it) to the last that begins before `end`.
    first = (select(func.coalesce(func.max(LogChunk.first_offset), 0))
             .where(LogChunk.run_id == run.id, LogChunk.first_offset <= start).scalar_subquery())
    rows = session.execute(
        select(LogChunk.first_offset, LogChunk.time, LogChunk.stream, LogChunk.lines, LogChunk.count)
        .where(LogChunk.run_id == run.id, LogChunk.first_offset >= first, LogChunk.first_offset < end)
        .order_by(LogChunk.first_offset)
    )
    try:
        return page(((first_offset, iso_time(time), stream, lines, count)
                     for first_offset, time, stream, lines, count in rows),
                    run=run, start=start, end=end, encoded=encoded)
    finally:
        rows.close()


class LogState(NamedTuple):
    """What a read needs of a run, without loading the run: a follower's later reads."""

    id: int
    status: str  # a RunStatus value, as the column holds it
    log_size: int
    log_archive: str | None


def log_state(session: Session, run_id: int) -> LogState | None:
    row = session.execute(select(Run.id, Run.status, Run.log_size, Run.log_archive).where(Run.id == run_id)).first()
    return None if row is None else LogState(*row)


def bounds(run: Run, *, offset: int, limit: int) -> tuple[int, int]:
    """The lines `start .. end - 1` a read from `offset` of at most `limit` lines covers."""
    size = run.log_size
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    return start, min(size, start + min(limit, MAX_READ_LINES))


def page(rows: Iterable[tuple[int, str, str, str, int | None]], *, run: "Run | LogState", start: int, end: int,
         encoded: bool = False) -> dict:
    """The page of lines `start .. end - 1` out of stored chunks `(first offset,
    ISO time, stream, lines as JSON text, count of lines or None)`: the chunk
    holding `start`, then those that begin before `end`, in order, from the
    database or an archive alike. With `encoded`, a chunk's lines are JSON text:
    a whole chunk's (its count known) as stored, never decoded, a sliced one's
    encoded again."""
    chunks, at, read_bytes = [], start, 0
    for first_offset, time, stream, lines, count in rows:
        if read_bytes >= MAX_READ_BYTES:
            break
        read_bytes += len(lines)
        if encoded and count is not None and first_offset == at and at + count <= end:
            if count:
                chunks.append({"offset": at, "stream": stream, "time": time, "lines": lines})
                at += count
            continue
        texts = _lines_of(lines)
        if first_offset < at or first_offset + len(texts) > end:
            texts = texts[at - first_offset:end - first_offset]
        if texts:
            chunks.append({"offset": at, "stream": stream, "time": time,
                           "lines": _lines_json(texts) if encoded else texts})
            at += len(texts)
    return {"chunks": chunks, "next_offset": at, "finished": is_final(run.status) and at >= run.log_size}


def page_json(page: dict) -> bytes:
    """A page read `encoded` as the JSON a route answers: each chunk's stored
    array spliced in as it is, so a line is neither decoded nor encoded again."""
    parts = []
    for chunk in page["chunks"]:
        head = orjson.dumps({"offset": chunk["offset"], "stream": chunk["stream"], "time": chunk["time"]})
        parts.append(b"%s,\"lines\":%s}" % (head[:-1], chunk["lines"].encode()))
    rest = {key: value for key, value in page.items() if key != "chunks"}
    return b'{"chunks":[%s],%s' % (b",".join(parts), orjson.dumps(rest)[1:])
