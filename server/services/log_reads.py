"""A user's reads of a run's log: one page, the follow stream, the text download.

The one module that reads a run's log for a user, from the database's chunks
or, once archived (`runs.log_archive`), from the archive in the store
(services/log_archive.py), the same pages either way; the follow stream's
finished page with the run's outcome. `read_page` is one read
in the caller's session. `follow` and `download` run
for as long as the client reads, so they take the Database and read each chunk
in its own short read transaction: nothing is held while they wait or send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from cast.protocol.logs import MAX_BATCH_LINES, MAX_READ_LINES, RunOutcome
from cast.protocol.status import RunStatus, is_final
from cast.server import events
from cast.server.db import Database
from cast.server.errors import RunNotFound
from cast.server.models import Run, User
from cast.server.services import log_archive, logs, runs
from cast.server.settings import Settings

# Lines a follower's read asks for: a live follower gets what is new at once,
# and a worker's batch (one chunk, at most MAX_BATCH_LINES) whole, so its
# lines are sent as stored, never decoded to slice it.
BATCH = MAX_BATCH_LINES


def read_page(session: Session, *, settings: Settings, run_id: int, viewer: User, offset: int, limit: int,
              encoded: bool = False) -> dict:
    """`{chunks, next_offset, finished}` of a run `viewer` may see (see `logs.read`)."""
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    return _page(session, settings, run, offset=offset, limit=limit, encoded=encoded)


def _page(session: Session, settings: Settings, run: Run | logs.LogState, *, offset: int, limit: int,
          encoded: bool) -> dict:
    if run.log_archive is None:
        page = logs.read(session, run=run, offset=offset, limit=limit, encoded=encoded)
        if page["chunks"] or page["finished"] or not is_final(run.status):
            return page
        # No rows where a final run has lines: on PostgreSQL each statement sees
        # the latest commit, and an archive committed between the two reads.
        run = logs.log_state(session, run.id) or run
        if run.log_archive is None:
            return page
    return log_archive.read(settings, run=run, offset=offset, limit=limit, encoded=encoded)


def _read(database: Database, settings: Settings, *, run_id: int, viewer: User, offset: int,
          limit: int = BATCH, seen: bool = False, encoded: bool = False, outcome: bool = False) -> dict:
    """One page in its own read transaction. Once `seen` (an earlier read of
    this stream found the run visible to `viewer`, and a run keeps its owner)
    only the run's log state is read, not the run: a follower of a busy run
    reads several times a second. With `outcome`, a finished page carries the
    run's (`RunOutcome`), read in the same transaction."""
    with database.transaction(write=False) as session:
        if seen:
            run = logs.log_state(session, run_id)
            if run is None:
                raise RunNotFound(run_id)
        else:
            run = runs.visible_run(session, run_id=run_id, viewer=viewer)
        page = _page(session, settings, run, offset=offset, limit=limit, encoded=encoded)
        # Whether the log held more than the page (a follower reads again at once, see events.follow_run).
        page["more"] = page["next_offset"] < run.log_size
        if outcome and page["finished"]:
            page["outcome"] = _outcome(session, run_id).to_dict()
        return page


def _outcome(session: Session, run_id: int) -> RunOutcome:
    row = session.execute(select(Run.status, Run.exit_code, Run.reason, Run.created_at, Run.finished_at)
                          .where(Run.id == run_id)).one()
    return RunOutcome(status=RunStatus(row.status), exit_code=row.exit_code, reason=row.reason,
                      created_at=logs.iso_time(row.created_at),
                      finished_at=row.finished_at and logs.iso_time(row.finished_at))


async def follow(database: Database, *, settings: Settings, run_id: int, viewer: User,
                 offset: int) -> AsyncIterator[dict]:
    """The chunks from `offset` on as they are written (`events.follow_run`),
    each page `encoded` (`logs.page_json`); the last, finished page carries
    the run's outcome, so a follower needs no request for it."""
    reads = 0

    def read(at: int) -> dict:  # one at a time: the stream awaits each before the next
        nonlocal reads
        page = _read(database, settings, run_id=run_id, viewer=viewer, offset=at, seen=reads > 0, encoded=True,
                     outcome=True)
        reads += 1
        return page

    return await events.follow_run(database.notifier, run_id=run_id, offset=offset, items="chunks", read=read)


def download(database: Database, *, settings: Settings, run_id: int, viewer: User) -> Iterator[bytes]:
    """The log as text, a line each, in pieces (a page each); an unknown run raises here."""
    # Pages as large as a read allows: nobody waits on the first line here.
    first = _read(database, settings, run_id=run_id, viewer=viewer, offset=0, limit=MAX_READ_LINES)

    def pieces() -> Iterator[bytes]:
        page = first
        while page["chunks"]:
            text = "\n".join("\n".join(chunk["lines"]) for chunk in page["chunks"]) + "\n"
            yield text.encode("utf-8", "surrogateescape")
            page = _read(database, settings, run_id=run_id, viewer=viewer, offset=page["next_offset"],
                         limit=MAX_READ_LINES, seen=True)

    return pieces()
