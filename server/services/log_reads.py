"""A user's reads of a run's log: one page, the follow stream, the text download.

The one module that reads a run's log for a user. `read_page` is one read in
the caller's session. `follow` and `download` run
for as long as the client reads, so they take the Database and read each chunk
in its own short read transaction: nothing is held while they wait or send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from cast.protocol.logs import MAX_READ_LINES

from sqlalchemy.orm import Session

from cast.server import events
from cast.server.db import Database
from cast.server.models import User
from cast.server.services import logs, runs

# Lines a follower's read asks for: a live follower gets what is new at once.
BATCH = 10_000


def read_page(session: Session, *, run_id: int, viewer: User, offset: int, limit: int) -> dict:
    """`{chunks, next_offset, finished}` of a run `viewer` may see (see `logs.read`)."""
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    return logs.read(session, run=run, offset=offset, limit=limit)


def _read(database: Database, *, run_id: int, viewer: User, offset: int, limit: int = BATCH) -> dict:
    with database.transaction(write=False) as session:
        return read_page(session, run_id=run_id, viewer=viewer, offset=offset, limit=limit)


async def follow(database: Database, *, run_id: int, viewer: User, offset: int) -> AsyncIterator[dict]:
    """The chunks from `offset` on as they are written (`events.follow_run`)."""
    return await events.follow_run(
        database.notifier, run_id=run_id, offset=offset, items="chunks",
        read=lambda at: _read(database, run_id=run_id, viewer=viewer, offset=at),
    )


def download(database: Database, *, run_id: int, viewer: User) -> Iterator[bytes]:
    """The log as text, a line each, in pieces (a page each); an unknown run raises here."""
    # Pages as large as a read allows: nobody waits on the first line here.
    first = _read(database, run_id=run_id, viewer=viewer, offset=0, limit=MAX_READ_LINES)

    def pieces() -> Iterator[bytes]:
        page = first
        while page["chunks"]:
            text = "\n".join("\n".join(chunk["lines"]) for chunk in page["chunks"]) + "\n"
            yield text.encode("utf-8", "surrogateescape")
            page = _read(database, run_id=run_id, viewer=viewer, offset=page["next_offset"], limit=MAX_READ_LINES)

    return pieces()
