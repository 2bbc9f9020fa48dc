"""cast.server.services.unique, and the services that take a name or key at
the same moment from several requests (on PostgreSQL, from several replicas):
users, code bundles, uploads, labels and a run's submit key. Each race ends
with one row and the losers told what a second request on its own is told,
never a failed transaction."""

from __future__ import annotations

import io
import threading

from sqlalchemy import func, select

from cast.server.errors import NameTaken
from cast.server.models import CodeBundle, Run, RunLabel, Upload, User
from cast.server.schemas.runs import RunCreate
from cast.server.services import code, files, runs, unique, users
from ..conftest import make_tar
from .conftest import admin_of

RACERS = 6
ROUNDS = 4


def _race(action) -> list:
    """`action()` in RACERS threads released at once: each one's result or exception."""
    start = threading.Barrier(RACERS)
    results: list = [None] * RACERS

    def racer(i: int) -> None:
        start.wait()
        try:
            results[i] = action()
        except Exception as error:  # noqa: BLE001 - the test asserts what each racer got
            results[i] = error

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def _count(database, model, *where) -> int:
    with database.transaction(write=False) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_insert_once_reports_a_taken_key_and_keeps_the_transaction_usable(app):
    database = app.state.database
    with database.transaction() as session:
        assert unique.insert_once(session, User(name="dora")) is True
    with database.transaction() as session:
        assert unique.insert_once(session, User(name="dora")) is False
        assert unique.insert_once(session, User(name="eve")) is True
    assert _count(database, User, User.name.in_(["dora", "eve"])) == 2


def test_users_made_at_once_under_one_name_make_one_user(app):
    database = app.state.database
    admin = admin_of(database)

    def make(name: str):
        with database.transaction() as session:
            return users.create_user(session, viewer=admin, name=name, admin=False)[0].name

    for round_ in range(ROUNDS):
        results = _race(lambda: make(f"racer{round_}"))
        assert sum(r == f"racer{round_}" for r in results) == 1, results
        assert all(isinstance(r, NameTaken) for r in results if r != f"racer{round_}"), results
        assert _count(database, User, User.name == f"racer{round_}") == 1


def test_a_code_bundle_sent_at_once_is_stored_once(app, settings):
    database = app.state.database
    admin = admin_of(database)
    body = make_tar({"train.py": b"print('race')\n"})
    for round_ in range(ROUNDS):
        key = f"{round_:064d}"
        results = _race(lambda: code.store(database, settings=settings, owner=admin, key=key,
                                           source=io.BytesIO(body)))
        assert sorted(results, key=str) == [False] * (RACERS - 1) + [True], results
        assert _count(database, CodeBundle, CodeBundle.key == key) == 1


def test_an_upload_sent_at_once_under_one_name_is_stored_once(app, settings):
    database = app.state.database
    admin = admin_of(database)
    for round_ in range(ROUNDS):
        name = f"data{round_}"
        results = _race(lambda: files.store_upload(database, settings=settings, owner=admin, name=name,
                                                   kind="file", source=io.BytesIO(b"x" * 100)).name)
        assert sum(r == name for r in results) == 1, results
        assert all(isinstance(r, NameTaken) for r in results if r != name), results
        assert _count(database, Upload, Upload.name == name) == 1


def test_a_label_added_at_once_is_added_once(app, settings):
    database = app.state.database
    admin = admin_of(database)
    with database.transaction() as session:
        run_id = runs.create_run(session, owner=admin, body=RunCreate(command="true"), settings=settings)[0].id

    def label(name: str) -> int:
        with database.transaction() as session:
            return runs.add_label(session, run_id=run_id, viewer=admin, label=name).id

    for round_ in range(ROUNDS):
        assert _race(lambda: label(f"l{round_}")) == [run_id] * RACERS
        assert _count(database, RunLabel, RunLabel.run_id == run_id, RunLabel.label == f"l{round_}") == 1


def test_a_submit_retried_at_once_makes_one_run(app, settings):
    database = app.state.database
    admin = admin_of(database)

    def submit(submit_key: str) -> int:
        with database.transaction() as session:
            body = RunCreate(command="echo race", submit_key=submit_key)
            return runs.create_run(session, owner=admin, body=body, settings=settings)[0].id

    for round_ in range(ROUNDS):
        results = _race(lambda: submit(f"{round_:032x}"))
        assert len(set(results)) == 1 and isinstance(results[0], int), results
    assert _count(database, Run) == ROUNDS
