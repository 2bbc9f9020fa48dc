"""cast.client.config: which control plane the CLI talks to and with which
token: a remote one named by the environment, or the embedded one under
CAST_HOME (here one already running, a real server)."""

from __future__ import annotations

import json
import os

import pytest

from cast.client.config import Target, cast_home, client, resolve_target
from cast.client.sdk import CastError


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean CAST_* environment, as a developer's shell may hold any of it."""
    for name in list(os.environ):
        if name.startswith("CAST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return monkeypatch


def test_cast_home_defaults_to_the_users_folder(env, tmp_path):
    assert cast_home() == tmp_path / "user" / ".cast"
    env.setenv("CAST_HOME", "~/elsewhere")
    assert cast_home() == tmp_path / "user" / "elsewhere"
    env.chdir(tmp_path)
    env.setenv("CAST_HOME", "relative")
    assert cast_home() == tmp_path / "relative"  # absolute, so a later cd does not move it


def test_a_remote_server_with_a_token(env):
    env.setenv("CAST_SERVER_URL", " http://cast.example:8750 ")
    env.setenv("CAST_TOKEN", " secret \n")
    env.setenv("CAST_TOKEN_FILE", "/nonexistent")  # CAST_TOKEN wins
    assert resolve_target() == Target(url="http://cast.example:8750", token="secret", embedded=False)


def test_a_remote_server_with_a_token_file(env, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    env.setenv("CAST_SERVER_URL", "http://cast.example:8750")
    env.setenv("CAST_TOKEN_FILE", str(token_file))
    assert resolve_target().token == "from-a-file"

    token_file.write_text("  \n")
    with pytest.raises(CastError, match=f"the token file {token_file} \\(CAST_TOKEN_FILE\\) is empty"):
        resolve_target()
    token_file.unlink()
    with pytest.raises(CastError, match=f"cannot read the token in {token_file} \\(CAST_TOKEN_FILE\\): No such file"):
        resolve_target()


def test_a_remote_server_without_a_token_is_refused(env):
    env.setenv("CAST_SERVER_URL", "http://cast.example:8750")
    env.setenv("CAST_TOKEN", "  ")
    with pytest.raises(CastError, match="set CAST_TOKEN or CAST_TOKEN_FILE"):
        resolve_target()


def test_without_a_url_the_running_embedded_server_is_used(env, server, tmp_path):
    home = tmp_path / "embedded-home"
    home.mkdir()
    (home / "server.json").write_text(json.dumps({"url": server.url, "pid": os.getpid()}))
    env.setenv("CAST_HOME", str(home))
    with pytest.raises(CastError, match="the embedded server's admin token"):
        resolve_target()

    (home / "admin-token").write_text(server.admin_token + "\n")
    assert resolve_target() == Target(url=server.url, token=server.admin_token, embedded=True)
    assert client().whoami()["name"] == "admin"
    assert not (home / "server.log").exists()  # found running, not started


def test_a_saved_login_is_used_without_a_url_and_the_environment_wins_over_it(env, tmp_path):
    from cast.client.config import config_path, forget_login, read_login, save_login

    path = save_login("http://cast.example:8470", "saved")
    assert path == config_path() == tmp_path / "user" / ".cast" / "config.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    target = resolve_target()
    assert target == Target(url="http://cast.example:8470", token="saved", embedded=False)
    assert target.source == str(path)

    env.setenv("CAST_TOKEN", "from-env")  # a token in the environment wins over the saved one
    assert (resolve_target().token, resolve_target().source) == ("from-env", "CAST_TOKEN")
    env.setenv("CAST_SERVER_URL", "http://other.example:8470")  # and a URL wins over the saved login
    assert resolve_target().url == "http://other.example:8470"

    env.delenv("CAST_SERVER_URL")
    path.write_text('{"url": "http://cast.example:8470"}')
    with pytest.raises(CastError, match="lacks a url or a token; `cast logout` removes it"):
        resolve_target()
    path.write_text("{not json")
    with pytest.raises(CastError, match="cannot read the saved login"):
        read_login()
    assert forget_login() is not None and not path.exists()
    assert forget_login() is None
