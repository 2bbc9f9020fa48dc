"""A user's reads of a run's log: one page, the follow stream, the text download.

The one module that reads a run's log for a user, from the database's chunks
or, once archived (`runs.log_archive`), from the archive in the store
(services/log_archive.py), the same pages either way. `read_page` is one read
in the caller's session. `follow` and `download` run
for as long as the client reads, so they take the Database and read each chunk
in its own short read transaction: nothing is held while they wait or send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from sqlalchemy.orm import Session

from cast.protocol.logs import MAX_READ_LINES
from cast.protocol.status import is_final
from cast.server import events
from cast.server.db import Database
from cast.server.models import User
from cast.server.services import log_archive, logs, runs
from cast.server.settings import Settings

# Lines a follower's read asks for: a live follower gets what is new at once.
BATCH = 10_000


def read_page(session: Session, *, settings: Settings, run_id: int, viewer: User, offset: int, limit: int) -> dict:
    """`{chunks, next_offset, finished}` of a run `viewer` may see (see `logs.read`)."""
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    if run.log_archive is None:
        page = logs.read(session, run=run, offset=offset, limit=limit)
        if page["chunks"] or page["finished"] or not is_final(run.status):
            return page
        # No rows where a final run has lines: on PostgreSQL each statement sees
        # the latest commit, and an archive committed between the two reads.
        session.refresh(run)
        if run.log_archive is None:
            return page
    return log_archive.read(settings, run=run, offset=offset, limit=limit)


def _read(database: Database, settings: Settings, *, run_id: int, viewer: User, offset: int,
          limit: int = BATCH) -> dict:
    with database.transaction(write=False) as session:
        page = read_page(session, settings=settings, run_id=run_id, viewer=viewer, offset=offset, limit=limit)
        # Whether the log held more than the page (a follower reads again at once, see events.follow_run).
        page["more"] = page["next_offset"] < runs.visible_run(session, run_id=run_id, viewer=viewer).log_size
        return page


async def follow(database: Database, *, settings: Settings, run_id: int, viewer: User,
                 offset: int) -> AsyncIterator[dict]:
    """The chunks from `offset` on as they are written (`events.follow_run`)."""
    return await events.follow_run(
        database.notifier, run_id=run_id, offset=offset, items="chunks",
        read=lambda at: _read(database, settings, run_id=run_id, viewer=viewer, offset=at),
    )


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
                         limit=MAX_READ_LINES)

    return pieces()
