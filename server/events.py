"""Change notifications, within a process and across server processes.

Owns the wake-ups that let a log follower and a worker's lease long-poll answer
as soon as something changes instead of polling: service code marks a key as
changed on its session (`changed(session, key)`), and once that transaction
commits every coroutine waiting on the key wakes up. Keys are `run_key(id)`
(a run's log or status changed) and `QUEUE` (a run was queued).

On PostgreSQL the keys also travel to the other server processes on the same
database: the transaction sends them with `pg_notify` (`send_pending`, so they
are delivered when it commits and dropped if it rolls back), and each process's
`Listener` thread LISTENs and wakes its own waiters. A listener that lost its
connection may have missed notifications, so on reconnecting it wakes every
waiter: each re-reads the database, which is the truth.

Waiters subscribe *before* reading the database and wait afterwards, so a
change committed between the read and the wait is never missed.

When the server begins to shut down, `Notifier.close()` wakes every waiter and
makes every later wait return at once; a waiter that sees `closed` ends its
request (a long-poll answers 503, a follow stream ends), so shutdown does not
wait out a long-poll's timeout.

`follow_run` is the one loop that streams a run's append-only records (its
log, its metrics) to a follower on these wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Hashable

from sqlalchemy import text
from sqlalchemy.orm import Session

log = logging.getLogger("cast.server")
QUEUE = "queue"
# Not "cast" alone: that is an SQL keyword, which LISTEN would not parse.
CHANNEL = "cast_changes"
# PostgreSQL's limit on a notification's payload is 8000 bytes.
_PAYLOAD_BYTES = 7900


def run_key(run_id: int) -> tuple[str, int]:
    return ("run", run_id)


def _encode(key: Hashable) -> str:
    return QUEUE if key == QUEUE else f"run:{key[1]}"


def _decode(word: str) -> Hashable | None:
    if word == QUEUE:
        return QUEUE
    kind, _, number = word.partition(":")
    return run_key(int(number)) if kind == "run" and number.isdigit() else None


class Subscription:
    def __init__(self, notifier: "Notifier", key: Hashable):
        self._notifier = notifier
        self._key = key
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future = self._loop.create_future()
        notifier._add(key, self)

    def _fire(self) -> None:
        # The waiter's loop may already be gone (a client that left); nothing to wake then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Wait for the key to change, at most `timeout` seconds; True if it did.

        The subscription stays registered: call `wait` again after reading."""
        try:
            await asyncio.wait_for(asyncio.shield(self._future), timeout)
            fired = True
        except TimeoutError:
            fired = False
        if self._future.done():
            self._future = self._loop.create_future()
            self._notifier._add(self._key, self)
        return fired

    def close(self) -> None:
        self._notifier._remove(self._key, self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Hashable, set[Subscription]] = defaultdict(set)
        self.closed = False

    def subscribe(self, key: Hashable) -> Subscription:
        """Call from a coroutine; use as a context manager."""
        return Subscription(self, key)

    def notify(self, *keys: Hashable) -> None:
        """Wake every subscriber of `keys`; safe from any thread."""
        with self._lock:
            fired = [sub for key in keys for sub in self._waiters.pop(key, ())]
        for sub in fired:
            sub._fire()

    def wake_all(self) -> None:
        """Wake every waiter (each re-reads and waits again): after changes may have gone unheard."""
        with self._lock:
            fired = [sub for subs in self._waiters.values() for sub in subs]
            self._waiters.clear()
        for sub in fired:
            sub._fire()

    def close(self) -> None:
        """The server is shutting down: wake every waiter now and every later one at once."""
        with self._lock:
            self.closed = True
            fired = [sub for subs in self._waiters.values() for sub in subs]
            self._waiters.clear()
        for sub in fired:
            sub._fire()

    def _add(self, key: Hashable, sub: Subscription) -> None:
        with self._lock:
            if not self.closed:
                self._waiters[key].add(sub)
                return
        sub._fire()

    def _remove(self, key: Hashable, sub: Subscription) -> None:
        with self._lock:
            subs = self._waiters.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._waiters[key]


