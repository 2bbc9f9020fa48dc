"""Resolving a run's git ref to a commit when the run is created, with real repos."""

from __future__ import annotations

import pytest

from .conftest import git


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
