"""cast.server.db: SQLite set up for concurrent use (WAL, foreign keys, a busy
timeout), write transactions that take the write lock up front while reads do
not, units of work that commit or roll back whole, wake-ups only after a
commit, and the schema migrated to head."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from cast.server import events
from cast.server.db import Database
from cast.server.models import Base, Run, RunLabel


class _Recorder(events.Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.notified: list[tuple] = []

    def notify(self, *keys) -> None:
        self.notified.append(keys)
        super().notify(*keys)


@pytest.fixture
def database(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'cast.db'}", notifier=_Recorder())
    database.migrate()
    with database.transaction() as session:
        session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        session.execute(text("INSERT INTO counter VALUES (0)"))
    yield database
    database.dispose()


def _outside_writer(path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_sqlite_connections_are_set_up_for_concurrent_use(database):
    with database.engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert (pragma("journal_mode"), pragma("foreign_keys"), pragma("busy_timeout")) == ("wal", 1, 30000)


def test_the_schema_is_migrated_to_head_and_migrating_again_changes_nothing(database):
    assert set(Base.metadata.tables) <= set(inspect(database.engine).get_table_names())
    database.migrate()
    with database.transaction(write=False) as session:
        assert session.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_foreign_keys_are_enforced(database):
    with pytest.raises(IntegrityError):
        with database.transaction() as session:
            session.add(RunLabel(run_id=12345, label="orphan"))


def test_a_unit_of_work_commits_whole_or_not_at_all(database):
    with database.transaction() as session:
        session.execute(text("UPDATE counter SET n = 1"))
    with pytest.raises(RuntimeError):
        with database.transaction() as session:
            session.execute(text("UPDATE counter SET n = 2"))
            raise RuntimeError("half way")
    with database.transaction(write=False) as session:
        assert session.execute(text("SELECT n FROM counter")).scalar() == 1
        assert session.get(Run, 1) is None


def test_a_write_transaction_holds_the_write_lock_from_its_start_and_a_read_does_not(database, tmp_path):
    outside = _outside_writer(tmp_path / "cast.db")
    with database.transaction(write=False) as session:
        session.execute(text("SELECT n FROM counter")).scalar()
        outside.execute("UPDATE counter SET n = n + 1")  # a reader blocks no writer
    with database.transaction() as session:
        session.execute(text("SELECT n FROM counter")).scalar()  # nothing written yet
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            outside.execute("UPDATE counter SET n = n + 1")
    outside.execute("UPDATE counter SET n = n + 1")
    outside.close()


def test_concurrent_read_then_write_transactions_queue_and_lose_no_update(database):
    def bump() -> None:
        for _ in range(20):
            with database.transaction() as session:
                n = session.execute(text("SELECT n FROM counter")).scalar()
                session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    with database.transaction(write=False) as session:
        assert session.execute(text("SELECT n FROM counter")).scalar() == 120


def test_wake_ups_fire_after_a_commit_and_never_after_a_rollback(database):
    notified = database.notifier.notified
    with database.transaction() as session:
        events.changed(session, events.run_key(1))
        assert notified == []
    assert notified == [(events.run_key(1),)]
    with pytest.raises(RuntimeError):
        with database.transaction() as session:
            events.changed(session, events.QUEUE)
            raise RuntimeError("rolled back")
    with database.transaction():
        pass
    assert notified == [(events.run_key(1),)]