_PENDING = "cast_changed_keys"


def changed(session: Session, *keys: Hashable) -> None:
    """Mark `keys` as changed by this session's transaction; waiters wake after it commits."""
    session.info.setdefault(_PENDING, set()).update(keys)


def send_pending(session: Session) -> None:
    """PostgreSQL: send this transaction's changed keys to every listening process
    (delivered on commit), a few notifications of space-separated keys."""
    keys = sorted(_encode(key) for key in session.info.get(_PENDING, ()))
    payloads, current = [], ""
    for word in keys:
        if current and len(current) + 1 + len(word) > _PAYLOAD_BYTES:
            payloads.append(current)
            current = ""
        current = f"{current} {word}" if current else word
    if current:
        payloads.append(current)
    for payload in payloads:
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


class Listener:
    """A thread with its own PostgreSQL connection that LISTENs for the keys
    other processes (and this one) commit and wakes this process's waiters."""

    RECONNECT_SECONDS = 1.0

    def __init__(self, dsn: str, notifier: Notifier):
        self._dsn = dsn
        self._notifier = notifier
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cast-listener", daemon=True)
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import psycopg

        lost = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if lost:
                        log.info("listening for changes again; waking every waiter")
                        self._notifier.wake_all()
                    while not self._stop.is_set():
                        for notification in connection.notifies(timeout=1.0):
                            keys = [key for word in notification.payload.split()
                                    if (key := _decode(word)) is not None]
                            self._notifier.notify(*keys)
            except psycopg.Error as error:
                if not lost:
                    log.warning("lost the database connection that listens for changes (%s); reconnecting",
                                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
                lost = True
                self.listening.clear()
                self._stop.wait(self.RECONNECT_SECONDS)


def fire_pending(session: Session, notifier: Notifier) -> None:
    keys = session.info.pop(_PENDING, None)
    if keys:
        notifier.notify(*keys)


def drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


# A follower with nothing new still gets an empty chunk this often, so dead
# connections are noticed and proxies keep the stream open.
KEEPALIVE_SECONDS = 15.0


async def follow_run(notifier: "Notifier", *, run_id: int, read: Callable[[int], dict], offset: int,
                     items: str) -> AsyncIterator[dict]:
    """A run's chunks from `offset` on as they are written, until the run is
    final and all were sent. `read(offset)` reads one chunk (in a worker
    thread): `{items: [...], "next_offset": int, "finished": bool}`, and may
    say `"more": False` (not sent on) when it read all there was: the loop
    then waits for a change instead of reading again at once, one read a
    wake-up instead of two (a follower of a busy run is woken a few times a
    second, and each read costs the server a transaction).

    The first chunk is read before this returns, so an unknown run raises here.
    A server shutting down ends the stream; the client resumes from its offset.
    """
    from starlette.concurrency import run_in_threadpool

    first = await run_in_threadpool(read, offset)

    async def chunks() -> AsyncIterator[dict]:
        with notifier.subscribe(run_key(run_id)) as changes:
            chunk = first
            while True:
                more = chunk.pop("more", True)
                yield chunk
                if chunk["finished"]:
                    return
                woke = True
                # Every read but the first was made subscribed: a change after it wakes this wait.
                if not more and chunk is not first:
                    woke = await changes.wait(KEEPALIVE_SECONDS)
                    if notifier.closed:
                        return
                while True:
                    chunk = await run_in_threadpool(read, chunk["next_offset"])
                    # A wait that timed out sends what it read, empty or not: the keepalive.
                    if chunk[items] or chunk["finished"] or not woke:
                        break
                    woke = await changes.wait(KEEPALIVE_SECONDS)
                    if notifier.closed:
                        return

    return chunks()
