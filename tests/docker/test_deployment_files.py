"""The deployment files in docker/: the compose file gives the Docker socket to
the worker only and mounts its work dir at the same path on the host; both
images build from the offline base image by default."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def test_compose_gives_the_docker_socket_to_the_worker_only():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert "name" not in compose  # docker-compose 1.29 rejects it: the project comes from -p
    services = compose["services"]
    assert set(services) == {"server", "worker"}
    socket = "/var/run/docker.sock:/var/run/docker.sock"
    assert socket in services["worker"]["volumes"]
    assert not any("docker.sock" in volume for volume in services["server"].get("volumes", []))
    assert not services["server"].get("privileged") and not services["worker"].get("privileged")
    work_dir = next(arg.split("=", 1)[1] for arg in services["worker"]["command"] if arg.startswith("--work-dir="))
    assert f"{work_dir}:{work_dir}" in services["worker"]["volumes"]
    token_file = next(arg.split("=", 1)[1] for arg in services["worker"]["command"]
                      if arg.startswith("--token-file="))
    assert any(volume.startswith("cast-data:") and volume.endswith(":ro")
               and token_file.startswith(volume.split(":")[1]) for volume in services["worker"]["volumes"])


def test_images_build_from_the_offline_base_image():
    for role, extra in (("server", "server"), ("worker", "worker")):
        text = (DOCKER / f"Dockerfile.{role}").read_text()
        assert re.search(r"^ARG BASE_IMAGE=cast-base:bookworm$", text, re.M)
        assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
        assert f"'cast-runner[{extra}]'" in text and "--no-index" in text
