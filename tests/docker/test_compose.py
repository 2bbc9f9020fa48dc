"""The documented one-host deployment, for real: docker/build-images.sh builds
the images, docker/compose.yaml starts the control plane and a Docker worker
(under a project name, host port, work dir and image repository unique to the
test), and the real `cast` CLI runs a command through them. Everything the
stack made is removed afterwards: containers, network, volume, work dir,
environment images."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import docker
import pytest

from tests.conftest import REPO_ROOT, free_port, wait_until

COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"


def compose_command() -> list[str]:
    """docker-compose 1.29 (Debian's) or the `docker compose` plugin; a host
    with neither fails the test: the deployment cannot be checked there."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("neither docker-compose nor the docker compose plugin is installed (scripts/setup.sh --system)")


@pytest.fixture
def stack(tmp_path, base_env):
    """The compose stack, up; yields a function running `compose ARGS...`."""
    built = subprocess.run(["bash", str(REPO_ROOT / "docker" / "build-images.sh")],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.split() == ["cast-server:latest", "cast-worker:latest"]

    project = f"casttest{uuid.uuid4().hex[:8]}"
    work_dir = tmp_path / "worker"
    work_dir.mkdir()
    env = {**base_env, "CAST_PORT": str(free_port()), "CAST_WORKER_DIR": str(work_dir),
           "CAST_WORKER_NAME": project, "CAST_WORKER_IMAGE_REPOSITORY": f"cast-env-{project}"}
    base = [*compose_command(), "-p", project, "-f", str(COMPOSE_FILE)]

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=timeout)

    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stderr
        compose.env = env
        yield compose
    finally:
        down = compose("down", "-v", "--remove-orphans")
        engine = docker.from_env()
        for image in engine.images.list(name=env["CAST_WORKER_IMAGE_REPOSITORY"]):
            engine.images.remove(image.id, force=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}) == []
        assert engine.volumes.list(filters={"label": f"com.docker.compose.project={project}"}) == []


def test_compose_stack_runs_a_command_through_the_cli(stack, tmp_path):
    token = wait_until(lambda: stack("exec", "-T", "server", "cat", "/data/admin-token").stdout.strip(),
                       timeout=60, interval=0.5, what="the server's admin token")
    services = stack("ps", "--services").stdout.split()
    assert sorted(services) == ["server", "worker"]
    cli_env = {**stack.env, "CAST_SERVER_URL": f"http://127.0.0.1:{stack.env['CAST_PORT']}", "CAST_TOKEN": token}

    def cast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)

    run = cast("run", "echo hello > greeting.txt && cat greeting.txt")
    assert run.returncode == 0, (run.stdout, run.stderr, stack("logs", "--no-color").stdout[-4000:])
    assert "hello" in run.stdout.splitlines()
    assert cast("ls", "runs/1").stdout == "greeting.txt    6 B\n"
    assert f"cpu on {stack.env['CAST_WORKER_NAME']} (docker)" in cast("info", "1").stdout
