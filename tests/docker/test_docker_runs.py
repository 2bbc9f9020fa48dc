"""Runs on the Docker executor end to end: the real `cast` CLI, control plane
and worker (`--executor docker`) with the real Docker engine. Environment
images go to a repository unique to the test and are removed after it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import docker
import pytest

from tests.factories import get_run, log_texts, run_id_of, wait_status
from tests.conftest import wait_until
from cast.worker.docker_images import LABEL_HOLDS
from tests.worker.executors.test_docker import base_image, engine  # noqa: F401  (session fixtures)


@pytest.fixture
def repository(engine):  # noqa: F811
    name = f"cast-env-e2e-{uuid.uuid4().hex[:8]}"
    yield name
    for image in engine.images.list(name=name):
        engine.images.remove(image.id, force=True)


@pytest.fixture
def docker_worker(server, start_worker, repository, base_image):  # noqa: F811
    """A worker on the Docker executor; its containers must all be gone at the end."""
    worker = start_worker(server, executor="docker", extra_args=["--max-runs", "2"],
                          env={"CAST_WORKER_IMAGE_REPOSITORY": repository})
    yield worker
    worker.stop()
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"cast.work_dir={worker.work_dir.resolve()}"}) == []


def in_order(lines: list[str], expected: list[str]) -> None:
    position = 0
    for item in expected:
        position = next((i for i in range(position, len(lines)) if lines[i].startswith(item)), None)
        assert position is not None, f"{item!r} missing or out of order in {lines}"


def test_a_run_goes_through_every_stage_in_a_container(cli, docker_worker):
    first = cli("run", "--pip", "six", "python -c 'import six' && id -u && echo hello > greeting.txt && cat greeting.txt")
    assert first.returncode == 0, first
    lines = first.stdout.splitlines()
    in_order(lines, ["Machine_Requested… done (docker, cpu)", "Building environment", "Building… done",
                     "Mounting… done", "Run is running", "1000", "hello", "Saving… done", "Pushing… done",
                     "Run 1 complete"])
    assert "Building… done (cached)" not in lines
    assert cli("ls", "runs/1").stdout == "greeting.txt    6 B\n"
    assert get_run(docker_worker.server, 1)["executor"] == "docker"

    second = cli("run", "--pip", "six", "-m", "runs/1/greeting.txt",
                 "cat greeting.txt; echo changed > greeting.txt || echo refused")
    assert second.returncode == 0, second
    lines = second.stdout.splitlines()
    in_order(lines, ["Building… done (cached)", "Run is running", "hello", "refused", "Run 2 complete"])
    # The mount is not an output of run 2.
    assert cli("ls", "runs/2").stdout == "run 2 saved no outputs (it wrote no files).\n"


def test_a_failed_build_ends_the_run_as_build_failed(cli, docker_worker):
    result = cli("run", "--pip", "cast-no-such-package-4f1c", "true")
    assert result.returncode != 0
    run = wait_status(docker_worker.server, 1, "build_failed")
    # uv's own error and its cause, not its whole output (which is in the log).
    assert run["reason"].startswith("pip step failed (exit 1): error: No solution found when resolving dependencies")
    assert "cast-no-such-package-4f1c was not found" in run["reason"]
    assert len(run["reason"]) < 500
    lines = log_texts(docker_worker.server, 1, "cast")
    # What is built is said before any of the build's own output.
    building = next(i for i, line in enumerate(lines) if line.startswith("Building environment"))
    assert " (base image " in lines[building] and lines[building].endswith("; pip: 1 package, with uv)"), lines[building]
    assert building < lines.index("==> setup: user 1000 and /cast/work")
    assert any("Building… failed" in line for line in lines)


def test_stop_kill_and_timeout(cli, docker_worker):
    server = docker_worker.server
    # Commands that would run for an hour: only the stop, kill or timeout ends them.
    command = "echo saved > before.txt; trap 'echo got TERM; exit 0' TERM; echo ready; sleep 3600 & wait"
    stopped = run_id_of(cli("run", "-d", command))
    killed = run_id_of(cli("run", "-d", "echo dropped > before.txt; echo ready; sleep 3600"))
    for run_id in (stopped, killed):
        wait_until(lambda: "ready" in log_texts(server, run_id, "stdout"), timeout=120, what=f"run {run_id} to start")

    assert cli("stop", str(stopped)).returncode == 0
    assert cli("kill", str(killed)).returncode == 0
    wait_status(server, stopped, "stopped", timeout=300)
    assert "got TERM" in log_texts(server, stopped, "stdout")
    assert cli("ls", f"runs/{stopped}").stdout == "before.txt    6 B\n"
    wait_status(server, killed, "killed", timeout=300)
    assert cli("ls", f"runs/{killed}").stdout == f"run {killed} saved no outputs (it was killed).\n"

    timed_out = cli("run", "--timeout", "2", command)
    assert "got TERM" in timed_out.stdout.splitlines()
    run = get_run(server, run_id_of(timed_out))
    assert run["status"] == "stopped" and "timed out" in run["reason"]


def test_a_run_past_its_memory_limit_fails_with_out_of_memory(cli, server, start_worker, repository):
    start_worker(server, executor="docker",
                 env={"CAST_WORKER_IMAGE_REPOSITORY": repository, "CAST_WORKER_MEMORY": "64m"})
    result = cli("run", "python -c 'x = bytearray(256 * 1024 * 1024)'")
    assert result.returncode == 137, result
    run = get_run(server, 1)
    assert (run["status"], run["reason"]) == ("failed", "out of memory")


def test_two_runs_needing_the_same_new_environment_build_it_once(cli, docker_worker):
    server = docker_worker.server
    first, second = (run_id_of(cli("run", "-d", "--pip", "tqdm", "--pip", "six", "python -c 'import tqdm, six'"))
                     for _ in range(2))
    for run_id in (first, second):
        assert wait_status(server, run_id, "complete", "failed", "build_failed", timeout=120)["status"] == "complete"
    builders = [run_id for run_id in (first, second)
                if any(line.startswith("Building environment") for line in log_texts(server, run_id, "cast"))]
    assert len(builders) == 1
    waiter = second if builders == [first] else first
    assert "Building… done (cached)" in log_texts(server, waiter, "cast")


# What a run reads back of its own limits (cgroup v2, else v1) and network.
LIMITS_COMMAND = (
    "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; "
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
    "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
    "echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); "
    "ls /sys/class/net"
)


def test_the_workers_docker_flags_reach_the_container_and_its_image(cli, server, start_worker, repository,
                                                                   engine, base_image):  # noqa: F811
    base = f"cast-base-flags-{uuid.uuid4().hex[:8]}:latest"
    engine.images.get(base_image).tag(base)
    try:
        worker = start_worker(server, executor="docker", extra_args=[
            "--base-image", base, "--image-repository", repository, "--memory", "300m", "--cpus", "1.5",
            "--pids-limit", "123", "--network", "none"])
        result = cli("run", LIMITS_COMMAND)
        assert result.returncode == 0, result
        assert log_texts(server, 1, "stdout") == ["123", str(300 << 20), "150000 100000", "lo"]
        limits = "container, memory 300 MB, 1.5 CPUs, 123 processes"
        assert re.search(r"^Limits:\s+(.*)$", cli("info", "1").stdout, re.M)[1] == limits
        assert cli("info", "1", "--json").json()["limits"] == limits
        [image] = engine.images.list(name=repository)
        assert image.labels[LABEL_HOLDS] == f"base: {base}"
        listed = subprocess.run(
            [sys.executable, "-m", "cast.worker", "cache", "ls", "--json", "--executor", "docker",
             "--work-dir", str(worker.work_dir), "--image-repository", repository],
            capture_output=True, text=True, timeout=60)
        assert [entry["holds"] for entry in json.loads(listed.stdout)] == [f"base: {base}"], listed.stderr
    finally:
        engine.images.remove(base)  # only this tag: the image keeps its own name
