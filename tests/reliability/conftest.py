"""Fixtures for the reliability tests.

Besides the per-test `server`, `worker` and `cli` of tests/conftest.py, the
table-driven tests share one real server per module (`module_server`, with
`module_cli` and `module_worker`), so trying dozens of inputs costs one
startup: each input must leave that server as it found it anyway.

The fault-injection tests add: the Docker engine, base image and image
repository of the executor's tests (`docker_env` for a Docker worker), `cast_via`
(the real CLI against any URL, such as a proxy), `proxy_to` (a TCP proxy whose
connections a test cuts) and `small_disk` (a tmpfs to fill).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliResult, ServerProcess, WorkerProcess, free_port, lease_env, wait_until
from tests.reliability.helpers import CuttableProxy
# Session fixtures shared with the Docker executor's tests: the engine, the
# offline base image, and a repository for environment images removed at the end.
from tests.worker.executors.test_docker import base_image, engine, repository  # noqa: F401


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("module")


@pytest.fixture(scope="module")
def module_env(module_dir, request) -> dict:
    """As `base_env`, for the module's processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
    env["CAST_HOME"] = str(module_dir / "home")
    env.update(lease_env(request.node))
    env["PYTHONUNBUFFERED"] = "1"
    env["CAST_ALLOW_LOCAL_GIT"] = "1"
    return env


@pytest.fixture(scope="module")
def module_server(module_dir, module_env, module_database) -> ServerProcess:
    port = free_port()
    database = {"CAST_DATABASE_URL": module_database} if module_database else {}
    server = ServerProcess(url=f"http://127.0.0.1:{port}", port=port, data_dir=module_dir / "server",
                           env={**module_env, **database}, log_path=module_dir / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_worker(module_server, module_dir, module_env) -> WorkerProcess:
    worker = WorkerProcess(server=module_server, work_dir=module_dir / "worker", name="worker",
                           executor="local", env=module_env)
    worker.start()
    # Registered before a test submits: a submit is refused at once when the only
    # workers the server knows cannot run it (test_access registers such a one).
    with module_server.api(module_server.admin_token) as api:
        wait_until(lambda: "worker" in {w["name"] for w in api.get("/status").json()["workers"]},
                   what="the module's worker registered")
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


# --- fault injection (worker, server, network, exhaustion, isolation tests) ------

@pytest.fixture
def docker_env(repository) -> dict:  # noqa: F811
    """The environment a Docker-executor worker of these tests gets."""
    return {"CAST_WORKER_IMAGE_REPOSITORY": repository}


@pytest.fixture
def cast_via(base_env, tmp_path):
    """`cast_via(url, token)` runs the real `cast` command against any URL (a
    proxy in front of a server, say): `.run(*args)` waits for it, `.start(*args)`
    returns the Popen with stdout and stderr going to files."""
    started: list[subprocess.Popen] = []

    class Cast:
        def __init__(self, url: str, token: str):
            self.env = {**base_env, "CAST_SERVER_URL": url, "CAST_TOKEN": token}

        def run(self, *args: str, timeout: float = 120) -> CliResult:
            proc = subprocess.run(["cast", *args], cwd=tmp_path, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
            return CliResult(proc.returncode, proc.stdout, proc.stderr)

        def start(self, *args: str, name: str) -> tuple[subprocess.Popen, Path, Path]:
            out, err = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
            with open(out, "w") as stdout, open(err, "w") as stderr:
                proc = subprocess.Popen(["cast", *args], cwd=tmp_path, env=self.env, stdout=stdout, stderr=stderr)
            started.append(proc)
            return proc, out, err

    yield Cast
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def proxy_to():
    """`proxy_to(port)` starts a CuttableProxy in front of a loopback port."""
    proxies: list[CuttableProxy] = []

    def start(port: int) -> CuttableProxy:
        proxies.append(CuttableProxy(port))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(path, megabytes)` mounts a tmpfs of that size at `path` (a
    worker's work dir, say), so a run can fill it without filling the host."""
    mounted: list[Path] = []

    def mount(path: Path, megabytes: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "--lazy", str(path)], check=False)
