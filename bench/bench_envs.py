"""Benchmark: environment builds of both executors (cast.worker.envs,
cast.worker.docker_images) against a bare `pip install` in a new virtualenv, in
the same process run.

Each round, alternating so load on a shared machine falls on all of them:

- bare:  `python -m venv` + `pip install torch six tqdm` (pip as a user runs it, its own cache as it is)
- uv cold: cast's local build of torch + six + tqdm with uv and an empty package cache
- uv +1 line: a local build of torch + six, then the same file with one line added
  (tqdm), torch unchanged; the second build timed
- pip +1 line: the same two builds with CAST_WORKER_INSTALLER=pip (second timed; --no-pip skips)
- docker cold, docker +1 line: the Docker executor's builds of torch + six, then
  one line added (tqdm), each with a fresh work dir (--docker; needs the engine
  and the base image)

Prints the medians and the ratios against the goals of issue #14 (a cold build
at most 0.5x the bare pip install; one line added at most 1 s). The torch
version comes from --torch (default: the host's cap, 2.13.0); every package
comes from the host's pip settings.

--one-line-only measures just the one added line, when a whole round takes
too long on a loaded machine: each executor builds torch + six once (not
timed), then each round adds one line of its own (tqdm, termcolor, tabulate,
...: a package the cache has not seen) on the local executor, then on Docker.

    python bench/bench_envs.py [--rounds 3] [--torch 2.13.0] [--no-pip] [--docker] [--one-line-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cast.protocol.messages import RunSpec
from cast.worker.envs import EnvCache
from cast.worker.installer import choose_installer


def bare_pip(folder: Path, packages: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(folder / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *packages],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def cast_build(cache: EnvCache, requirements: str) -> float:
    start = time.perf_counter()
    result = cache.ensure([], requirements, lambda stream, text: None)
    assert not result.cached
    return time.perf_counter() - start


ADDED = ["tqdm", "termcolor", "tabulate", "colorama", "attrs", "idna"]  # one a round, with --one-line-only


def image_cache(work_dir: Path):
    import docker

    from cast.worker.docker_images import DEFAULT_BASE_IMAGE, ImageCache

    return ImageCache(docker.from_env(timeout=600), work_dir, base_image=DEFAULT_BASE_IMAGE,
                      repository=f"cast-env-bench-{uuid.uuid4().hex[:8]}", network="bridge",
                      installer=choose_installer("uv"))


def docker_build(images, requirements: str) -> float:
    start = time.perf_counter()
    result = images.ensure(RunSpec(command="true", pip_req=requirements), 0, lambda stream, text: None)
    assert not result.cached
    return time.perf_counter() - start


def docker_builds(work_dir: Path, base: str, added: str) -> tuple[float, float]:
    """The Docker executor's cold build of `base`, then of `added`, timed; the images removed after."""
    images = image_cache(work_dir)
    try:
        return docker_build(images, base), docker_build(images, added)
    finally:
        images.prune(older_than=None, everything=True)


def one_line_only(rounds: int, base: str, docker: bool) -> None:
    times: dict[str, list[float]] = {"uv +1 line": [], **({"docker +1 line": []} if docker else {})}
    with tempfile.TemporaryDirectory(prefix="bench-envs-") as scratch:
        root = Path(scratch)
        local = EnvCache(root / "envs", installer=choose_installer("uv"), package_cache=root / "uv-cache")
        cast_build(local, base)
        images = image_cache(root / "docker") if docker else None
        try:
            if images:
                docker_build(images, base)
            for round_number in range(rounds):
                added = base + ADDED[round_number % len(ADDED)] + "\n"
                times["uv +1 line"].append(cast_build(local, added))
                if images:
                    times["docker +1 line"].append(docker_build(images, added))
                print(f"round {round_number + 1} (+{ADDED[round_number % len(ADDED)]}, load "
                      f"{os.getloadavg()[0]:.1f}): " + ", ".join(f"{name} {values[-1]:.2f} s"
                                                                 for name, values in times.items()), flush=True)
        finally:
            if images:
                images.prune(older_than=None, everything=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"{name:14}: median {statistics.median(values):6.2f} s over {rounds} rounds  (goal: at most 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch", default="2.13.0")
    parser.add_argument("--no-pip", action="store_true", help="skip the builds with CAST_WORKER_INSTALLER=pip")
    parser.add_argument("--docker", action="store_true", help="also the Docker executor's builds")
    parser.add_argument("--one-line-only", action="store_true", help="only one line added, a new one each round")
    args = parser.parse_args()
    base = f"torch=={args.torch}\nsix\n"
    added = base + "tqdm\n"
    if args.one_line_only:
        print(f"load before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        one_line_only(args.rounds, base, args.docker)
        return
    uv, pip = choose_installer("uv"), choose_installer("pip")
    times: dict[str, list[float]] = {"bare": [], "uv cold": [], "uv +1 line": []}
    if not args.no_pip:
        times["pip +1 line"] = []
    if args.docker:
        times.update({"docker cold": [], "docker +1 line": []})
    print(f"load before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-envs-") as scratch:
            root = Path(scratch)
            times["bare"].append(bare_pip(root / "bare", [f"torch=={args.torch}", "six", "tqdm"]))
            shutil.rmtree(root / "bare")
            cold = EnvCache(root / "cold" / "envs", installer=uv, package_cache=root / "cold" / "cache")
            times["uv cold"].append(cast_build(cold, added))
            with_uv = EnvCache(root / "uv" / "envs", installer=uv, package_cache=root / "uv" / "cache")
            cast_build(with_uv, base)
            times["uv +1 line"].append(cast_build(with_uv, added))
            if not args.no_pip:
                with_pip = EnvCache(root / "pip" / "envs", installer=pip)
                cast_build(with_pip, base)
                times["pip +1 line"].append(cast_build(with_pip, added))
            if args.docker:
                cold_docker, added_docker = docker_builds(root / "docker", base, added)
                times["docker cold"].append(cold_docker)
                times["docker +1 line"].append(added_docker)
        print(f"round {round_number + 1} (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in times.items()), flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:14}: median {value:6.2f} s over {args.rounds} rounds")
    print(f"uv cold / bare pip   : {medians['uv cold'] / medians['bare']:.2f}x  (goal: at most 0.5x)")
    print(f"uv +1 line           : {medians['uv +1 line']:.2f} s  (goal: at most 1 s)")
    if "pip +1 line" in medians:
        print(f"pip +1 line / uv     : {medians['pip +1 line'] / medians['uv +1 line']:.1f}x")
    if args.docker:
        print(f"docker +1 line       : {medians['docker +1 line']:.2f} s  (goal: at most 1 s)")


if __name__ == "__main__":
    main()
