"""Service fixtures: a real git repository to resolve refs in."""

from __future__ import annotations

import subprocess

import pytest


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "train.py").write_text("print('v1')\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "v1")
    return path
