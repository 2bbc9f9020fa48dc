"""cast.server.db: SQLite set up for concurrent use (WAL, foreign keys, a busy
timeout), write transactions that take the write lock up front while reads do
not, units of work that commit or roll back whole, wake-ups only after a
commit, and the schema migrated to head. On a real PostgreSQL: the claim skips
locked runs and many processes never claim one twice, one process at a time
holds a periodic job, and a server whose database restarts answers 503 with
Retry-After meanwhile and serves again after."""

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


# --- PostgreSQL (the suite's real server, whatever CAST_TEST_DATABASE says) ---

def _pg_app(tmp_path, url: str):
    from cast.server.app import create_app
    from cast.server.settings import Settings

    from .conftest import in_process_api

    settings = Settings(data_dir=tmp_path / "data", database_url=url, lease_seconds=60)
    app = create_app(settings)
    return app, settings, in_process_api(app, settings)


def test_postgresql_is_recognised_and_pings_its_connections(postgres_databases):
    database = Database(postgres_databases())
    try:
        assert (database.is_postgresql, database.is_sqlite) == (True, False)
        assert database.engine.pool._pre_ping
        with database.transaction(write=False) as session:
            assert session.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    finally:
        database.dispose()


def test_a_claim_on_postgresql_skips_the_run_another_claimer_holds(tmp_path, postgres_databases):
    """The claim's subquery locks with SKIP LOCKED: while one claimer's
    transaction holds the oldest queued run, another gets the next one at once
    (without it, the second would wait for the first and then find nothing)."""
    from cast.server.models import Worker
    from cast.server.services import leases

    app, settings, api = _pg_app(tmp_path, postgres_databases())
    database = app.state.database
    first, second = api.create_run()["id"], api.create_run()["id"]
    a, b = api.register(name="a"), api.register(name="b")
    with database.transaction() as holding:
        held = leases.claim_next(holding, worker=holding.get(Worker, a), free_gpus=0, settings=settings)
        assert held.id == first
        claimed = []

        def claim() -> None:
            with database.transaction() as session:
                claimed.append(leases.claim_next(session, worker=session.get(Worker, b), free_gpus=0,
                                                 settings=settings).id)

        thread = threading.Thread(target=claim)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive() and claimed == [second]
    assert (api.run(first)["status"], api.run(second)["status"]) == ("building", "building")
    database.dispose()


def _claim_until_empty(url: str, worker_id: str) -> list[int]:
    from cast.server.models import Worker
    from cast.server.services import leases
    from cast.server.settings import Settings

    database = Database(url)
    settings = Settings(lease_seconds=60)
    claimed = []
    while True:
        with database.transaction() as session:
            run = leases.claim_next(session, worker=session.get(Worker, worker_id), free_gpus=0, settings=settings)
        if run is None:
            database.dispose()
            return claimed
        claimed.append(run.id)


def test_many_processes_claiming_on_postgresql_never_claim_a_run_twice(tmp_path, postgres_databases):
    import multiprocessing

    url = postgres_databases()
    app, _settings, api = _pg_app(tmp_path, url)
    expected = [api.create_run()["id"] for _ in range(300)]
    workers = [api.register(name=f"w{i}") for i in range(8)]
    app.state.database.dispose()  # the children open their own connections
    with multiprocessing.get_context("fork").Pool(8) as pool:
        results = pool.starmap(_claim_until_empty, [(url, worker) for worker in workers])
    claimed = [run_id for result in results for run_id in result]
    assert sorted(claimed) == expected
    with app.state.database.transaction(write=False) as session:
        building = session.execute(text(
            "SELECT run_id, count(*) FROM run_transitions WHERE status = 'building' GROUP BY run_id")).all()
    assert sorted(building) == [(run_id, 1) for run_id in expected]
    app.state.database.dispose()


def test_only_one_process_holds_a_periodic_job_at_a_time_on_postgresql(postgres_databases, tmp_path):
    url = postgres_databases()
    one, other = Database(url), Database(url)
    try:
        with one.exclusive("reaper") as mine:
            assert mine
            with other.exclusive("reaper") as theirs, other.exclusive("retention") as unrelated:
                assert (theirs, unrelated) == (False, True)
        with other.exclusive("reaper") as theirs:
            assert theirs
    finally:
        one.dispose()
        other.dispose()
    sqlite = Database(f"sqlite:///{tmp_path / 'one.db'}")
    with sqlite.exclusive("reaper") as first, sqlite.exclusive("reaper") as second:
        assert first and second  # one process serves a SQLite database
    sqlite.dispose()


