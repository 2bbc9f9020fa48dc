"""Finished runs' logs moved out of the database into the store, and read back by ranges.

`CAST_LOG_ARCHIVE_AFTER_SECONDS` after a run became final, its log's chunk
rows are written as NDJSON, one object per chunk in offset order, its keys
always in this order and `lines` last, as the database held them:

    {"offset": 0, "stream": "cast", "time": "2026-12-01T00:41:07.25Z", "lines": ["..."]}

with a sparse index beside it (`<token>.index.json`: `{"lines": N, "points":
[[line offset, byte offset], ...]}`, the start of a chunk about every
INDEX_EVERY bytes). They go to the object store (`logs/<run id>/<token>.ndjson`
under its prefix) or, without one, to files under the data dir
(`logs/<run id>/<token>.ndjson`). Then one transaction sets `runs.log_archive`
to that key (only if it is still unset and the log still that long) and
deletes the run's chunk rows: rows never go without the key, and a crash
before it leaves objects no run names, which the next archive of the run
removes. Freeing a run's outputs (`cast rm`, prune, retention) keeps its log,
archived or not, as it keeps the rest of its record.

On PostgreSQL a pass runs under an advisory lock (`Database.exclusive`), so
one replica at a time archives; archivers that race anyway each write under
their own token and only one claim wins, the others' objects removed.

`read` answers the same page as the database would (`logs.page`): from the
index's point at or before the first line asked, the archive is read only as
far as the page needs, so no page request reads a long log whole.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select, update

from cast.protocol.status import FINAL_STATUSES
from cast.server.db import Database
from cast.server.errors import ArchiveMissing
from cast.server.models import LogChunk, Run, utcnow
from cast.server.services import logs
from cast.server.services.objectstore import ObjectMissing, ObjectStore, object_store
from cast.server.settings import Settings

log = logging.getLogger(__name__)

_FINAL = [s.value for s in FINAL_STATUSES]
# Bytes of archive between two index points: a read reads at most this much
# before the first line it answers.
INDEX_EVERY = 256 << 10
# Runs one pass archives at most; the next pass takes the rest.
PASS_RUNS = 100
_READ_CHUNK = 1 << 20
_LINES = b', "lines": '
_SUFFIX, _INDEX_SUFFIX = ".ndjson", ".index.json"


# --- where archives live ------------------------------------------------------------

@dataclass(frozen=True)
class _Files:
    """The local filesystem store: keys are paths under `root` (the data dir's logs folder)."""

    root: Path

    def folder(self, run_id: int) -> str:
        return f"{int(run_id)}/"

    def put(self, key: str, path: Path, sha256: str) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        # On disk before the rows that it replaces are deleted.
        with open(path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(path, dest)
        folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def chunks(self, key: str, start: int) -> Iterator[bytes]:
        try:
            source = open(self.root / key, "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        with source:
            source.seek(start)
            while data := source.read(_READ_CHUNK):
                yield data

    def keys(self, run_id: int) -> list[str]:
        folder = self.root / self.folder(run_id)
        return sorted(f"{self.folder(run_id)}{p.name}" for p in folder.iterdir()) if folder.is_dir() else []

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Objects:
    """The S3 object store (services/objectstore.py): keys are its keys."""

    store: ObjectStore

    def folder(self, run_id: int) -> str:
        return self.store.log_prefix(run_id)

    def put(self, key: str, path: Path, sha256: str) -> None:
        self.store.put_file(key, path, sha256)

    def chunks(self, key: str, start: int) -> Iterator[bytes]:
        body = self.store.open(key, start)
        try:
            yield from body.iter_chunks(_READ_CHUNK)
        finally:
            body.close()

    def keys(self, run_id: int) -> list[str]:
        return self.store.keys(self.folder(run_id))

    def remove(self, keys: list[str]) -> None:
        self.store.delete_keys(keys)


def _store(settings: Settings) -> _Files | _Objects:
    store = object_store(settings)
    return _Files(settings.log_archive_dir) if store is None else _Objects(store)


def _index_key(key: str) -> str:
    return key.removesuffix(_SUFFIX) + _INDEX_SUFFIX


# --- archiving ----------------------------------------------------------------------

@dataclass(frozen=True)
class Archive:
    """A run's log written to the store under `key` and not yet recorded: `lines` long."""

    run_id: int
    key: str
    lines: int


def write(database: Database, settings: Settings, *, run_id: int) -> Archive | None:
    """The first step: run `run_id`'s log written to the store under a key of
    its own. None when the run is not final or is archived already, or when
    its rows do not hold its whole log (nothing written then)."""
    store = _store(settings)
    key = f"{store.folder(run_id)}{secrets.token_hex(8)}{_SUFFIX}"
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=settings.tmp_dir, prefix="log-", suffix=_SUFFIX)
    body = Path(name)
    index = body.with_suffix(_INDEX_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out, database.transaction(write=False) as session:
            run = session.get(Run, run_id)
            if run is None or run.log_archive is not None or run.status not in _FINAL:
                return None
            written = _write_ndjson(session, run, out)
        if written is None:
            log.warning("run %d's log rows do not hold its %d lines: not archived", run_id, run.log_size)
            return None
        sha256, points = written
        index.write_text(json.dumps({"lines": run.log_size, "points": points}))
        store.put(_index_key(key), index, hashlib.sha256(index.read_bytes()).hexdigest())
        store.put(key, body, sha256)
    finally:
        body.unlink(missing_ok=True)
        index.unlink(missing_ok=True)
    return Archive(run_id=run_id, key=key, lines=run.log_size)


def _write_ndjson(session, run: Run, out) -> tuple[str, list[list[int]]] | None:
    """The run's chunks as NDJSON into `out`: (its sha256, its index points),
    or None if the rows leave a gap or stop short of the log's size."""
    rows = session.execute(
        select(LogChunk.first_offset, LogChunk.count, LogChunk.time, LogChunk.stream, LogChunk.lines)
        .where(LogChunk.run_id == run.id).order_by(LogChunk.first_offset)
        .execution_options(yield_per=1000)
    )
    digest, points, at, written = hashlib.sha256(), [], 0, 0
    try:
        for first_offset, count, time, stream, lines in rows:
            if first_offset != at:
                return None
            if not points or written - points[-1][1] >= INDEX_EVERY:
                points.append([first_offset, written])
            # The stored JSON text of the lines as it is: no line is decoded here.
            line = b'{"offset": %d, "stream": %s, "time": %s, "lines": %s}\n' % (
                first_offset, json.dumps(stream).encode(), json.dumps(logs.iso_time(time)).encode(),
                lines.encode("utf-8"))
            out.write(line)
            digest.update(line)
            written += len(line)
            at += count
    finally:
        rows.close()
    return (digest.hexdigest(), points) if at == run.log_size else None


def record(database: Database, settings: Settings, archive: Archive) -> bool:
    """The second step: the run names `archive` and its chunk rows go, in one
    transaction, unless it was archived meanwhile or its log grew; then the
    objects that lost (this archive's, or earlier ones' no run names) are removed."""
    with database.transaction() as session:
        claimed = session.execute(
            update(Run).where(Run.id == archive.run_id, Run.log_archive.is_(None), Run.status.in_(_FINAL),
                              Run.log_size == archive.lines)
            .values(log_archive=archive.key).execution_options(synchronize_session=False)
        ).rowcount == 1
        if claimed:
            session.execute(delete(LogChunk).where(LogChunk.run_id == archive.run_id))
    store = _store(settings)
    mine = {archive.key, _index_key(archive.key)}
    if claimed:
        store.remove([key for key in store.keys(archive.run_id) if key not in mine])
    else:
        store.remove(sorted(mine))
    return claimed


def archive_run(database: Database, settings: Settings, *, run_id: int) -> bool:
    """Archive run `run_id`'s log (`write`, then `record`); whether this call did."""
    archive = write(database, settings, run_id=run_id)
    return archive is not None and record(database, settings, archive)


def due(database: Database, settings: Settings) -> list[int]:
    """Final runs not archived that ended more than CAST_LOG_ARCHIVE_AFTER_SECONDS ago, oldest first."""
    cutoff = utcnow() - timedelta(seconds=settings.log_archive_after_seconds)
    with database.transaction(write=False) as session:
        return list(session.scalars(
            select(Run.id).where(Run.status.in_(_FINAL), Run.log_archive.is_(None), Run.finished_at < cutoff)
            .order_by(Run.finished_at, Run.id).limit(PASS_RUNS)
        ))


def archive_pass(database: Database, settings: Settings) -> list[int]:
    """One pass of the periodic job: the runs whose logs it archived."""
    return [run_id for run_id in due(database, settings) if archive_run(database, settings, run_id=run_id)]


# --- reading ------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _index(store: _Files | _Objects, key: str) -> tuple[list[int], list[int]]:
    """An archive's index points as (line offsets, byte offsets); archives never change, so it is kept."""
    with closing(store.chunks(_index_key(key), 0)) as pieces:
        points = json.loads(b"".join(pieces))["points"]
    return [line for line, _ in points], [byte for _, byte in points]


def read(settings: Settings, *, run: Run | logs.LogState, offset: int, limit: int, encoded: bool = False) -> dict:
    """The page `logs.read` would answer, read from the run's archive;
    ArchiveMissing if the store lost the archive or its index."""
    start, end = logs.bounds(run, offset=offset, limit=limit)
    store = _store(settings)
    try:
        lines_at, bytes_at = _index(store, run.log_archive)
        point = bisect.bisect_right(lines_at, start) - 1
        with closing(_rows(store, run.log_archive, at=bytes_at[point] if point >= 0 else 0,
                           start=start, end=end)) as rows:
            return logs.page(rows, run=run, start=start, end=end, encoded=encoded)
    except ObjectMissing as missing:
        log.error("run %d's archived log names %s, which the store does not hold", run.id, missing)
        raise ArchiveMissing(run.id) from None


def _rows(store: _Files | _Objects, key: str, *, at: int, start: int, end: int) -> Iterator[tuple]:
    """The archive's chunks read from byte `at` as `logs.page` takes them: the
    one holding `start`, then those that begin before `end` (their line counts
    unknown: the page decodes them)."""
    held = None
    with closing(_records(store, key, at)) as records:
        for offset, time, stream, lines in records:
            if offset <= start:
                held = (offset, time, stream, lines)
                continue
            if held is not None:
                if held[0] < end:
                    yield held[:3] + (held[3].decode("utf-8"), None)
                held = None
            if offset >= end:
                return
            yield offset, time, stream, lines.decode("utf-8"), None
    if held is not None and held[0] < end:
        yield held[:3] + (held[3].decode("utf-8"), None)


def _records(store: _Files | _Objects, key: str, at: int) -> Iterator[tuple[int, str, str, bytes]]:
    """(offset, time, stream, lines as JSON bytes) of each NDJSON line from byte `at`;
    only the small head of a line is parsed here."""
    pending: list[bytes] = []
    with closing(store.chunks(key, at)) as pieces:
        for piece in pieces:
            begin = 0
            while (newline := piece.find(b"\n", begin)) >= 0:
                pending.append(piece[begin:newline])
                head, _, lines = b"".join(pending).partition(_LINES)
                pending = []
                begin = newline + 1
                meta = json.loads(head + b"}")
                yield meta["offset"], meta["time"], meta["stream"], lines[:-1]
            pending.append(piece[begin:])
