"""cast.server.events: waiters wake when a change commits, not before and not on rollback."""

from __future__ import annotations

import asyncio

from cast.server import events
from cast.server.db import Database


def test_waiters_wake_after_commit_only(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")

    async def scenario():
        with database.notifier.subscribe(events.run_key(1)) as waiter:
            with database.session(write=True) as session:
                events.changed(session, events.run_key(1))
                session.rollback()
            assert not await waiter.wait(0.05)
            with database.session(write=True) as session:
                events.changed(session, events.run_key(1))
                assert not await waiter.wait(0.05)  # not yet committed
                await asyncio.to_thread(session.commit)  # commits usually happen in worker threads
            assert await waiter.wait(1)
            assert not await waiter.wait(0.05)  # one change, one wake-up

    asyncio.run(scenario())


def test_close_wakes_every_waiter_and_every_later_wait(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")

    async def scenario():
        with database.notifier.wait_for_run(0) as queue, \
                database.notifier.subscribe(events.run_key(1)) as run:
            waits = asyncio.gather(queue.wait(30), run.wait(30))
            await asyncio.sleep(0.05)
            database.notifier.close()
            assert await asyncio.wait_for(waits, 1) == [True, True]
            assert database.notifier.closed
            assert await asyncio.wait_for(queue.wait(30), 1)  # no later wait blocks
        with database.notifier.wait_for_run(0) as late:
            assert await asyncio.wait_for(late.wait(30), 1)

    asyncio.run(scenario())


def test_a_queued_run_wakes_one_waiter_the_best_fitting_longest_waiting():
    async def scenario():
        notifier = events.Notifier()
        with notifier.wait_for_run(2) as gpus, notifier.wait_for_run(0) as first, \
                notifier.wait_for_run(0) as second:
            waits = {name: asyncio.ensure_future(waiter.wait(30))
                     for name, waiter in (("gpus", gpus), ("first", first), ("second", second))}
            await asyncio.sleep(0.01)

            async def woken() -> set[str]:
                await asyncio.sleep(0.05)
                return {name for name, wait in waits.items() if wait.done()}

            notifier.notify(events.queue_key(1))  # only the waiter with 2 GPUs fits
            assert await woken() == {"gpus"}
            notifier.notify(events.QUEUE)  # a CPU run: the CPU waiter that waited longest
            assert await woken() == {"gpus", "first"}
            notifier.notify(events.queue_key(3))  # fits no one: wakes no one
            assert await woken() == {"gpus", "first"}
            notifier.notify(events.QUEUE, events.run_key(5))
            assert await woken() == {"gpus", "first", "second"}

    asyncio.run(scenario())


def test_a_wake_up_no_claim_attempt_served_is_passed_on_when_its_waiter_leaves():
    async def scenario():
        notifier = events.Notifier()
        with notifier.wait_for_run(0) as stays:
            with notifier.wait_for_run(0) as leaves:
                assert notifier.waiting()
                # `leaves` began waiting after `stays`, so this wakes `stays`; it served it.
                notifier.notify(events.QUEUE)
                assert await stays.wait(1)
                stays.served(stays.wakes())
                waiting = asyncio.ensure_future(stays.wait(30))
                notifier.notify(events.QUEUE)  # `leaves` now: it leaves without trying a claim
                assert await leaves.wait(1)
                await asyncio.sleep(0.05)
                assert not waiting.done()
            assert await asyncio.wait_for(waiting, 1)  # passed on as it left
            assert stays.wakes() == 1

    asyncio.run(scenario())


# --- across server processes on one PostgreSQL (the suite's real server) ---

def _replicas(start_server, postgres_databases, tmp_path):
    """Two server processes on one fresh PostgreSQL database, and clients of
    each (tokens live in the database: the first replica's serve both)."""
    import httpx

    url = postgres_databases()
    a = start_server(data_dir=tmp_path / "a", env={"CAST_DATABASE_URL": url})
    b = start_server(data_dir=tmp_path / "b", env={"CAST_DATABASE_URL": url})

    def clients(server, token):
        return httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                            timeout=60)

    return (clients(a, a.admin_token), clients(a, a.worker_token),
            clients(b, a.admin_token), clients(b, a.worker_token))


def test_a_follower_on_one_replica_sees_a_change_made_through_another_at_once(start_server, postgres_databases,
                                                                           tmp_path):
    import json
    import threading
    import time

    user_a, _, user_b, worker_b = _replicas(start_server, postgres_databases, tmp_path)
    run_id = user_b.post("/runs", json={"command": "true"}).json()["id"]
    worker_id = worker_b.post("/workers", json={"name": "w", "executor": "local", "gpus": []}).json()["id"]
    pages: list[tuple[float, int]] = []

    def follow() -> None:
        with user_a.stream("GET", f"/runs/{run_id}/logs/follow", timeout=60) as stream:
            for line in stream.iter_lines():
                if line.strip():
                    pages.append((time.monotonic(), json.loads(line)["next_offset"]))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    deadline = time.monotonic() + 20
    while not pages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pages, "the follower got no first page"
    first_offset = pages[0][1]
    time.sleep(0.5)  # the follower on A is waiting now

    # The lease through B writes the run's "building" line: A's follower has it within a second.
    leased_at = time.monotonic()
    lease = worker_b.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 0}).json()
    while not any(offset > first_offset for _, offset in pages) and time.monotonic() < leased_at + 10:
        time.sleep(0.01)
    arrived = next(at for at, offset in pages if offset > first_offset)
    assert arrived - leased_at < 1.0

    for status in ("mounting", "running", "saving", "pushing", "complete"):
        assert worker_b.post(f"/runs/{run_id}/status", json={
            "lease_token": lease["lease_token"], "status": status,
            **({"exit_code": 0} if status == "complete" else {})}).status_code == 200
    follower.join(timeout=30)
    assert not follower.is_alive(), "the follow stream did not end with the run"