def test_a_server_whose_postgresql_restarts_answers_503_with_retry_after_then_serves_again(
        start_server, tmp_path):
    """Its own PostgreSQL, stopped and started under a running server: requests
    meanwhile get a 503 that says to retry (never a 500), and once the database
    is back the pool's pings replace the dead connections, with nothing lost."""
    from tests.conftest import free_port
    from tests.realservers.postgres import PostgresServer

    postgres = PostgresServer(tmp_path / "pg", port=free_port()).start()
    try:
        # Trust authentication ignores the password; the server must never show it.
        url = postgres.create_database("cast").replace("://cast@", "://cast:hunter2@")
        server = start_server(env={"CAST_DATABASE_URL": url})
        with server.api() as api:
            shown = api.get("/status").json()["server"]["database"]
            assert shown.startswith("postgresql+psycopg://cast:***@") and "hunter2" not in shown
            run_id = api.post("/runs", json={"command": "true"}).json()["id"]
            postgres.kill()
            down = api.get(f"/runs/{run_id}")
            assert down.status_code == 503 and down.headers["Retry-After"] == "1"
            assert down.json() == {"detail": "the server lost its database connection; try again"}
            assert api.post("/runs", json={"command": "true"}).status_code == 503
            postgres.start()
            assert api.get(f"/runs/{run_id}").json()["status"] == "machine_requested"
            assert [run["id"] for run in api.get("/runs").json()["runs"]] == [run_id]
        server.stop()
        assert "Traceback" not in server.log_path.read_text()
    finally:
        postgres.stop()


def test_two_replicas_driving_one_search_start_each_trial_once(start_server, postgres_databases, tmp_path):
    """Both replicas run the search driver every 50 ms on one PostgreSQL
    database; the driver's advisory lock lets one at a time make a pass, so
    every trial is started once and no pass fails on the other's trial."""
    import time

    import httpx

    url = postgres_databases()
    fast = {"CAST_DATABASE_URL": url, "CAST_SEARCH_INTERVAL_SECONDS": "0.05"}
    a = start_server(data_dir=tmp_path / "a", env=fast)
    b = start_server(data_dir=tmp_path / "b", env=fast)
    values = [str(x) for x in range(1, 13)]
    with a.api() as user, httpx.Client(base_url=f"{b.url}/api/v1", timeout=60,
                                       headers={"Authorization": f"Bearer {a.worker_token}"}) as worker:
        search = user.post("/searches", json={"kind": "grid", "command": "echo :x:", "params": {"x": ",".join(values)},
                                              "parallel": 4, "run": {"queue_anyway": True}})
        assert search.status_code == 201, search.text
        search_id = search.json()["id"]
        worker_id = worker.post("/workers", json={"name": "w", "executor": "local", "gpus": []}).json()["id"]
        deadline = time.monotonic() + 240
        while user.get(f"/searches/{search_id}").json()["status"] == "running":
            assert time.monotonic() < deadline, "the search did not end"
            answer = worker.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 1})
            if answer.status_code == 204:
                continue
            lease = answer.json()
            for status in ("mounting", "running", "saving", "pushing", "complete"):
                assert worker.post(f"/runs/{lease['run_id']}/status", json={
                    "lease_token": lease["lease_token"], "status": status,
                    **({"exit_code": 0} if status == "complete" else {})}).status_code == 200
        trials = user.get(f"/searches/{search_id}").json()["trials"]
        runs = user.get("/runs", params={"label": f"hyper:{search_id}"}).json()["runs"]
    assert sorted(t["number"] for t in trials) == list(range(len(values)))
    assert sorted(int(t["params"]["x"]) for t in trials) == [int(x) for x in values]
    assert len(runs) == len(values) == len({run["id"] for run in runs})
    for server in (a, b):
        assert "driver pass failed" not in server.log_path.read_text()
