"""The GPT-2 jokes walkthrough of docs/tutorial.md on the Docker executor: the
four runs (walkthrough.py) through the real `cast` CLI, a real server and a
worker with `--executor docker` on the real Docker engine, offline with
`--init tiny`.

The base image has no torch, so every run asks for the same packages: the
local CPU wheel `torch==2.13.0` (never a bare `torch`, which would pull a
multi-GB CUDA build) and the example's requirements. That is one environment
image, built by run 1 and reused by all the others. It goes to a repository
unique to the test and is removed after it, so run 1 always builds it.
"""

from __future__ import annotations

import uuid

import pytest

from tests.worker.executors.test_docker import base_image, engine  # noqa: F401  (session fixtures)
from tests.examples.walkthrough import example_repo, walk_through  # noqa: F401  (example_repo: a fixture)

PACKAGES = ("--pip", "torch==2.13.0", "--pip-req", "examples/gpt2/requirements.txt")
# Run 1 installs torch and transformers into the image: a minute or two on 2 cores.
RUN_SECONDS = 420


@pytest.fixture
def docker_worker(server, start_worker, engine, base_image):  # noqa: F811
    repository = f"cast-env-gpt2-{uuid.uuid4().hex[:8]}"
    worker = start_worker(server, executor="docker", env={"CAST_WORKER_IMAGE_REPOSITORY": repository})
    yield worker
    worker.stop()
    for image in engine.images.list(name=repository):
        engine.images.remove(image.id, force=True)


@pytest.mark.timeout(RUN_SECONDS + 180)
def test_the_four_runs_of_the_jokes_walkthrough_in_containers(example_repo, docker_worker, cli, tmp_path):  # noqa: F811
    def cast_run(*args: str):
        return cli("run", *PACKAGES, *args, cwd=example_repo, timeout=RUN_SECONDS)

    built, *reused = walk_through(cast_run, cli, tmp_path / "downloads")

    lines = built.stdout.splitlines()
    assert "Machine_Requested… done (docker, cpu)" in lines
    building = [line for line in lines if line.startswith("Building environment ")]
    assert len(building) == 1 and building[0].endswith(
        "(base image cast-base:bookworm; pip: 1 package, requirements file (2 lines), with uv)"), building
    assert any(line.strip().startswith("+ transformers==5.") for line in lines)  # uv's list of what it installed
    assert "Building… done" in lines
    for run in reused:
        lines = run.stdout.splitlines()
        assert "Machine_Requested… done (docker, cpu)" in lines
        assert "Building… done (cached)" in lines
        assert not any(line.startswith("Building environment ") for line in lines)
