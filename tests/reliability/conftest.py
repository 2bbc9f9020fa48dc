"""Fixtures for the reliability tests.

Besides the per-test `server`, `worker` and `cli` of tests/conftest.py, the
table-driven tests share one real server per module (`module_server`, with
`module_cli` and `module_worker`), so trying dozens of inputs costs one
startup: each input must leave that server as it found it anyway.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliResult, ServerProcess, WorkerProcess, free_port


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("module")


@pytest.fixture(scope="module")
def module_env(module_dir) -> dict:
    """As `base_env`, for the module's processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
    env["CAST_HOME"] = str(module_dir / "home")
    env["CAST_LEASE_SECONDS"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def module_server(module_dir, module_env) -> ServerProcess:
    port = free_port()
    server = ServerProcess(url=f"http://127.0.0.1:{port}", port=port, data_dir=module_dir / "server",
                           env=module_env, log_path=module_dir / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_worker(module_server, module_dir, module_env) -> WorkerProcess:
    worker = WorkerProcess(server=module_server, work_dir=module_dir / "worker", name="worker",
                           executor="local", env=module_env)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def module_cli(module_server, module_env, module_dir):
    """Run the real `cast` command against `module_server`, as admin unless
    `env` says otherwise. `args` may be bytes (invalid UTF-8 on the command line)."""

    def run(*args: str | bytes, env: dict | None = None, cwd: Path | None = None, timeout: float = 60) -> CliResult:
        full_env = {**module_env, "CAST_SERVER_URL": module_server.url, "CAST_TOKEN": module_server.admin_token,
                    **(env or {})}
        proc = subprocess.run(["cast", *args], cwd=cwd or module_dir, env=full_env, capture_output=True,
                              timeout=timeout)
        return CliResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                         proc.stderr.decode("utf-8", "replace"))

    return run
