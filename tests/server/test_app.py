"""The app as a whole: every route's auth, error shapes, body cap, web viewer, OpenAPI."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from cast.server import app as app_module
from cast.server.api import deps
from cast.server.settings import Settings

PUBLIC = {"/api/v1/health", "/api/v1/protocol/statuses", "/api/v1/sign-in"}
WORKER_ROUTES = {
    ("POST", "/api/v1/workers"),
    ("POST", "/api/v1/workers/{worker_id}/lease"),
    ("POST", "/api/v1/workers/{worker_id}/heartbeat"),
    ("POST", "/api/v1/runs/{run_id}/heartbeat"),
    ("POST", "/api/v1/runs/{run_id}/status"),
    ("POST", "/api/v1/runs/{run_id}/statuses"),
    ("POST", "/api/v1/runs/{run_id}/logs"),
    ("POST", "/api/v1/runs/{run_id}/metrics"),
    ("PUT", "/api/v1/runs/{run_id}/outputs"),
    ("POST", "/api/v1/runs/{run_id}/outputs/staged"),
    ("GET", "/api/v1/workers/mounts/{resource}"),
    ("GET", "/api/v1/workers/code/{digest}"),
    ("POST", "/api/v1/runs/{run_id}/outputs/plan"),
    ("POST", "/api/v1/runs/{run_id}/outputs/commit"),
    ("GET", "/api/v1/workers/objects/{resource}"),
}
SAMPLE_PARAMS = {"run_id": "1", "worker_id": "w-1", "name": "data", "path": "a.txt", "label": "x",
                 "key": "0" * 64, "digest": "0" * 64, "token_id": "1", "resource": "runs/1", "search_id": "1"}


def _auth_dependencies(route: APIRoute) -> set:
    found, stack = set(), [route.original_route.dependant]
    while stack:
        dependant = stack.pop()
        found.add(dependant.call)
        stack.extend(dependant.dependencies)
    return found & {deps.current_user, deps.worker_auth}


def _api_routes(app):
    """(method, route) for every route of the app's table, included routers flattened."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.path.startswith("/api/v1"):
            for method in sorted(route.methods):
                yield method, route


def test_every_route_refuses_a_missing_or_wrong_kind_of_token(app, settings):
    client = TestClient(app)
    user = {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}
    worker = {"Authorization": f"Bearer {settings.worker_token_file.read_text().strip()}"}
    checked = set()
    for method, route in _api_routes(app):
        path = re.sub(r"\{(\w+)(:path)?\}", lambda m: SAMPLE_PARAMS[m.group(1)], route.path)
        key = (method, route.path.replace(":path", ""))
        if route.path in PUBLIC:
            # Answered without a token; a POST without its body is refused for the body.
            assert client.request(method, path).status_code == (422 if method == "POST" else 200), key
            continue
        checked.add(key)
        missing = client.request(method, path)
        assert missing.status_code == 401, (key, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.request(method, path, headers={"Authorization": "Bearer nope"}).status_code == 401, key
        auth = _auth_dependencies(route)
        wrong = user if key in WORKER_ROUTES else worker
        assert auth == {deps.worker_auth if key in WORKER_ROUTES else deps.current_user}, key
        refused = client.request(method, path, headers=wrong)
        assert refused.status_code == 403, (key, refused.text)
        if method != "HEAD":
            assert "token" in refused.json()["detail"]
    assert WORKER_ROUTES <= checked
    assert len(checked) >= 30


def test_every_route_that_takes_a_session_commits_it(app):
    routes = [route.original_route for _, route in _api_routes(app) if deps.uses_session(route.original_route)]
    assert len(routes) >= 20
    assert all(isinstance(route, deps.SessionRoute) for route in routes), [
        route.path for route in routes if not isinstance(route, deps.SessionRoute)]


def test_revoked_token_is_refused(local):
    created = local.user.post("/tokens", json={"name": "laptop"}).json()
    mine = {"Authorization": f"Bearer {created['token']}"}
    assert local.user.get("/users/me", headers=mine).json()["name"] == "admin"
    assert local.user.delete(f"/tokens/{created['id']}").json()["revoked_at"] is not None
    refused = local.user.get("/users/me", headers=mine)
    assert refused.status_code == 401
    assert refused.json() == {"detail": "token revoked"}


def test_errors_are_one_sentence(local):
    assert local.user.get("/runs/999").json() == {"detail": "run 999 not found"}
    schema = local.user.post("/runs", json={"command": 5})
    assert schema.status_code == 422
    assert schema.json()["detail"].startswith("command:")
    spec = local.user.post("/runs", json={"command": "x", "machine_type": "tpu"})
    assert spec.status_code == 400
    assert spec.json() == {"detail": "machine_type: machine type 'tpu' must be cpu, gpu or gpu:N"}
    assert local.user.get("/runs/99999999999999999999").status_code == 422
    bad_json = local.user.post("/runs", content=b"{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422
    assert isinstance(bad_json.json()["detail"], str)


def test_text_holding_a_nul_is_bad_input_on_either_database(local):
    # PostgreSQL's text cannot hold NUL, SQLite's can: both refuse it alike.
    body = local.worker.post("/workers", json={"name": "w", "executor": "lo\x00cal"})
    assert body.status_code == 422
    assert body.json() == {"detail": "executor must not contain a NUL character"}
    assert local.user.post("/runs", json={"command": "echo", "env": {"A": "b\x00"}}).status_code == 422
    # In the URL, refused before any route runs, so before any query.
    for path, params in (("/runs", {"label": "a\x00b"}), ("/runs/a%00b/logs", None), ("/uploads/a%00b", None)):
        refused = local.user.get(path, params=params)
        assert (refused.status_code, refused.json()) == (400, {"detail": "the URL must not contain a NUL character"})


def test_oversized_json_body_is_413(tmp_path):
    from cast.server.app import create_app
    from cast.server.settings import Settings

    settings = Settings(data_dir=tmp_path / "d", max_json_body_bytes=1000)
    client = TestClient(create_app(settings), base_url="http://testserver/api/v1",
                        headers={"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"})
    response = client.post("/runs", json={"command": "x" * 2000})
    assert response.status_code == 413
    assert "limit of 1000 bytes" in response.json()["detail"]
    assert client.get("/runs").json()["runs"] == []


def test_openapi_document_lists_the_api(app):
    document = TestClient(app).get("/api/v1/openapi.json").json()
    assert "/api/v1/runs" in document["paths"]
    assert "/api/v1/runs/{run_id}/logs/follow" in document["paths"]
    assert TestClient(app).get("/api/v1/docs").status_code == 200


def test_web_viewer_is_served_at_root(app):
    response = TestClient(app).get("/")
    assert response.status_code == 200, "the package ships server/web/index.html"
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (app_module.WEB_DIR / "index.html").read_text()
    assert TestClient(app).get("/static/app.js").status_code == 200


def test_a_viewer_missing_from_the_install_is_a_clear_404(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "WEB_DIR", tmp_path / "no-web")
    response = TestClient(app_module.create_app(Settings(data_dir=tmp_path / "data"))).get("/")
    assert response.status_code == 404
    assert response.json() == {"detail": "the web viewer is not installed"}


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py"])
def test_static_files_stay_in_their_folder(app, path):
    assert TestClient(app).get(path).status_code == 404
