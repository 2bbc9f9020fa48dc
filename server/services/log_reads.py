"""A user's reads of a run's log: one chunk, the follow stream, the text download.

`read_chunk` is one read in the caller's session. `follow` and `download` run
for as long as the client reads, so they take the Database and read each chunk
in its own short read transaction: nothing is held while they wait or send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from sqlalchemy.orm import Session

from cast.server import events
from cast.server.db import Database
from cast.server.models import User
from cast.server.services import logs, runs

BATCH = 1000


def read_chunk(session: Session, *, run_id: int, viewer: User, offset: int, limit: int) -> dict:
    """`{entries, next_offset, finished}` of a run `viewer` may see (see `logs.read`)."""
    run = runs.visible_run(session, run_id=run_id, viewer=viewer)
    return logs.read(session, run=run, offset=offset, limit=limit)


def _read(database: Database, *, run_id: int, viewer: User, offset: int, limit: int = BATCH) -> dict:
    with database.transaction(write=False) as session:
        return read_chunk(session, run_id=run_id, viewer=viewer, offset=offset, limit=limit)


async def follow(database: Database, *, run_id: int, viewer: User, offset: int) -> AsyncIterator[dict]:
    """The chunks from `offset` on as they are written (`events.follow_run`)."""
    return await events.follow_run(
        database.notifier, run_id=run_id, offset=offset, items="entries",
        read=lambda at: _read(database, run_id=run_id, viewer=viewer, offset=at),
    )


def download(database: Database, *, run_id: int, viewer: User) -> Iterator[bytes]:
    """The log as text, one line per entry, in pieces; an unknown run raises here."""
    # Pages as large as a read allows: nobody waits on the first line here.
    first = _read(database, run_id=run_id, viewer=viewer, offset=0, limit=logs.MAX_READ)

    def pieces() -> Iterator[bytes]:
        chunk = first
        while chunk["entries"]:
            yield "".join(entry["text"] + "\n" for entry in chunk["entries"]).encode("utf-8", "surrogateescape")
            chunk = _read(database, run_id=run_id, viewer=viewer, offset=chunk["next_offset"], limit=logs.MAX_READ)

    return pieces()
