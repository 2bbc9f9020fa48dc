"""The documented scale-out deployment, for real: docker/build-images.sh builds
every image of docker/compose.scale.yaml here (PostgreSQL and nginx from
Debian's packages, SeaweedFS from its pinned wheel, cast's server and worker),
the stack comes up (PostgreSQL, the object store, two replicas, nginx, two
Docker workers) under a project name, port, work dir and image tag unique to
the test, and the real `cast` CLI talks to it through the balancer only: a run
writes an output, a second run mounts it, and `cast status` names the database,
the store and both workers. Everything the stack made is removed afterwards:
containers, network, volumes, work dirs, environment images and the images
tagged for the test."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import docker
import pytest

from tests.conftest import REPO_ROOT, free_port, wait_until
from tests.docker.test_compose import compose_command

COMPOSE_FILE = REPO_ROOT / "docker" / "compose.scale.yaml"
ROLES = ["server", "worker", "postgres", "seaweedfs", "nginx"]
SERVICES = ["balancer", "postgres", "seaweedfs", "server-1", "server-2", "worker-1", "worker-2"]


@pytest.fixture
def stack(tmp_path, base_env):
    """The scale-out stack, up; yields a function running `compose ARGS...`."""
    project = f"castscale{uuid.uuid4().hex[:8]}"
    engine = docker.from_env()
    tags = [f"cast-{role}:{project}" for role in ROLES]
    work_dir = tmp_path / "workers"
    for index in ("1", "2"):
        (work_dir / index).mkdir(parents=True)
    env = {**base_env, "CAST_VERSION": project, "CAST_PORT": str(free_port()), "CAST_WORKER_DIR": str(work_dir),
           "CAST_WORKER_NAME": project, "CAST_WORKER_IMAGE_REPOSITORY": f"cast-env-{project}",
           "CAST_DB_PASSWORD": uuid.uuid4().hex, "CAST_S3_SECRET_KEY": uuid.uuid4().hex}
    base = [*compose_command(), "-p", project, "-f", str(COMPOSE_FILE)]

    def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=timeout)

    try:
        built = subprocess.run(["bash", str(REPO_ROOT / "docker" / "build-images.sh"), project, *ROLES],
                               capture_output=True, text=True, timeout=1800)
        assert built.returncode == 0, built.stderr[-3000:]
        assert built.stdout.split() == tags
        up = compose("up", "-d", timeout=600)
        assert up.returncode == 0, (up.stderr, compose("logs", "--no-color").stdout[-6000:])
        compose.env = env
        yield compose
    finally:
        down = compose("down", "-v", "--remove-orphans")
        for image in engine.images.list(name=env["CAST_WORKER_IMAGE_REPOSITORY"]):
            engine.images.remove(image.id, force=True)
        for tag in tags:
            # Untags only: the layers stay in the build cache for the next build.
            if engine.images.list(name=tag):
                engine.images.remove(tag)
        shutil.rmtree(work_dir, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        label = {"label": f"com.docker.compose.project={project}"}
        assert engine.containers.list(all=True, filters=label) == []
        assert engine.volumes.list(filters=label) == []
        assert engine.networks.list(filters=label) == []


# Building five images and starting seven services passes the suite's 300 s on
# a busy machine; this bound only guards against a hang.
@pytest.mark.timeout(2400)
def test_scale_out_stack_runs_and_mounts_through_the_balancer(stack, tmp_path):
    token = wait_until(lambda: stack("exec", "-T", "server-1", "cat", "/data/admin-token").stdout.strip(),
                       timeout=120, interval=1, what="the first replica's admin token")
    assert sorted(stack("ps", "--services").stdout.split()) == SERVICES
    cli_env = {**stack.env, "CAST_SERVER_URL": f"http://127.0.0.1:{stack.env['CAST_PORT']}", "CAST_TOKEN": token}

    def cast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)

    def logs() -> str:
        return stack("logs", "--no-color").stdout[-6000:]

    name = stack.env["CAST_WORKER_NAME"]
    wait_until(lambda: all(f"{name}-{i}" in cast("status").stdout for i in (1, 2)),
               timeout=120, interval=1, what="both workers known to the control plane")
    status = cast("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "Database: postgresql+psycopg://cast:***@postgres:5432/cast" in lines, status.stdout
    assert "Storage:  s3://cast" in lines, status.stdout

    first = cast("run", "echo scaled out > greeting.txt")
    assert first.returncode == 0, (first.stdout, first.stderr, logs())
    assert cast("ls", "runs/1").stdout == "greeting.txt    11 B\n"
    second = cast("run", "--mount", "runs/1:earlier", "cat earlier/greeting.txt")
    assert second.returncode == 0, (second.stdout, second.stderr, logs())
    assert "scaled out" in second.stdout.splitlines()