def test_a_worker_long_polling_one_replica_gets_a_run_submitted_through_another_at_once(
        start_server, postgres_databases, tmp_path):
    import threading
    import time

    _, worker_a, user_b, _ = _replicas(start_server, postgres_databases, tmp_path)
    worker_id = worker_a.post("/workers", json={"name": "w", "executor": "local", "gpus": []}).json()["id"]
    answers: list[tuple[float, dict]] = []

    def poll() -> None:
        answer = worker_a.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 25})
        answers.append((time.monotonic(), answer.json() if answer.status_code == 200 else {}))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(1.0)  # the long poll on A is waiting now
    submitted_at = time.monotonic()
    run_id = user_b.post("/runs", json={"command": "true"}).json()["id"]
    poller.join(timeout=30)
    (answered_at, lease), = answers
    assert lease["run_id"] == run_id
    assert answered_at - submitted_at < 1.0
    for status in ("mounting", "running", "saving", "pushing", "complete"):  # the run ends
        assert worker_a.post(f"/runs/{run_id}/status", json={
            "lease_token": lease["lease_token"], "status": status,
            **({"exit_code": 0} if status == "complete" else {})}).status_code == 200


def test_a_listener_that_lost_its_connection_reconnects_and_wakes_every_waiter(postgres_databases, monkeypatch):
    """Notifications sent while the listener was away are lost, so on
    reconnecting it wakes every waiter (each re-reads); later ones arrive again."""
    from sqlalchemy import text

    url = postgres_databases()
    listening, sending = Database(url), Database(url)
    listening.start_listener()
    listener = listening._listener
    monkeypatch.setattr(events.Listener, "RECONNECT_SECONDS", 0.2)

    async def scenario():
        assert await asyncio.to_thread(listener.listening.wait, 10)
        with listening.notifier.subscribe(events.run_key(7)) as run:
            with sending.transaction() as session:
                cut = session.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'cast listener' AND datname = current_database()")).scalars().all()
            assert cut == [True]
            assert await run.wait(10)  # woken by the reconnect, though nothing changed
            assert listener.listening.is_set()
            with sending.transaction() as session:
                events.changed(session, events.run_key(7))
            assert await run.wait(5)

    try:
        asyncio.run(scenario())
    finally:
        listening.dispose()
        sending.dispose()


def test_a_wake_up_passed_on_with_no_waiter_it_fits_here_wakes_one_on_another_replica(postgres_databases):
    """A GPU run's wake-up on replica A goes to A's only GPU waiter, which
    leaves unserved (its worker gone); A's other waiter is a CPU worker's, so
    the wake-up passed on crosses to replica B and wakes one of B's GPU
    waiters, not both, and is not passed on again. Until it crossed, the run
    waited for B's workers' next poll (10 s)."""
    import time

    url = postgres_databases()
    a, b = Database(url), Database(url)
    for database in (a, b):
        database.start_listener()

    async def scenario():
        for database in (a, b):
            assert await asyncio.to_thread(database._listener.listening.wait, 10)
        with (a.notifier.wait_for_run(0) as cpu_a, b.notifier.wait_for_run(1) as first_b,
              b.notifier.wait_for_run(1) as second_b):
            with a.notifier.wait_for_run(1) as gone_a:
                a.notifier.notify(events.queue_key(1))
                assert await gone_a.wait(5) and gone_a.wakes() == 1
            left_at = time.monotonic()  # unserved: passed on
            assert await first_b.wait(5)
            assert time.monotonic() - left_at < 5
            assert first_b.wakes() == 1  # its claim attempt serves it, or it is passed on again
            assert not await second_b.wait(1)
            assert not await cpu_a.wait(0.1)
            # A wake-up no process has a waiter for is dropped, not sent around again.
            a.notifier.pass_on(4)
            assert not await second_b.wait(1)
            first_b.served(1)

    try:
        asyncio.run(scenario())
    finally:
        a.dispose()
        b.dispose()


def test_caught_up_hears_every_change_committed_before_it_was_called(postgres_databases):
    """A revocation committed through another process is heard before
    `caught_up` gives a generation, every time: the server may not yet have
    sent the notification when the commit returns, so an empty socket proves
    nothing (a replica answered a token revoked a moment before from memory).
    While no listener listens, it gives None."""
    from sqlalchemy import text

    url = postgres_databases()
    listening, sending = Database(url), Database(url)
    listening.start_listener()

    async def scenario():
        assert await asyncio.to_thread(listening._listener.listening.wait, 10)
        for attempt in range(200):
            before = await listening.notifier.caught_up()
            with sending.transaction() as session:
                events.changed(session, events.token_key(attempt))
            after = await listening.notifier.caught_up()
            assert before is not None and after is not None and after > before, attempt
        # Many callers at once share round trips, and each hears what came before it.
        with sending.transaction() as session:
            events.changed(session, events.token_key(1))
        generations = await asyncio.gather(*(listening.notifier.caught_up() for _ in range(50)))
        assert None not in generations and min(generations) > after
        with sending.transaction() as session:  # the listener's connection cut: it may miss changes now
            session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = 'cast listener' AND datname = current_database()"))
        assert await listening.notifier.caught_up() is None

    try:
        asyncio.run(scenario())
    finally:
        listening.dispose()
        sending.dispose()
