"""cast.server.services.workers: registration, lookup, last-seen times, and
which workers may be leased runs."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cast.server.errors import Forbidden, WorkerNotFound
from cast.server.models import User, Worker
from cast.server.schemas.workers import WorkerRegister
from cast.server.services import users, workers


def _register(session, *, sandboxed: bool):
    return workers.register(session, body=WorkerRegister(name="box", executor="local", gpus=[0, 1],
                                                         sandboxed=sandboxed))


def test_registered_workers_get_distinct_ids_and_a_claiming_one_is_found_and_marked_seen(app):
    with app.state.database.transaction() as session:
        first, second = _register(session, sandboxed=True), _register(session, sandboxed=True)
        assert first.id != second.id and first.id.startswith("w-")
        before = first.last_seen_at
        found = workers.claiming(session, worker_id=first.id)
        assert (found.id, found.name, found.executor, found.sandboxed) == (first.id, "box", "local", True)
        seen = session.scalar(select(Worker.last_seen_at).where(Worker.id == first.id))
        assert seen > before
        assert session.scalar(select(Worker.last_seen_at).where(Worker.id == second.id)) == second.last_seen_at
        with pytest.raises(WorkerNotFound, match="worker 'w-gone' not found; register again"):
            workers.claiming(session, worker_id="w-gone")


def test_an_unsandboxed_worker_is_refused_only_once_a_second_user_exists(app, settings):
    with app.state.database.transaction() as session:
        open_worker, sandboxed = _register(session, sandboxed=False), _register(session, sandboxed=True)
        workers.check_may_lease(session, worker=open_worker, settings=settings)
        admin = session.scalar(select(User).where(User.name == users.ADMIN_NAME))
        users.create_user(session, viewer=admin, name="alice", admin=False)
        workers.check_may_lease(session, worker=sandboxed, settings=settings)
        with pytest.raises(Forbidden, match="worker 'box' runs its runs unsandboxed"):
            workers.check_may_lease(session, worker=open_worker, settings=settings)
        allowed = settings.model_copy(update={"allow_unsandboxed_workers": True})
        workers.check_may_lease(session, worker=open_worker, settings=allowed)
