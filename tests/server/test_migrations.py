"""The Alembic migrations build exactly the schema the ORM models describe,
a restart on an existing data dir keeps its data and tokens, and data from an
older revision survives an upgrade."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from cast.server.app import create_app
from cast.server.db import MIGRATIONS_DIR
from cast.server.models import Base
from tests.factories import page_entries

from .conftest import make_tar


def test_migrations_match_the_models(app):
    with app.state.database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_restart_keeps_runs_and_tokens(local, settings):
    run_id = local.create_run()["id"]
    token = settings.admin_token_file.read_text()
    assert oct(settings.admin_token_file.stat().st_mode & 0o777) == "0o600"
    assert oct(settings.worker_token_file.stat().st_mode & 0o777) == "0o600"
    again = create_app(settings)
    assert settings.admin_token_file.read_text() == token
    from fastapi.testclient import TestClient

    client = TestClient(again, headers={"Authorization": f"Bearer {token.strip()}"})
    assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "machine_requested"
    assert local.create_run()["id"] == run_id + 1


def _migrate(app, revision: str, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with app.state.database.engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_a_run_queued_on_a_code_bundle_before_0002_still_gets_its_code(local, app, settings):
    """0002 keys bundles by owner and stores them by digest; a bundle stored
    before it keeps its file (named by its key) and a run queued before it
    (its spec has no code_digest) is still served its code."""
    body = make_tar({"train.py": b"print('old')\n"})
    key = hashlib.sha256(body).hexdigest()  # so the bundle survives the way down (see 0002)
    assert local.user.put(f"/code/{key}", content=body).status_code == 201
    run_id = local.create_run(code_bundle=key)["id"]

    _migrate(app, "0001", down=True)
    with app.state.database.engine.begin() as connection:
        runs = sa.table("runs", sa.column("id"), sa.column("spec", sa.JSON))
        spec = connection.execute(sa.select(runs.c.spec).where(runs.c.id == run_id)).scalar_one()
        del spec["code_digest"]  # as 0001 wrote it
        connection.execute(sa.update(runs).where(runs.c.id == run_id).values(spec=spec))
    _migrate(app, "head")

    lease = local.lease(local.register())
    assert lease["run_id"] == run_id and lease["spec"]["code_digest"] is None
    assert local.worker.get(f"/workers/code/{lease['spec']['code_bundle']}").content == body
    assert local.user.head(f"/code/{key}").status_code == 200
    with app.state.database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_the_way_down_and_up_again_keeps_every_runs_worker_and_history(local, app):
    """A downgrade that rebuilds a table (SQLite's batch copy) would cascade
    into runs: their transitions deleted, their worker forgotten."""
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    assert lease["run_id"] == run_id
    before = local.user.get(f"/runs/{run_id}").json()

    _migrate(app, "0002", down=True)
    _migrate(app, "head")

    after = local.user.get(f"/runs/{run_id}").json()
    assert after["worker"] == before["worker"] is not None
    with app.state.database.engine.connect() as connection:
        runs = sa.table("runs", sa.column("id"), sa.column("worker_id"))
        assert connection.execute(sa.select(runs.c.worker_id).where(runs.c.id == run_id)).scalar_one() is not None
    assert [t["status"] for t in after["transitions"]] == [t["status"] for t in before["transitions"]] == [
        "machine_requested", "building"]


def test_logs_kept_per_line_before_0006_read_the_same_after_it_and_back(local, app):
    """0006 moves `log_entries` into `log_chunks` (one chunk per old line) and
    the way down expands chunks back into lines: offsets, streams, times and
    text survive both ways, and later appends continue the numbering."""
    local.create_run()
    lease = local.lease(local.register())
    run_id, token = lease["run_id"], lease["lease_token"]
    batch = [{"stream": "stdout", "lines": [f"out {i}" for i in range(5)]},
             {"stream": "stderr", "lines": ["ünïcode \\ \"quoted\""]}, {"stream": "stdout", "lines": [""]}]
    assert local.worker.post(f"/runs/{run_id}/logs",
                             json={"lease_token": token, "seq": 0, "runs": batch}).status_code == 200
    before = local.user.get(f"/runs/{run_id}/logs").json()
    lines = page_entries(before)

    _migrate(app, "0005", down=True)
    with app.state.database.engine.begin() as connection:
        entries = sa.table("log_entries", sa.column("run_id"), sa.column("offset"), sa.column("text"))
        texts = connection.execute(sa.select(entries.c.text).where(entries.c.run_id == run_id)
                                   .order_by(entries.c.offset)).scalars().all()
    assert texts == [entry["text"] for entry in lines]
    _migrate(app, "head")

    # Chunked again one per old line: the same lines, offsets, streams and times.
    assert page_entries(local.user.get(f"/runs/{run_id}/logs").json()) == lines
    assert local.worker.post(f"/runs/{run_id}/logs", json={
        "lease_token": token, "seq": 7, "runs": [{"stream": "stdout", "lines": ["after"]}]}).json()[
        "next_offset"] == before["next_offset"] + 1
    tail = page_entries(local.user.get(f"/runs/{run_id}/logs", params={"offset": -2}).json())
    assert [(e["offset"], e["text"]) for e in tail] == [(before["next_offset"] - 1, ""),
                                                        (before["next_offset"], "after")]


def test_the_way_down_past_0007_stops_while_a_log_is_archived(local, app):
    """Before 0007 a log lives only in rows: an archived one (its rows gone,
    its key in runs.log_archive) would be lost by dropping the column."""
    run_id = local.create_run()["id"]
    with app.state.database.engine.begin() as connection:
        runs = sa.table("runs", sa.column("id"), sa.column("log_archive"))
        connection.execute(sa.update(runs).where(runs.c.id == run_id).values(log_archive="logs/1/abc.ndjson"))
    with pytest.raises(RuntimeError, match=r"cannot downgrade below 0007: the logs of 1 run\(s\) are archived"):
        _migrate(app, "0006", down=True)
    with app.state.database.engine.connect() as connection:  # nothing changed
        assert connection.execute(sa.select(runs.c.log_archive).where(runs.c.id == run_id)).scalar_one() == \
            "logs/1/abc.ndjson"
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    with app.state.database.engine.begin() as connection:
        connection.execute(sa.update(runs).where(runs.c.id == run_id).values(log_archive=None))
    _migrate(app, "0006", down=True)
    _migrate(app, "head")

