"""Change notifications, within a process and across server processes.

Owns the wake-ups that let a log follower and a worker's lease long-poll answer
as soon as something changes instead of polling: service code marks a key as
changed on its session (`changed(session, key)`), and once that transaction
commits every coroutine waiting on the key wakes up. Keys are `run_key(id)`
(a run's log or status changed), `queue_key(gpus)` (a run needing `gpus`
GPUs was queued) and `token_key(id)` (a token was revoked: every process
drops what it remembers of tokens, `users.Tokens`, and bumps `generation`).

A queued run wakes ONE of the workers' long polls (`wait_for_run`), not all:
the one with the fewest free GPUs that still fit the run, the longest waiting
among equals, so a GPU run is never handed to a CPU-only waiter and a CPU run
leaves the GPU waiters asleep. Every other waiter sleeps on; waking them all
made each try a claim that all but one lost (a thundering herd). A wake-up
is never dropped: a waiter that leaves (its client gone, its time up, an
error) before its claim attempt served the wake-up passes it on to another,
and a claim that leaves runs queued passes one on too (`leases.wait_for_lease`,
`Notifier.pass_on`). A wake-up passed on that finds no waiter it fits in its
own process goes to the other processes (PostgreSQL: `passed_key`, sent by
the listener), where it wakes one waiter it fits each, as a queued run does;
one that arrives so and finds none there is dropped, never passed on again.

On PostgreSQL the keys also travel to the other server processes on the same
database: the transaction sends them with `pg_notify` (`send_pending`, so they
are delivered when it commits and dropped if it rolls back), and each process's
`Listener` thread LISTENs and wakes its own waiters. A listener that lost its
connection may have missed notifications, so on reconnecting it wakes every
waiter: each re-reads the database, which is the truth. While the listener
listens, a process's own commits reach its waiters through it too, so they
are not also fired at commit (a queued run would wake two of its waiters);
a token's key is, so a revocation holds on its own process before the
revoking request answers.

What a process remembers of the database (the token cache) may be used only
under the generation `await Notifier.caught_up()` gives: the one after every
change committed before the call was heard. In one process (SQLite) that is
at once. On PostgreSQL the listener makes a round trip on its connection
begun after the call and acts on the notifications that came with it: the
server sends a listener every notification committed before a query before
that query's answer (postgres.c: pending notifies go out before
ReadyForQuery), so a revocation committed anywhere before a request arrived
is heard before the request is answered from memory. A socket with nothing
unread is not proof: the server may not have sent a notification yet (a
replica under load answered a token revoked a moment before). One round trip
serves every request that asked while the one before was on its way.
`generation` changes with every revocation heard and whenever the listener
goes deaf or listens again: a thing remembered under an older generation is
not used, and while no listener listens `caught_up` gives None.

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
import os
import select
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Hashable

from sqlalchemy import text
from sqlalchemy.orm import Session

log = logging.getLogger("cast.server")
# Not "cast" alone: that is an SQL keyword, which LISTEN would not parse.
CHANNEL = "cast_changes"
# PostgreSQL's limit on a notification's payload is 8000 bytes.
_PAYLOAD_BYTES = 7900


def run_key(run_id: int) -> tuple[str, int]:
    return ("run", run_id)


def queue_key(gpus: int) -> tuple[str, int]:
    """A run needing `gpus` GPUs was queued: wakes one waiter it fits."""
    return ("queue", gpus)


def passed_key(gpus: int) -> tuple[str, int]:
    """A wake-up for a run needing `gpus` GPUs that another process had no waiter for."""
    return ("passed", gpus)


def token_key(token_id: int) -> tuple[str, int]:
    """A token was revoked: what any process remembers of tokens is stale."""
    return ("token", token_id)


# A run needing no GPU was queued.
QUEUE = queue_key(0)
_KINDS = {"run": run_key, "queue": queue_key, "passed": passed_key, "token": token_key}


def _encode(key: tuple[str, int]) -> str:
    return f"{key[0]}:{key[1]}"


def _decode(word: str) -> Hashable | None:
    kind, _, number = word.partition(":")
    if not number.isdigit() or kind not in _KINDS:
        return None
    return _KINDS[kind](int(number))


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


class RunWait(Subscription):
    """A worker's long poll, waiting for a queued run that fits `free_gpus`.

    Woken by one queued run at a time (`Notifier.notify` picks one waiter per
    `queue_key`). The wake-ups it got are kept until `served` says a claim
    attempt made after them returned; any left when it closes are passed on
    to another waiter, so a waiter that leaves drops no queued run."""

    def __init__(self, notifier: "Notifier", free_gpus: int):
        self.free_gpus = free_gpus
        self._wakes: list[int] = []  # the GPUs of each queued run that woke it, under the notifier's lock
        super().__init__(notifier, ("waiting", free_gpus))

    def wakes(self) -> int:
        """How many wake-ups it got so far: pass to `served` after the next claim attempt."""
        with self._notifier._lock:
            return len(self._wakes)

    def served(self, count: int) -> None:
        """A claim attempt made after the first `count` wake-ups returned: they are spent."""
        with self._notifier._lock:
            del self._wakes[:count]

    def close(self) -> None:
        super().close()
        with self._notifier._lock:
            unserved, self._wakes = self._wakes, []
        for gpus in unserved:
            self._notifier.pass_on(gpus)


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Hashable, set[Subscription]] = defaultdict(set)
        # Long polls by their free GPUs, each in the order it began to wait.
        self._runs: dict[int, dict[RunWait, None]] = defaultdict(dict)
        self.closed = False
        # Set by a Listener while it hears this process's own commits.
        self.echoes = False
        # On PostgreSQL (set by db.Database): changes are heard only through a listening Listener.
        self.needs_listener = False
        self.listener: Listener | None = None  # set while one listens
        self.generation = 0

    # A listener's round trip slower than this (a database gone silent) is
    # not waited for: the caller looks up the database instead.
    CATCH_UP_SECONDS = 5.0

    async def caught_up(self) -> int | None:
        """The generation once every change committed before this call has
        been heard, or None if that cannot be known (see the module's docstring)."""
        if not self.needs_listener:
            return self.generation
        listener = self.listener
        if listener is None:
            return None
        loop = asyncio.get_running_loop()
        heard = loop.create_future()

        def done(ok: bool) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(lambda: heard.done() or heard.set_result(ok))

        listener.sync(done)
        try:
            ok = await asyncio.wait_for(heard, self.CATCH_UP_SECONDS)
        except TimeoutError:
            return None
        return self.generation if ok else None

    def _new_generation(self) -> None:
        with self._lock:
            self.generation += 1

    def subscribe(self, key: Hashable) -> Subscription:
        """Call from a coroutine; use as a context manager."""
        return Subscription(self, key)

    def waiting(self) -> bool:
        """Whether a long poll waits for a run in this process now."""
        with self._lock:
            return any(self._runs.values())

    def wait_for_run(self, free_gpus: int) -> RunWait:
        """A worker's long poll for a run that fits `free_gpus`; call from a coroutine, use as a context manager."""
        return RunWait(self, free_gpus)

    def notify(self, *keys: Hashable) -> None:
        """Wake every subscriber of `keys`, and one fitting long poll for each
        queued run's key; safe from any thread."""
        with self._lock:
            fired = []
            for key in keys:
                if key[0] == "token":
                    self.generation += 1
                elif key[0] in ("queue", "passed"):
                    if (waiter := self._take_waiter(key[1])) is not None:
                        fired.append(waiter)
                else:
                    fired.extend(self._waiters.pop(key, ()))
        for sub in fired:
            sub._fire()

    def pass_on(self, gpus: int) -> None:
        """A wake-up for a run needing `gpus` that its waiter did not use: to
        another waiter here it fits, else to the other processes (while the
        listener listens; see the module's docstring)."""
        with self._lock:
            waiter = self._take_waiter(gpus)
        if waiter is not None:
            waiter._fire()
        elif (listener := self.listener) is not None:
            listener.send(passed_key(gpus))

    def _take_waiter(self, gpus: int) -> RunWait | None:
        """The waiter a run needing `gpus` wakes, taken off the waiting (under the lock)."""
        fits = [free for free, waiting in self._runs.items() if free >= gpus and waiting]
        if not fits:
            return None
        waiting = self._runs[min(fits)]
        waiter = next(iter(waiting))
        del waiting[waiter]
        waiter._wakes.append(gpus)
        return waiter

    def _everyone(self) -> list[Subscription]:
        """Every waiter, taken off the waiting (under the lock)."""
        fired = [sub for subs in self._waiters.values() for sub in subs]
        fired += [waiter for waiting in self._runs.values() for waiter in waiting]
        self._waiters.clear()
        self._runs.clear()
        return fired

    def wake_all(self) -> None:
        """Wake every waiter (each re-reads and waits again): after changes may have gone unheard."""
        with self._lock:
            fired = self._everyone()
        for sub in fired:
            sub._fire()

    def close(self) -> None:
        """The server is shutting down: wake every waiter now and every later one at once."""
        with self._lock:
            self.closed = True
            fired = self._everyone()
        for sub in fired:
            sub._fire()

    def _add(self, key: Hashable, sub: Subscription) -> None:
        with self._lock:
            if not self.closed:
                if isinstance(sub, RunWait):
                    self._runs[sub.free_gpus][sub] = None
                else:
                    self._waiters[key].add(sub)
                return
        sub._fire()

    def _remove(self, key: Hashable, sub: Subscription) -> None:
        with self._lock:
            if isinstance(sub, RunWait):
                self._runs.get(sub.free_gpus, {}).pop(sub, None)
                return
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
    # Its connection's name in pg_stat_activity, where operators and tests find it.
    APPLICATION_NAME = "cast listener"
    # A connection gone silent (a cut network) is given up within about 10 s.
    KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}

    def __init__(self, dsn: str, notifier: Notifier):
        self._dsn = dsn
        self._notifier = notifier
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cast-listener", daemon=True)
        self.listening = threading.Event()
        self._socket: int | None = None  # the connection's, while it listens
        # Keys to send to every process (wake-ups passed on), callers waiting
        # for a round trip (`sync`), and a pipe that wakes the thread for them.
        self._outbox: set[tuple[str, int]] = set()
        self._syncs: list[Callable[[bool], None]] = []
        self._syncing: list[Callable[[bool], None]] = []  # the current round trip's, this thread's own
        self._outbox_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()  # _wake_write None once closed
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._notifier.echoes = False
        with self._outbox_lock:
            if not self._thread.is_alive():
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_write = None

    def send(self, key: tuple[str, int]) -> None:
        """Send `key` to every process, from this thread (safe from any thread,
        never blocks); repeats of a key not yet sent go as one."""
        with self._outbox_lock:
            if self._wake_write is None:  # stopped
                return
            self._outbox.add(key)
            with contextlib.suppress(BlockingIOError):  # a full pipe wakes the thread all the same
                os.write(self._wake_write, b"x")

    def sync(self, done: Callable[[bool], None]) -> None:
        """Call `done(True)` from this thread once a round trip to the database
        begun after this call has returned and the notifications that came
        before its answer were acted on; `done(False)` if the listener stops
        listening first. Safe from any thread, never blocks."""
        with self._outbox_lock:
            if self._wake_write is None or self._socket is None:  # stopped, or not listening
                done(False)
                return
            self._syncs.append(done)
            if len(self._syncs) == 1:  # a later one rides on this one's wake-up
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_write, b"x")

    def _run(self) -> None:
        import psycopg

        lost = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10,
                                     application_name=self.APPLICATION_NAME, **self.KEEPALIVES) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    try:
                        self._listen(connection, lost)
                    finally:
                        self._deaf()  # before the connection closes and its socket's number is reused
            except psycopg.Error as error:
                if not lost:
                    log.warning("lost the database connection that listens for changes (%s); reconnecting",
                                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
                lost = True
                self._stop.wait(self.RECONNECT_SECONDS)

    def _listen(self, connection, lost: bool) -> None:
        # Whatever was remembered before (or looked up while deaf) may predate a missed change.
        self._notifier._new_generation()
        self._socket = connection.fileno()
        self._notifier.listener = self
        self.listening.set()
        self._notifier.echoes = True
        if lost:
            log.info("listening for changes again; waking every waiter")
            self._notifier.wake_all()
        poll = select.poll()  # not select.select: a busy server's descriptors pass 1024
        poll.register(self._socket, select.POLLIN)
        poll.register(self._wake_read, select.POLLIN)
        while not self._stop.is_set():
            if not poll.poll(1000):
                continue
            self._send_outbox(connection)
            for notification in connection.notifies(timeout=0):
                keys = [key for word in notification.payload.split() if (key := _decode(word)) is not None]
                self._notifier.notify(*keys)
            synced, self._syncing = self._syncing, []
            for done in synced:
                done(True)

    def _send_outbox(self, connection) -> None:
        """Send the keys to pass on and make the round trip callers of `sync`
        wait for, one query for both. Notifications that arrive during the
        query wait in psycopg's backlog: the caller reads them next."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        with self._outbox_lock:
            keys, self._outbox = self._outbox, set()
            self._syncing, self._syncs = self._syncs, []
        if keys:
            payload = " ".join(sorted(_encode(key) for key in keys))
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        elif self._syncing:
            connection.execute("SELECT 1")

    def _deaf(self) -> None:
        self._notifier.listener = None
        self._socket = None
        self._notifier.echoes = False
        self.listening.clear()
        self._notifier._new_generation()
        with self._outbox_lock:
            failed, self._syncs, self._syncing = self._syncing + self._syncs, [], []
        for done in failed:
            done(False)


def fire_pending(session: Session, notifier: Notifier) -> None:
    """Wake this process's waiters of the keys a transaction committed, unless
    they come back through the listener (PostgreSQL, while it listens); a
    revocation acts here at once all the same (its echo comes later)."""
    keys = session.info.pop(_PENDING, None)
    if keys and notifier.echoes:
        keys = [key for key in keys if key[0] == "token"]
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
