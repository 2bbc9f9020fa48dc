"""cast.server.services.reaper: expired leases interrupted and requeued while
retries are left, and the fresh lease period after a restart, which a replica
starting beside another that serves does not give. (Runs overdue in a bounded
stage: tests/reliability/test_stuck_runs.py, through a real server and worker.)"""

from __future__ import annotations

from cast.server.services import reaper

from ..conftest import expire_lease

# Only the leases a test expires (`expire_lease`) may lapse: a live run's must
# outlast a slow machine.
LEASE_SECONDS = 60


def test_the_reaper_interrupts_expired_leases_and_requeues_runs_with_retries_left(local, app, settings):
    once = local.create_run()["id"]
    twice = local.create_run(retries=1)["id"]
    live = local.create_run()["id"]
    worker = local.register()
    leased = {lease["run_id"]: lease for lease in (local.lease(worker) for _ in range(3))}
    assert set(leased) == {once, twice, live}
    expire_lease(app, once)
    expire_lease(app, twice)
    database = app.state.database
    with database.transaction(write=False) as session:
        assert reaper.any_expired(session)
    with database.transaction() as session:
        assert sorted(reaper.reap_expired(session, settings=settings)) == [once, twice]
    with database.transaction(write=False) as session:
        assert not reaper.any_expired(session)
    assert local.run(once)["status"] == "interrupted"
    assert local.run(once)["reason"] == "worker lost: no heartbeat for 60s"
    assert local.run(twice)["status"] == "machine_requested" and local.run(twice)["attempt"] == 2
    assert local.run(live)["status"] == "building"
    beat = local.worker.post(f"/runs/{once}/heartbeat", json={"lease_token": leased[once]["lease_token"]})
    assert beat.status_code == 409


def test_a_restart_gives_every_leased_run_a_fresh_lease_period(local, app, settings):
    run_id = local.create_run()["id"]
    queued = local.create_run()["id"]
    local.lease(local.register())
    expire_lease(app, run_id)
    with app.state.database.transaction() as session:
        assert reaper.extend_leases_after_restart(session, settings=settings) == 1
    with app.state.database.transaction() as session:
        assert reaper.reap_expired(session, settings=settings) == []
    assert local.run(run_id)["status"] == "building"
    assert local.run(queued)["status"] == "machine_requested"


def test_a_replica_starting_while_another_serves_leaves_the_leases_alone(local, app, settings):
    """A lease renewed moments ago says a replica hears the workers: one lapsed
    beside it is a lost worker's, and is reaped, not extended."""
    lapsed = local.create_run()["id"]
    heard = local.create_run()["id"]
    worker = local.register()
    local.lease(worker), local.lease(worker)
    expire_lease(app, lapsed)  # `heard` was just leased: its lease runs a whole period ahead
    with app.state.database.transaction() as session:
        assert reaper.extend_leases_after_restart(session, settings=settings) == 0
    with app.state.database.transaction() as session:
        assert reaper.reap_expired(session, settings=settings) == [lapsed]
    assert local.run(lapsed)["status"] == "interrupted"
    assert local.run(heard)["status"] == "building"
