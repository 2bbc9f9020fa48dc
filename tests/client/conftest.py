"""Helpers for the end-to-end CLI tests: the real `cast` command against a real
server and worker (fixtures from tests/conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliResult


@pytest.fixture
def cast_for(base_env, tmp_path):
    """`cast_for(server)` gives a runner like the `cli` fixture for any server,
    e.g. one started with other settings or restarted on the same port."""

    def bind(server):
        def run(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> CliResult:
            full_env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token, **(env or {})}
            proc = subprocess.run(["cast", *args], cwd=cwd or tmp_path, env=full_env, capture_output=True,
                                  text=True, timeout=timeout)
            return CliResult(proc.returncode, proc.stdout, proc.stderr)

        return run

    return bind
