"""cast.server.services.users: bootstrap of an empty database, authentication
by the token's hash, and who may create, list and revoke users and tokens."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from cast.server import events
from cast.server.errors import Forbidden, NameTaken, NotAuthenticated, TokenNotFound, UserNotFound
from cast.server.models import Token, User
from cast.server.services import users


def _admin(session) -> User:
    return session.scalar(select(User).where(User.name == users.ADMIN_NAME))


def test_bootstrap_writes_private_tokens_that_authenticate_and_runs_once(app, settings):
    admin_secret = settings.admin_token_file.read_text().strip()
    worker_secret = settings.worker_token_file.read_text().strip()
    for path in (settings.admin_token_file, settings.worker_token_file):
        assert path.stat().st_mode & 0o777 == 0o600
    with app.state.database.transaction() as session:
        bearer = users.authenticate(session, secret=admin_secret)
        assert (bearer.kind, bearer.user.name, bearer.user.is_admin) == ("user", "admin", True)
        bearer = users.authenticate(session, secret=worker_secret)
        assert (bearer.kind, bearer.user) == ("worker", None)
        # Only hashes are stored.
        assert session.scalar(select(func.count()).where(Token.token_hash == admin_secret)) == 0
        assert not users.bootstrap(session, settings=settings)
    assert settings.admin_token_file.read_text().strip() == admin_secret


def test_unknown_and_revoked_tokens_are_refused(app):
    with app.state.database.transaction() as session:
        admin = _admin(session)
        with pytest.raises(NotAuthenticated, match="unknown token"):
            users.authenticate(session, secret="cast_u_nothing")
        token, secret = users.create_token(session, viewer=admin, kind="user", name="laptop", user_name=None)
        assert users.authenticate(session, secret=secret).user.id == admin.id
        revoked, owner = users.revoke_token(session, viewer=admin, token_id=token.id)
        assert owner == "admin" and revoked.revoked_at is not None
        first = revoked.revoked_at
        assert users.revoke_token(session, viewer=admin, token_id=token.id)[0].revoked_at == first
        with pytest.raises(NotAuthenticated, match="token revoked"):
            users.authenticate(session, secret=secret)


def test_only_an_admin_manages_users_and_other_users_tokens(app):
    with app.state.database.transaction() as session:
        admin = _admin(session)
        alice, _, alice_secret = users.create_user(session, viewer=admin, name="alice", admin=False)
        assert users.authenticate(session, secret=alice_secret).user.id == alice.id
        with pytest.raises(NameTaken, match="user 'alice' already exists"):
            users.create_user(session, viewer=admin, name="alice", admin=False)
        with pytest.raises(Forbidden, match="only an admin may create users"):
            users.create_user(session, viewer=alice, name="bob", admin=False)
        with pytest.raises(Forbidden, match="only an admin may list users"):
            users.list_users(session, viewer=alice)
        assert [u.name for u in users.list_users(session, viewer=admin)] == ["admin", "alice"]
        with pytest.raises(Forbidden, match="only an admin may create worker tokens"):
            users.create_token(session, viewer=alice, kind="worker", name="w", user_name=None)
        with pytest.raises(Forbidden, match="only an admin may create tokens for other users"):
            users.create_token(session, viewer=alice, kind="user", name="x", user_name="admin")
        own, _ = users.create_token(session, viewer=alice, kind="user", name="mine", user_name="alice")
        assert own.user_id == alice.id
        for_alice, _ = users.create_token(session, viewer=admin, kind="user", name="given", user_name="alice")
        assert for_alice.user_id == alice.id
        with pytest.raises(UserNotFound, match="user 'nobody' not found"):
            users.create_token(session, viewer=admin, kind="user", name="x", user_name="nobody")


def test_a_user_sees_and_revokes_only_their_own_tokens(app):
    with app.state.database.transaction() as session:
        admin = _admin(session)
        alice, alice_token, _ = users.create_user(session, viewer=admin, name="alice", admin=False)
        assert [(t.id, name) for t, name in users.list_tokens(session, viewer=alice)] == [(alice_token.id, "alice")]
        everyone = users.list_tokens(session, viewer=admin)
        assert {name for _, name in everyone} == {"admin", None, "alice"}
        admin_token = next(t for t, name in everyone if name == "admin")
        with pytest.raises(TokenNotFound, match=f"token {admin_token.id} not found"):
            users.revoke_token(session, viewer=alice, token_id=admin_token.id)
        assert admin_token.revoked_at is None
        with pytest.raises(TokenNotFound):
            users.revoke_token(session, viewer=admin, token_id=10_000)


def test_a_revoked_token_is_refused_at_once_though_it_was_answered_from_memory(local):
    """Worker and user tokens alike are remembered once found valid; revoking
    one makes the very next request with it a 401, with no wait."""
    for kind in ("worker", "user"):
        created = local.user.post("/tokens", json={"kind": kind, "name": "laptop"})
        assert created.status_code == 201, created.text
        bearer = {"Authorization": f"Bearer {created.json()['token']}"}
        route = ("/workers", {"name": "w", "executor": "local"}) if kind == "worker" else ("/tokens", None)
        for _ in range(3):  # found valid, then answered from memory
            answer = local.user.post(route[0], json=route[1], headers=bearer) if route[1] else \
                local.user.get(route[0], headers=bearer)
            assert answer.status_code == 200, answer.text
        assert local.user.delete(f"/tokens/{created.json()['id']}").status_code == 200
        refused = local.user.post(route[0], json=route[1], headers=bearer) if route[1] else \
            local.user.get(route[0], headers=bearer)
        assert refused.status_code == 401 and refused.json()["detail"] == "token revoked", kind


def test_a_token_found_valid_is_answered_from_memory_until_a_revocation():
    """One lookup for many requests; a revocation of any token, heard before
    or during a lookup, keeps its result from being remembered."""
    notifier = events.Notifier()  # one process's: it hears every change
    tokens = users.Tokens(notifier)
    bearer = users.Bearer(token_id=1, kind="worker", user=None)

    async def get(digest: str) -> users.Bearer | None:
        return await tokens.get(digest)

    generation = tokens.generation()
    tokens.remember("a", bearer, generation)
    assert asyncio.run(get("a")) is bearer
    notifier.notify(events.token_key(99))
    assert asyncio.run(get("a")) is None
    tokens.remember("b", bearer, generation)  # looked up before the revocation was heard
    assert asyncio.run(get("b")) is None
    tokens.remember("b", bearer, tokens.generation())
    assert asyncio.run(get("b")) is bearer
