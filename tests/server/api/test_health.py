"""GET /api/v1/health: answered without a token, with the installed version."""

from __future__ import annotations

from importlib.metadata import version

from fastapi.testclient import TestClient

from cast.server.api import health


def test_health_needs_no_token_and_names_the_installed_version(app):
    answer = TestClient(app).get("/api/v1/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "version": version("cast-runner")}
    assert health.VERSION == version("cast-runner") == app.version
