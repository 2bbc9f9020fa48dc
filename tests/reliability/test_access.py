"""Access: users and tokens managed from the CLI, tokens stored hashed, each
user confined to their own runs and uploads, each kind of token to its own
routes (walked over the live server's whole route table, revoked tokens
included), and the embedded mode's token files private to their owner."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess

import httpx
import pytest
import sqlalchemy

from cast.server.app import create_app
from cast.server.settings import Settings
from tests.factories import wait_status
from tests.conftest import wait_until
from tests.server.test_app import PUBLIC, SAMPLE_PARAMS, WORKER_ROUTES, _api_routes

# Admin-only routes, with a valid body: the admin check comes after the body's.
ADMIN_ONLY = {("GET", "/api/v1/users"): None, ("POST", "/api/v1/users"): {"name": "intruder"}}


def _one_error(result, needle: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cast: error: "), result.stderr
    assert needle in lines[0], (needle, lines[0])


def _secret(result) -> str:
    assert result.returncode == 0, result
    secret = result.stdout.strip()
    assert re.fullmatch(r"cast_[uw]_[A-Za-z0-9_-]{40,}", secret), result.stdout
    return secret


def test_admins_manage_users_and_tokens_from_the_cli(module_cli, module_server):
    created = module_cli("user", "create", "alice")
    alice = _secret(created)
    assert "shown only once" in created.stderr
    as_alice = {"CAST_TOKEN": alice}
    users = {u["name"]: u["admin"] for u in module_cli("user", "ls", "--json").json()}
    assert users["alice"] is False and users["admin"] is True
    assert "alice" in module_cli("user", "ls").stdout

    # A user may not manage users, worker tokens or other users' tokens.
    _one_error(module_cli("user", "ls", env=as_alice), "only an admin")
    _one_error(module_cli("user", "create", "eve", env=as_alice), "only an admin")
    _one_error(module_cli("token", "create", "--worker", env=as_alice), "only an admin")
    _one_error(module_cli("token", "create", "--user", "admin", env=as_alice), "only an admin")

    laptop = _secret(module_cli("token", "create", "--name", "laptop", env=as_alice))
    assert module_cli("ps", env={"CAST_TOKEN": laptop}).returncode == 0
    mine = module_cli("token", "ls", "--json", env=as_alice).json()
    assert {t["user"] for t in mine} == {"alice"} and {t["name"] for t in mine} == {"initial", "laptop"}
    assert all("token" not in t for t in mine)
    listed = module_cli("token", "ls").stdout
    assert "laptop" in listed and "bootstrap" in listed and alice not in listed and laptop not in listed
    everyone = {t["name"] for t in module_cli("token", "ls", "--json").json()}
    assert {"bootstrap", "initial", "laptop"} <= everyone

    # An admin may make a token for a user, and a worker token.
    for_alice = _secret(module_cli("token", "create", "--user", "alice", "--name", "ci"))
    assert module_cli("ps", env={"CAST_TOKEN": for_alice}).returncode == 0
    box = module_cli("token", "create", "--worker", "--name", "gpu box", "--json").json()
    assert box["kind"] == "worker" and box["user"] is None
    register = {"name": "box", "executor": "local"}
    with module_server.api(box["token"]) as api:
        assert api.post("/workers", json=register).status_code == 200
    _one_error(module_cli("ps", env={"CAST_TOKEN": box["token"]}), "needs a user token")

    # Revoked tokens are refused from then on; a user cannot revoke another's.
    laptop_id = next(t["id"] for t in mine if t["name"] == "laptop")
    revoked = module_cli("token", "revoke", str(laptop_id), env=as_alice)
    assert revoked.returncode == 0 and revoked.stdout == f"Token {laptop_id} revoked\n"
    _one_error(module_cli("ps", env={"CAST_TOKEN": laptop}), "token revoked")
    assert module_cli("ps", env=as_alice).returncode == 0
    admin_token_id = next(t["id"] for t in module_cli("token", "ls", "--json").json()
                          if t["user"] == "admin" and t["name"] == "bootstrap")
    _one_error(module_cli("token", "revoke", str(admin_token_id), env=as_alice), "not found")
    assert module_cli("token", "revoke", str(box["id"])).returncode == 0
    with module_server.api(box["token"]) as api:
        assert api.post("/workers", json=register).status_code == 401
    assert module_cli("ps").returncode == 0


def test_tokens_are_stored_only_as_hashes(module_cli, module_server):
    secrets = [module_server.admin_token, module_server.worker_token,
               _secret(module_cli("user", "create", "hashed")),
               _secret(module_cli("token", "create", "--user", "hashed")),
               _secret(module_cli("token", "create", "--worker"))]
    database = module_server.data_dir / "cast.db"
    engine = sqlalchemy.create_engine(module_server.env.get("CAST_DATABASE_URL") or f"sqlite:///{database}")
    with engine.connect() as connection:
        stored = set(connection.execute(sqlalchemy.text("SELECT token_hash FROM tokens")).scalars())
    engine.dispose()
    assert {hashlib.sha256(s.encode()).hexdigest() for s in secrets} <= stored
    # No secret anywhere in the database, its write-ahead log or the server's log.
    for path in [database, database.with_name("cast.db-wal"), module_server.log_path]:
        if path.exists():
            content = path.read_bytes()
            assert not [s for s in secrets if s.encode() in content], path


def test_users_see_and_touch_only_their_own_runs_and_uploads(module_cli, module_worker, module_server, module_dir):
    alice = {"CAST_TOKEN": _secret(module_cli("user", "create", "ann"))}
    bob = {"CAST_TOKEN": _secret(module_cli("user", "create", "ben"))}
    finished = module_cli("run", "echo secret > s.txt && echo ann-log", env=alice)
    assert finished.returncode == 0, finished
    done = int(re.search(r"Casting run #(\d+)", finished.stdout).group(1))
    queued = module_cli("run", "-d", "--json", "--queue-anyway", "-t", "gpu:2", "true", env=alice).json()["id"]  # no GPU
    assert module_cli("label", str(done), "keep", env=alice).returncode == 0
    (module_dir / "ann-data").mkdir()
    (module_dir / "ann-data" / "a.txt").write_text("a\n")
    assert module_cli("upload", "ann-data", env=alice).returncode == 0
    bens = module_cli("run", "-d", "--json", "--queue-anyway", "-t", "gpu:2", "true", env=bob).json()["id"]
    try:
        # Ben does not see Ann's runs or uploads...
        assert [r["id"] for r in module_cli("ps", "--json", env=bob).json()] == [bens]
        assert module_cli("ls", "uploads", "--json", env=bob).json() == []
        # ...and every way of reading or touching them answers "not found".
        refusals = {
            ("info", str(done)): f"run {done} not found",
            ("logs", str(done)): "not found",
            ("logs", "-f", str(done)): "not found",
            ("ls", f"runs/{done}"): "not found",
            ("cp", f"runs/{done}/s.txt", "stolen.txt"): "not found",
            ("stop", str(queued)): "not found",
            ("kill", str(queued)): "not found",
            ("label", str(done), "mine"): "not found",
            ("label", str(done), "keep", "--remove"): "not found",
            ("run", "-m", f"runs/{done}/s.txt", "cat s.txt"): "does not exist",
            ("ls", "uploads/ann-data"): "not found",
            ("cp", "uploads/ann-data", "stolen"): "not found",
            ("run", "-m", "uploads/ann-data", "ls"): "does not exist",
            ("rm", f"runs/{done}"): "not found",
            ("rm", "uploads/ann-data"): "not found",
            ("prune", "--older-than", "1s", "--user", "ann"): "only admins",
            ("du", "--user", "ann"): "only admins",
        }
        for args, needle in refusals.items():
            _one_error(module_cli(*args, env=bob), needle)
        with module_server.api(bob["CAST_TOKEN"]) as api:
            for method, path in [("GET", f"/runs/{done}/logs/download"), ("GET", f"/runs/{done}/logs/follow"),
                                 ("GET", f"/runs/{done}/outputs"), ("GET", f"/runs/{done}/outputs/s.txt"),
                                 ("DELETE", f"/runs/{done}/labels/keep"), ("GET", "/uploads/ann-data/a.txt"),
                                 ("GET", "/uploads/ann-data"), ("DELETE", f"/runs/{done}/outputs"),
                                 ("DELETE", "/uploads/ann-data")]:
                answer = api.request(method, path)
                assert answer.status_code == 404, (method, path, answer.text)
                assert "secret" not in answer.text
            # Upload names are shared: Ben cannot take Ann's, nor overwrite it.
            assert api.put("/uploads/ann-data", content=b"mine").status_code == 409
            assert api.put("/uploads/ann-data", params={"replace": "true"}, content=b"mine").status_code == 409
        assert not (module_dir / "stolen.txt").exists() and not (module_dir / "stolen").exists()

        # Nothing of Ann's changed; she sees her own things and not Ben's.
        assert [r["id"] for r in module_cli("ps", "--json", env=alice).json()] == [queued, done]
        ann_run = module_cli("info", str(done), "--json", env=alice).json()
        assert ann_run["labels"] == ["keep"] and ann_run["owner"] == "ann"
        assert wait_status(module_server, queued, "machine_requested")["status"] == "machine_requested"
        _one_error(module_cli("info", str(bens), env=alice), "not found")
        copied = module_cli("cp", f"runs/{done}/s.txt", "mine.txt", env=alice)
        assert copied.returncode == 0 and (module_dir / "mine.txt").read_text() == "secret\n"
        assert module_cli("ls", "uploads/ann-data", env=alice).returncode == 0

        # An admin sees and acts on everyone's.
        owners = {r["id"]: r["owner"] for r in module_cli("ps", "--json").json()}
        assert owners[done] == "ann" and owners[bens] == "ben"
        assert module_cli("label", str(done), "reviewed").returncode == 0
        assert module_cli("ls", "uploads/ann-data").returncode == 0
    finally:
        module_cli("kill", str(queued), str(bens))


def _live_routes(server) -> list[tuple[str, str]]:
    document = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=10).json()
    return sorted((method.upper(), path) for path, item in document["paths"].items() for method in item)


def test_every_route_of_the_live_server_checks_the_kind_and_life_of_its_token(server, tmp_path):
    routes = _live_routes(server)
    # The live document lists the whole route table.
    table = {(method, route.path.replace(":path", "")) for method, route in
             _api_routes(create_app(Settings(data_dir=tmp_path / "table")))}
    assert set(routes) == table

    with server.api() as admin:
        walker = admin.post("/users", json={"name": "walker"}).json()["token"]["token"]
        revoked_user = admin.post("/tokens", json={"user": "walker"}).json()
        revoked_worker = admin.post("/tokens", json={"kind": "worker"}).json()
        for token in (revoked_user, revoked_worker):
            assert admin.delete(f"/tokens/{token['id']}").status_code == 200
    tokens = {"admin": server.admin_token, "walker": walker, "worker": server.worker_token}
    checked = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        def call(method: str, path: str, token: str | None, body=None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return client.request(method, path, headers=headers, json=body)

        for method, template in routes:
            path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS[m.group(1)], template)
            if template in PUBLIC:  # a POST without its body is refused for the body, not a token
                assert call(method, path, None).status_code == (422 if method == "POST" else 200), template
                continue
            for token, detail in [(None, "missing bearer token"), ("cast_u_unknown", "unknown token"),
                                  (revoked_user["token"], "token revoked"), (revoked_worker["token"], "token revoked")]:
                answer = call(method, path, token)
                assert answer.status_code == 401, (method, template, token, answer.text)
                if method != "HEAD":
                    assert answer.json()["detail"].startswith(detail), (method, template, answer.text)
            key = (method, template)
            if key in WORKER_ROUTES:
                allowed, refused = ["worker"], ["admin", "walker"]
            elif key in ADMIN_ONLY:
                allowed, refused = ["admin"], ["walker", "worker"]
            else:
                allowed, refused = ["admin", "walker"], ["worker"]
            for name in refused:
                answer = call(method, path, tokens[name], ADMIN_ONLY.get(key))
                assert answer.status_code == 403, (method, template, name, answer.text)
            for name in allowed:
                if method in ("GET", "HEAD") or name != "admin":  # the admin only reads: it could change things
                    answer = call(method, path, tokens[name])
                    assert answer.status_code not in (401, 403), (method, template, name, answer.text)
            checked += 1
    assert checked == len(routes) - len(PUBLIC) and checked >= 30
    with server.api() as admin:
        assert [u["name"] for u in admin.get("/users").json()["users"]] == ["admin", "walker"]


@pytest.mark.parametrize("existing_home", [False, True], ids=["new home", "loose existing home"])
def test_the_embedded_token_files_are_readable_only_by_their_owner(base_env, tmp_path, existing_home):
    home = tmp_path / "home"
    if existing_home:  # made by hand, open to all, holding a stray world-readable token
        home.mkdir(mode=0o755)
        home.chmod(0o755)
        (home / "admin-token").write_text("stale\n")
        (home / "admin-token").chmod(0o644)
    env = {**base_env, "CAST_HOME": str(home)}

    def cast(*args: str) -> subprocess.CompletedProcess:
        # umask 0: only cast's own care keeps the files private.
        return subprocess.run(["cast", *args], env=env, capture_output=True, text=True, timeout=120,
                              preexec_fn=lambda: os.umask(0))

    try:
        started = cast("ps")
        assert started.returncode == 0, started
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("admin-token", "worker-token"):
            path = home / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
            assert path.stat().st_uid == os.getuid()
            assert path.read_text().strip() != "stale"
            if os.getuid() == 0:  # another account cannot read it
                other = subprocess.run(["cat", str(path)], user=65534, group=65534, capture_output=True, text=True)
                assert other.returncode != 0 and "Permission denied" in other.stderr
        assert cast("ps").returncode == 0  # the CLI reads the new token
    finally:
        stopped = cast("down")
        assert stopped.returncode == 0, stopped
    wait_until(lambda: not (home / "server.json").exists(), what="the embedded server to stop")
