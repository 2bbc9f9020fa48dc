"""Service fixtures: a real git repository to resolve refs in, and the users
(the bootstrap admin, more made by it) that services take as owner or viewer."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import select

from cast.server.db import Database
from cast.server.models import User
from cast.server.services import users


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


def admin_of(database: Database) -> User:
    with database.transaction(write=False) as session:
        return session.scalar(select(User).where(User.name == users.ADMIN_NAME))


def add_user(database: Database, name: str) -> User:
    """A non-admin user (once one exists, unsandboxed workers are leased nothing)."""
    with database.transaction() as session:
        return users.create_user(session, viewer=admin_of(database), name=name, admin=False)[0]
