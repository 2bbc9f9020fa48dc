"""The Alembic migrations build exactly the schema the ORM models describe,
and a restart on an existing data dir keeps its data and tokens."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cast.server.app import create_app
from cast.server.models import Base


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
