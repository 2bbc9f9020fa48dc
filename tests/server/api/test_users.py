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


def test_a_sign_in_link_is_spent_once_for_a_new_user_token(local):
    link = local.user.post("/users/me/sign-in-links")
    assert link.status_code == 201, link.text
    secret = link.json()["token"]
    assert link.json()["path"] == f"/#sign-in={secret}"
    assert local.user.get("/users/me", headers=_as(secret)).json()["detail"] == (
        "a sign-in link is not a token: open it in a browser")
    signed_in = local.user.post("/sign-in", json={"token": secret}, headers={"Authorization": ""})
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["user"]["name"] == "admin"
    assert local.user.get("/users/me", headers=_as(signed_in.json()["token"])).json()["name"] == "admin"
    again = local.user.post("/sign-in", json={"token": secret})
    assert again.status_code == 401
    assert again.json()["detail"] == "this sign-in link was already used; run `cast web` for a new one"
    unknown = local.user.post("/sign-in", json={"token": "cast_s_nope"})
    assert unknown.json()["detail"] == "this sign-in link is not valid; run `cast web` for a new one"
    names = [t["name"] for t in local.user.get("/tokens").json()["tokens"]]
    assert names == ["bootstrap", "bootstrap", "web sign-in"]  # the link itself is no token to list


def test_a_sign_in_link_is_no_token_to_revoke_either(local, app):
    from sqlalchemy import select

    from cast.server.models import Token

    secret = local.user.post("/users/me/sign-in-links").json()["token"]
    with app.state.database.transaction(write=False) as session:
        link_id = session.scalar(select(Token.id).where(Token.kind == "sign-in"))
    revoked = local.user.delete(f"/tokens/{link_id}")
    assert revoked.status_code == 404, revoked.text
    assert local.user.post("/sign-in", json={"token": secret}).status_code == 200  # still good, once


def test_an_expired_sign_in_link_is_refused(local, app):
    from sqlalchemy import update

    from cast.server.models import Token, utcnow

    secret = local.user.post("/users/me/sign-in-links").json()["token"]
    with app.state.database.transaction() as session:
        session.execute(update(Token).where(Token.kind == "sign-in").values(expires_at=utcnow()))
    refused = local.user.post("/sign-in", json={"token": secret})
    assert refused.status_code == 401
    assert refused.json()["detail"] == "this sign-in link expired; run `cast web` for a new one"


def test_open_sign_in_links_are_bounded_and_spent_ones_swept(local):
    from cast.server.services.users import MAX_OPEN_SIGN_IN_LINKS

    secrets = [local.user.post("/users/me/sign-in-links").json()["token"] for _ in range(MAX_OPEN_SIGN_IN_LINKS)]
    too_many = local.user.post("/users/me/sign-in-links")
    assert too_many.status_code == 409 and "sign-in links are still open" in too_many.json()["detail"]
    assert local.user.post("/sign-in", json={"token": secrets[0]}).status_code == 200
    assert local.user.post("/users/me/sign-in-links").status_code == 201  # the spent one made room
