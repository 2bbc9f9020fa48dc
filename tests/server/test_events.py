"""cast.server.events: waiters wake when a change commits, not before and not on rollback."""

from __future__ import annotations

import asyncio

from cast.server import events
from cast.server.db import Database


def test_waiters_wake_after_commit_only(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")

    async def scenario():
        with database.notifier.subscribe(events.QUEUE) as waiter:
            with database.session(write=True) as session:
                events.changed(session, events.QUEUE)
                session.rollback()
            assert not await waiter.wait(0.05)
            with database.session(write=True) as session:
                events.changed(session, events.QUEUE)
                assert not await waiter.wait(0.05)  # not yet committed
                await asyncio.to_thread(session.commit)  # commits usually happen in worker threads
            assert await waiter.wait(1)
            assert not await waiter.wait(0.05)  # one change, one wake-up

    asyncio.run(scenario())


def test_close_wakes_every_waiter_and_every_later_wait(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")

    async def scenario():
        with database.notifier.subscribe(events.QUEUE) as queue, \
                database.notifier.subscribe(events.run_key(1)) as run:
            waits = asyncio.gather(queue.wait(30), run.wait(30))
            await asyncio.sleep(0.05)
            database.notifier.close()
            assert await asyncio.wait_for(waits, 1) == [True, True]
            assert database.notifier.closed
            assert await asyncio.wait_for(queue.wait(30), 1)  # no later wait blocks
        with database.notifier.subscribe(events.QUEUE) as late:
            assert await asyncio.wait_for(late.wait(30), 1)

    asyncio.run(scenario())
