"""Database engine and sessions.

Owns how the server talks to its database: SQLite in WAL mode with foreign
keys and a busy timeout by default, or PostgreSQL (`postgresql+psycopg://`,
psycopg 3) when CAST_DATABASE_URL names one; sessions with no autoflush and no
expiry on commit; the schema brought up to date with the Alembic migrations in
`migrations/` at startup; and, on PostgreSQL, what several server processes on
one database need: wake-ups that cross processes (`events.Listener`) and
periodic jobs that only one process runs at a time (`Database.exclusive`).

Write transactions on SQLite start with BEGIN IMMEDIATE: a deferred
transaction that reads and then writes can fail with SQLITE_BUSY when another
writer committed in between (busy_timeout cannot help there); taking the write
lock up front makes concurrent writers queue instead. Read-only sessions keep
deferred BEGIN so readers never wait for writers. PostgreSQL runs every
transaction at READ COMMITTED with row locks: services change counters with
one `UPDATE … RETURNING`, and the queue's claim skips locked rows.

A lost database connection (PostgreSQL restarted, a failover) is no server
bug: `unavailable(error)` says so, and the app answers 503 with Retry-After,
which workers and clients retry; the pool pings connections before use, so the
next request gets a fresh one.

Who commits: services take a Session and only flush; the session is committed
in one of two places. A request's session (`api/deps.py` `SessionDep`) is
committed by its `SessionRoute` once the route returns. Anything else (the
reaper, start-up, and the steps of work that must not hold a transaction for
long: a worker's long poll, a log follower, a streamed body) runs each step in
`Database.transaction()`. Wake-ups (`events`) fire only after a commit.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cast.server import events

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_IMMEDIATE = "cast_begin_immediate"
_HOLDS_WRITE_LOCK = "cast_holds_write_lock"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event below issue BEGIN instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    # Writers of this process queue on a lock before BEGIN IMMEDIATE: SQLite's
    # own busy handler polls with growing sleeps, so under a burst of writers
    # an unlucky one (a heartbeat, say) can wait for seconds and lose its lease.
    write_lock = threading.Lock()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        if not connection.get_execution_options().get(_IMMEDIATE, False):
            connection.exec_driver_sql("BEGIN")
            return
        write_lock.acquire()
        connection.info[_HOLDS_WRITE_LOCK] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(connection)
            raise

    def _release(connection):
        if connection.info.pop(_HOLDS_WRITE_LOCK, False):
            write_lock.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)


# Per process: two replicas stay well inside PostgreSQL's default 100
# connections. Requests hold a connection only for their short transactions.
# Every connection is kept once made (no overflow): an overflow connection is
# closed when returned, so under load most requests paid for a new one (about
# a tenth of a status report's CPU).
_POSTGRES_POOL = {"pool_size": 40, "max_overflow": 0, "pool_timeout": 30, "pool_pre_ping": True,
                  "pool_recycle": 1800, "connect_args": {"connect_timeout": 10}}


def _lock_key(job: str) -> int:
    """A stable signed 64-bit advisory lock key for a job's name."""
    return int.from_bytes(hashlib.sha256(f"cast:{job}".encode()).digest()[:8], "big", signed=True)


class Database:
    def __init__(self, url: str, notifier: events.Notifier | None = None):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgresql = make_url(url).get_backend_name() == "postgresql"
        kwargs = {}
        if self.is_sqlite:
            kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30},
                      "pool_size": 8, "max_overflow": 120, "pool_timeout": 60}
        elif self.is_postgresql:
            kwargs = _POSTGRES_POOL
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.notifier = notifier or events.Notifier()
        # Other processes' changes reach this one only through the listener.
        self.notifier.needs_listener = self.is_postgresql
        self._listener: events.Listener | None = None
        self._read = sessionmaker(self.engine, autoflush=False, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(**{_IMMEDIATE: True}), autoflush=False, expire_on_commit=False
        )
        for factory in (self._read, self._write):
            if self.is_postgresql:
                event.listen(factory, "before_commit", events.send_pending)
            event.listen(factory, "after_commit", lambda s: events.fire_pending(s, self.notifier))
            event.listen(factory, "after_rollback", events.drop_pending)

    def unavailable(self, error: DBAPIError) -> bool:
        """Whether `error` means the database could not be reached or dropped the
        connection (or, on PostgreSQL, asked to retry a conflicting transaction):
        the request may be retried as it is."""
        if error.connection_invalidated:
            return True
        return self.is_postgresql and isinstance(error, OperationalError)

    def start_listener(self) -> None:
        """On PostgreSQL, hear the changes other server processes commit (see events.Listener)."""
        if self.is_postgresql and self._listener is None:
            dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = events.Listener(dsn, self.notifier)
            self._listener.start()

    @contextmanager
    def exclusive(self, job: str) -> Iterator[bool]:
        """Whether this process may do `job` now: on PostgreSQL, only the one
        process holding the job's advisory lock (held on its own connection
        for the block, released when it ends or the connection is lost) gets
        True; others skip this pass. SQLite serves one process: always True."""
        if not self.is_postgresql:
            yield True
            return
        key = _lock_key(job)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            held = connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            try:
                yield bool(held)
            finally:
                # A lost connection has released the lock already.
                if held:
                    with suppress(DBAPIError):
                        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    def session(self, *, write: bool) -> Session:
        return (self._write if write else self._read)()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """A unit of work: a session that commits when the block ends, and rolls back if it raises."""
        with self.session(write=write) as session:
            with session.begin():
                yield session

    def serialize(self, session: Session, job: str) -> None:
        """On PostgreSQL, wait until no other process's transaction is doing
        `job` and hold it until this one ends (for start-up work two replicas
        starting together must not both do); nothing on SQLite."""
        if self.is_postgresql:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(job)})

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            if self.is_postgresql:  # replicas starting together migrate one after the other
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key("migrate")})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.engine.dispose()
