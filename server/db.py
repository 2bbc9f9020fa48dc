"""Database engine and sessions.

Owns how the server talks to its database: SQLite in WAL mode with foreign
keys and a busy timeout by default (any SQLAlchemy URL works), sessions with no
autoflush and no expiry on commit, and the schema brought up to date with the
Alembic migrations in `migrations/` at startup.

Write transactions on SQLite start with BEGIN IMMEDIATE: a deferred
transaction that reads and then writes can fail with SQLITE_BUSY when another
writer committed in between (busy_timeout cannot help there); taking the write
lock up front makes concurrent writers queue instead. Read-only sessions keep
deferred BEGIN so readers never wait for writers.

Who commits: services take a Session and only flush; the session is committed
in one of two places. A request's session (`api/deps.py` `SessionDep`) is
committed by its `SessionRoute` once the route returns. Anything else (the
reaper, start-up, and the steps of work that must not hold a transaction for
long: a worker's long poll, a log follower, a streamed body) runs each step in
`Database.transaction()`. Wake-ups (`events`) fire only after a commit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
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


class Database:
    def __init__(self, url: str, notifier: events.Notifier | None = None):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs = {}
        if self.is_sqlite:
            kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30},
                      "pool_size": 8, "max_overflow": 120, "pool_timeout": 60}
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.notifier = notifier or events.Notifier()
        self._read = sessionmaker(self.engine, autoflush=False, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(**{_IMMEDIATE: True}), autoflush=False, expire_on_commit=False
        )
        for factory in (self._read, self._write):
            event.listen(factory, "after_commit", lambda s: events.fire_pending(s, self.notifier))
            event.listen(factory, "after_rollback", events.drop_pending)

    def session(self, *, write: bool) -> Session:
        return (self._write if write else self._read)()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """A unit of work: a session that commits when the block ends, and rolls back if it raises."""
        with self.session(write=write) as session:
            with session.begin():
                yield session

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
