"""Users and tokens: admins manage them, users see only their own runs, and
each token kind calls only its own routes."""

from __future__ import annotations


def _as(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_users_see_and_act_on_only_their_own_runs(local):
    created = local.user.post("/users", json={"name": "bob"})
    assert created.status_code == 201 and created.json()["admin"] is False
    bob = _as(created.json()["token"]["token"])
    admins_run = local.create_run()["id"]
    bobs_run = local.user.post("/runs", json={"command": "true"}, headers=bob).json()
    assert bobs_run["owner"] == "bob"
    assert [r["id"] for r in local.user.get("/runs", headers=bob).json()["runs"]] == [bobs_run["id"]]
    for method, path in [("GET", f"/runs/{admins_run}"), ("POST", f"/runs/{admins_run}/stop"),
                         ("POST", f"/runs/{admins_run}/kill"), ("GET", f"/runs/{admins_run}/logs"),
                         ("GET", f"/runs/{admins_run}/outputs"), ("GET", f"/runs/{admins_run}/logs/download")]:
        response = local.user.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path, response.text)
    assert local.run(admins_run)["status"] == "machine_requested"
    assert {r["id"] for r in local.user.get("/runs").json()["runs"]} == {admins_run, bobs_run["id"]}
    assert local.user.get("/users/me", headers=bob).json()["name"] == "bob"


def test_only_admins_manage_users_and_worker_tokens(local):
    bob = _as(local.user.post("/users", json={"name": "bob"}).json()["token"]["token"])
    assert local.user.post("/users", json={"name": "eve"}, headers=bob).status_code == 403
    assert local.user.get("/users", headers=bob).status_code == 403
    assert local.user.post("/tokens", json={"kind": "worker"}, headers=bob).status_code == 403
    assert local.user.post("/tokens", json={"user": "admin"}, headers=bob).status_code == 403
    assert local.user.post("/users", json={"name": "bob"}).status_code == 409
    assert local.user.post("/users", json={"name": "../x"}).status_code == 422
    assert [u["name"] for u in local.user.get("/users").json()["users"]] == ["admin", "bob"]


def test_tokens_are_listed_without_secrets_and_revoked(local, settings):
    worker = local.user.post("/tokens", json={"kind": "worker", "name": "gpu box"}).json()
    assert worker["token"].startswith("cast_w_") and worker["user"] is None
    assert local.user.post("/workers", json={"name": "w", "executor": "local"}, headers=_as(worker["token"])).status_code == 200
    listed = local.user.get("/tokens").json()["tokens"]
    assert all("token" not in t for t in listed)
    assert settings.admin_token_file.read_text().strip() not in local.user.get("/tokens").text
    assert {t["name"] for t in listed} == {"bootstrap", "gpu box"}
    bob = local.user.post("/users", json={"name": "bob"}).json()
    bobs_tokens = local.user.get("/tokens", headers=_as(bob["token"]["token"])).json()["tokens"]
    assert [t["user"] for t in bobs_tokens] == ["bob"]
    assert local.user.delete(f"/tokens/{worker['id']}", headers=_as(bob["token"]["token"])).status_code == 404
    assert local.user.delete(f"/tokens/{worker['id']}").status_code == 200
    assert local.user.post("/workers", json={"name": "w", "executor": "local"}, headers=_as(worker["token"])).status_code == 401
