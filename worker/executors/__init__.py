"""Choosing the executor a worker uses: `local`, `docker`, or `auto` (docker when a
Docker engine answers, else local). The Docker executor is imported only when
asked for, so a worker without the Docker SDK still starts."""

from __future__ import annotations

from pathlib import Path

from cast.worker.executors.base import Executor, ExecutorUnavailable

EXECUTOR_CHOICES = ("auto", "local", "docker")


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
            return _docker(work_dir, **options)
        except ExecutorUnavailable:
            return make_executor("local", work_dir, **options)
    raise ExecutorUnavailable(f"unknown executor {name!r}: choose one of {', '.join(EXECUTOR_CHOICES)}")


def available_executors(work_dir: Path) -> list[Executor]:
    """Every executor that can run here (for the cache commands)."""
    found = [make_executor("local", work_dir)]
    try:
        found.append(_docker(work_dir))
    except ExecutorUnavailable:
        pass
    return found
