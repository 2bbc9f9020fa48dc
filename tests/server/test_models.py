"""cast.server.models: times stored as naive UTC come back timezone-aware and
the same instant, whatever zone they were given in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from cast.server.models import Run, utcnow


def test_utcnow_is_aware_utc():
    now = utcnow()
    assert now.tzinfo is timezone.utc and abs(now - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_times_round_trip_as_the_same_utc_instant(local, app):
    run_id = local.create_run()["id"]
    given = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=5)))
    with app.state.database.transaction() as session:
        session.get(Run, run_id).created_at = given
    with app.state.database.transaction(write=False) as session:
        stored = session.execute(text("SELECT created_at FROM runs WHERE id = :id"), {"id": run_id}).scalar()
        # Naive UTC on disk: text on SQLite, a timestamp without time zone on PostgreSQL.
        assert str(stored).startswith("2026-03-01 07:30:00")
        back = session.get(Run, run_id).created_at
        assert back == given and back.tzinfo == timezone.utc and back.hour == 7
    assert local.run(run_id)["created_at"].startswith("2026-03-01T07:30:00")
