"""Resolving a run's git ref to a commit when the run is created, with real
repos; and local git sources (file:// URLs, paths) only where the operator
allows them, refused at submission and never cloned by a worker otherwise."""

from __future__ import annotations

import subprocess

import pytest

from cast.server.app import create_app
from cast.server.settings import Settings
from tests.factories import get_run, submit, wait_final
from tests.server.conftest import in_process_api

from .conftest import git

REFUSED = "is on the server's own filesystem; this server does not allow local git sources"


def test_ref_resolves_to_the_commit_at_creation(local, repo):
    first = git(repo, "rev-parse", "HEAD")
    run = local.create_run(git_url=f"file://{repo}", commit_ref="main")
    assert run["spec"]["commit_sha"] == first and run["spec"]["commit_ref"] == "main"
    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-q", "-am", "v2")
    second = git(repo, "rev-parse", "HEAD")
    assert local.run(run["id"])["spec"]["commit_sha"] == first
    assert local.create_run(git_url=str(repo))["spec"]["commit_sha"] == second  # a plain path, default HEAD
    assert local.lease(local.register())["spec"]["commit_sha"] == first


def test_tags_and_full_shas(local, repo):
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "v1", "-m", "release")
    assert local.create_run(git_url=f"file://{repo}", commit_ref="v1")["spec"]["commit_sha"] == sha
    unknown_sha = "a" * 40  # taken as is: the worker's checkout reports it if missing
    assert local.create_run(git_url=f"file://{repo}", commit_ref=unknown_sha)["spec"]["commit_sha"] == unknown_sha


@pytest.mark.parametrize("url, ref, message", [
    ("file://{repo}", "no-such-branch", "ref 'no-such-branch' not found"),
    ("file://{repo}-missing", None, "is unreachable"),
    ("http://127.0.0.1:9/nothing.git", None, "is unreachable"),
    ("ext::sh -c touch% /tmp/cast-pwned", None, "is unreachable"),
    ("--upload-pack=touch /tmp/cast-pwned", None, "must not start with '-'"),
    ("file://{repo}", "--all", "must not start with '-'"),
])
def test_bad_git_sources_are_refused(local, repo, url, ref, message):
    body = {"command": "true", "git_url": url.format(repo=repo)}
    if ref:
        body["commit_ref"] = ref
    response = local.user.post("/runs", json=body)
    assert response.status_code in (400, 422)
    assert message in response.json()["detail"]
    assert local.user.get("/runs").json()["runs"] == []


@pytest.mark.parametrize("url", ["file://{repo}", "{repo}", "FILE://{repo}", "{repo}/../repo"])
def test_a_server_refuses_local_git_sources_unless_its_operator_allows_them(tmp_path, repo, url):
    app = create_app(Settings(data_dir=tmp_path / "strict"))  # the default
    api = in_process_api(app, app.state.settings)
    url = url.format(repo=repo)
    response = api.user.post("/runs", json={"command": "true", "git_url": url})
    assert response.status_code == 400
    assert response.json()["detail"] == (f"git URL {url!r} {REFUSED} (its operator can, with "
                                         "CAST_ALLOW_LOCAL_GIT=1)")
    assert api.user.get("/runs").json()["runs"] == []
    app.state.database.dispose()


def test_the_embedded_mode_allows_local_git_sources_by_default(base_env, tmp_path, repo):
    env = {k: v for k, v in base_env.items() if k != "CAST_ALLOW_LOCAL_GIT"} | {"CAST_EXECUTOR": "local"}

    def cast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    try:
        result = cast("run", "--github-url", f"file://{repo}", "python train.py")
        assert result.returncode == 0, result
        assert "v1" in result.stdout.splitlines()
    finally:
        cast("down")


def test_a_worker_never_clones_a_local_url_its_server_does_not_allow(start_server, start_worker, tmp_path, repo):
    # Queued while the operator allowed local sources; the server then restarts without.
    allowing = start_server(env={"CAST_ALLOW_LOCAL_GIT": "1"})
    run_id = submit(allowing, "python train.py", git_url=f"file://{repo}")
    allowing.stop()
    strict = start_server(data_dir=allowing.data_dir, port=allowing.port, env={"CAST_ALLOW_LOCAL_GIT": "0"})
    start_worker(strict)
    run = wait_final(strict, run_id, timeout=120)
    assert run["status"] == "mount_failed"
    assert run["reason"] == (f"git URL 'file://{repo}' is on this worker's filesystem, and the server does not "
                             "allow local git sources")
    assert get_run(strict, run_id)["spec"]["git_url"] == f"file://{repo}"
