"""A revoked token is refused at once on every replica (PostgreSQL, two real
server processes): each remembers the tokens it found valid (users.Tokens),
and a revocation through one replica reaches the other by NOTIFY before it
answers from memory again; while a replica's listener is away it answers
no token from memory. One process (SQLite) is tests/server/services/test_users.py."""

from __future__ import annotations

import time

import psycopg
from sqlalchemy.engine import make_url

from tests.server.test_events import _replicas


def _new_token(user_a, kind: str) -> tuple[int, dict]:
    created = user_a.post("/tokens", json={"kind": kind, "name": f"{kind} on b"})
    assert created.status_code == 201, created.text
    return created.json()["id"], {"Authorization": f"Bearer {created.json()['token']}"}


def _call(client, kind: str, bearer: dict):
    """A request only a `kind` token may make."""
    if kind == "worker":
        return client.post("/workers", json={"name": "w", "executor": "local", "gpus": []}, headers=bearer)
    return client.get("/users/me", headers=bearer)


def test_a_token_revoked_through_one_replica_is_refused_by_the_other_on_its_next_request(
        start_server, postgres_databases, tmp_path):
    user_a, _, user_b, _ = _replicas(start_server, postgres_databases, tmp_path)
    for kind in ("worker", "user"):
        token_id, bearer = _new_token(user_a, kind)
        for _ in range(3):  # found valid by B, then answered from its memory
            assert _call(user_b, kind, bearer).status_code == 200
        assert user_a.delete(f"/tokens/{token_id}").status_code == 200
        refused = _call(user_b, kind, bearer)  # no wait
        assert refused.status_code == 401 and refused.json()["detail"] == "token revoked", kind
    # B still answers the tokens nobody revoked.
    assert user_b.get("/users/me").json()["name"] == "admin"


def _listeners(url: str) -> list[int]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        return [pid for (pid,) in connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'cast listener' AND datname = current_database()")]


def _cut_listeners(url: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'cast listener' AND datname = current_database()")


def test_a_revocation_made_while_a_replicas_listener_was_away_is_not_missed(start_server, postgres_databases,
                                                                             tmp_path):
    """The NOTIFY of a revocation made while B's listener is gone never
    reaches B; B must not answer the token from memory, neither what it
    remembered before nor what it looked up while deaf, neither while it
    listens again nor after."""
    url = postgres_databases()
    a = start_server(data_dir=tmp_path / "a", env={"CAST_DATABASE_URL": url})
    b = start_server(data_dir=tmp_path / "b", env={"CAST_DATABASE_URL": url})
    import httpx

    user_a = httpx.Client(base_url=f"{a.url}/api/v1", headers={"Authorization": f"Bearer {a.admin_token}"},
                          timeout=60)
    user_b = httpx.Client(base_url=f"{b.url}/api/v1", headers={"Authorization": f"Bearer {a.admin_token}"},
                          timeout=60)
    deadline = time.monotonic() + 60
    while len(_listeners(url)) < 2:
        assert time.monotonic() < deadline, "the replicas' listeners did not connect"
        time.sleep(0.05)
    # A listener reconnects a second after it lost its connection: a
    # revocation slower than that (a loaded machine) is tried again.
    for _attempt in range(5):
        token_id, bearer = _new_token(user_a, "worker")
        for _ in range(3):
            assert _call(user_b, "worker", bearer).status_code == 200
        _cut_listeners(url)
        for _ in range(2):  # looked up while B may be deaf: not to be remembered then
            assert _call(user_b, "worker", bearer).status_code == 200
        assert user_a.delete(f"/tokens/{token_id}").status_code == 200
        missed = not _listeners(url)  # nobody listened when the revocation was sent
        refused = _call(user_b, "worker", bearer)
        assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"
        if missed:
            break
    else:
        raise AssertionError("the listeners were back before every revocation: nothing was tested")
    while len(_listeners(url)) < 2:
        assert time.monotonic() < deadline + 60, "the replicas' listeners did not reconnect"
        time.sleep(0.05)
    assert _call(user_b, "worker", bearer).status_code == 401
    assert user_b.get("/users/me").status_code == 200
    for server in (a, b):
        assert "Traceback" not in server.log_path.read_text(errors="replace")
