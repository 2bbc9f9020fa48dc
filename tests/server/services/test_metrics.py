"""The metrics service: `aggregate` (last by offset, min, max, none), batches
by seq, a new attempt's points numbered after the last, the per-run point cap,
a read bounded by the run's size it read first."""

from __future__ import annotations

import pytest

from cast.protocol.metrics import MetricPoint
from cast.server.db import Database
from cast.server.errors import BadRequest, LeaseLost
from cast.server.services import metrics, reaper

from ..conftest import expire_lease
from .conftest import admin_of


@pytest.fixture
def database(app) -> Database:
    return app.state.database


@pytest.fixture
def leased(local) -> tuple[int, str]:
    """A run leased to a worker: (its id, the lease token)."""
    local.create_run()
    lease = local.lease(local.register())
    return lease["run_id"], lease["lease_token"]


def send(database: Database, leased: tuple[int, str], seq: int, *points: tuple) -> int:
    run_id, token = leased
    with database.transaction() as session:
        return metrics.append_worker_batch(session, run_id=run_id, lease_token=token, seq=seq,
                                           points=[MetricPoint(n, v, s) for n, v, s in points])


def test_aggregate_is_the_last_by_offset_the_min_or_the_max(database, leased):
    run_id = leased[0]
    send(database, leased, 0, ("loss", 3.0, 5), ("loss", 1.0, 6), ("loss", 2.0, 2), ("acc", 9.0, 0))
    with database.transaction(write=False) as session:
        assert metrics.aggregate(session, run_id=run_id, name="loss", agg="last") == 2.0  # the step does not order
        assert metrics.aggregate(session, run_id=run_id, name="loss", agg="min") == 1.0
        assert metrics.aggregate(session, run_id=run_id, name="loss", agg="max") == 3.0
        assert metrics.aggregate(session, run_id=run_id, name="none", agg="last") is None
        assert metrics.aggregate(session, run_id=run_id, name="none", agg="max") is None
        with pytest.raises(BadRequest):
            metrics.aggregate(session, run_id=run_id, name="loss", agg="mean")


def test_a_batch_from_beyond_what_was_stored_is_kept_and_a_repeat_is_not(database, leased):
    assert send(database, leased, 0, ("a", 1.0, None)) == 1
    assert send(database, leased, 0, ("a", 1.0, None), ("a", 2.0, None)) == 2
    assert send(database, leased, 2, ("a", 3.0, None)) == 3


def test_points_past_the_run_cap_are_dropped(database, leased, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_POINTS_PER_RUN", 5)
    assert send(database, leased, 0, *[("a", float(i), i) for i in range(4)]) == 4
    assert send(database, leased, 4, *[("a", float(i), i) for i in range(4, 8)]) == 5
    with database.transaction(write=False) as session:
        assert metrics.aggregate(session, run_id=leased[0], name="a", agg="last") == 4.0


def test_a_new_attempt_starts_at_seq_0_and_its_points_follow_the_last(local, app, settings, database):
    run_id = local.create_run(retries=1)["id"]
    worker_id = local.register()
    first = local.lease(worker_id)
    assert send(database, (run_id, first["lease_token"]), 0, ("loss", 1.0, 0), ("loss", 0.5, 1)) == 2
    expire_lease(app, run_id)  # the worker died: its lease runs out and the reaper requeues
    with database.transaction() as session:
        assert reaper.reap_expired(session, settings=settings) == [run_id]
    second = local.lease(worker_id)
    assert second["run_id"] == run_id and second["attempt"] == 2
    assert send(database, (run_id, second["lease_token"]), 0, ("loss", 0.9, 0)) == 3
    with pytest.raises(LeaseLost):  # the dead attempt's late retry
        send(database, (run_id, first["lease_token"]), 0, ("loss", 1.0, 0))
    points = local.user.get(f"/runs/{run_id}/metrics/points").json()["points"]
    assert [(p["offset"], p["step"], p["value"]) for p in points] == [(0, 0, 1.0), (1, 1, 0.5), (2, 0, 0.9)]


def test_a_point_committed_between_the_size_and_the_points_reads_is_answered_once(database, leased, monkeypatch):
    """On PostgreSQL each statement of a read sees what was committed before it:
    a batch committed after the run's size was read must wait for the next read."""
    run_id = leased[0]
    send(database, leased, 0, ("loss", 3.0, 0), ("loss", 2.0, 1))
    visible_run, admin = metrics.runs.visible_run, admin_of(database)

    def written_meanwhile(session, **kwargs):
        run = visible_run(session, **kwargs)
        send(database, leased, 2, ("loss", 1.0, 2))  # another transaction, committed
        monkeypatch.setattr(metrics.runs, "visible_run", visible_run)
        return run

    monkeypatch.setattr(metrics.runs, "visible_run", written_meanwhile)
    with database.transaction(write=False) as session:
        first = metrics.read_points(session, run_id=run_id, viewer=admin, offset=0, limit=100)
    with database.transaction(write=False) as session:
        second = metrics.read_points(session, run_id=run_id, viewer=admin, offset=first["next_offset"], limit=100)
    offsets = [point["offset"] for page in (first, second) for point in page["points"]]
    assert offsets == [0, 1, 2]
    assert [point["value"] for point in second["points"]] == [1.0] and second["next_offset"] == 3
