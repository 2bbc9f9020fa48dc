"""Choosing the executor a worker uses: `local`, `docker`, or `auto` (docker when a
Docker engine answers and has the base image to build on, else local). The Docker executor is imported only when
asked for, so a worker without the Docker SDK still starts."""

from __future__ import annotations

from pathlib import Path

from cast.worker.executors.base import Executor, ExecutorUnavailable, InvalidExecutorOption

EXECUTOR_CHOICES = ("auto", "local", "docker")
# The Docker executor's keyword options (DockerOptions' fields), each also a
# worker flag and a CAST_WORKER_<NAME> variable; the local executor takes none.
DOCKER_OPTIONS = ("base_image", "memory", "cpus", "pids_limit", "network", "image_repository")


def _docker(work_dir: Path, **options) -> Executor:
    try:
        from cast.worker.executors.docker import DockerExecutor
    except ImportError as exc:
        raise ExecutorUnavailable(f"the docker executor cannot be loaded: {exc}") from exc
    return DockerExecutor(work_dir, **options)


def make_executor(name: str, work_dir: Path, **options) -> Executor:
    """The executor called `name`; ExecutorUnavailable when it cannot run here."""
    if name == "local":
        from cast.worker.executors.local import LocalExecutor

        return LocalExecutor(work_dir, **options)
    if name == "docker":
        return _docker(work_dir, **options)
    if name == "auto":
        try:
            docker = _docker(work_dir, **options)
        except InvalidExecutorOption:
            raise
        except ExecutorUnavailable:
            return make_executor("local", work_dir)  # the Docker options do not apply
        # An engine without the base image could only fail every build (the
        # default base is made offline, never pulled): local runs instead.
        return docker if docker.has_base_image() else make_executor("local", work_dir)
    raise ExecutorUnavailable(f"unknown executor {name!r}: choose one of {', '.join(EXECUTOR_CHOICES)}")


def available_executors(work_dir: Path, **docker_options) -> list[Executor]:
    """Every executor that can run here (for the cache commands)."""
    found = [make_executor("local", work_dir)]
    try:
        found.append(_docker(work_dir, **docker_options))
    except InvalidExecutorOption:
        raise
    except ExecutorUnavailable:
        pass
    return found
