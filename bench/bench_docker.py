"""Benchmark: the Docker executor against bare Docker, in the same process run.

1. Warm: `cast run "true"` end to end (CLI → control plane → docker worker →
   container → outputs; the environment image already cached) against a bare
   `docker run --rm BASE true`. Prints both medians and their ratio (goal: at
   most 1.2x).
2. Cold: a `cast run` whose environment needs three small `--pip` packages and
   is not cached (its image repository is fresh), against a bare
   `docker build --no-cache` of the same packages on the same base image.

The embedded default runs them (a temporary CAST_HOME with
CAST_EXECUTOR=docker, started as a user's first `cast run` starts it; with
`--own-server`, a control plane and one worker `--executor docker` started
on loopback instead), stopped at the end; the images made are removed. Also
printed: the CLI process's CPU (user + system) and the control plane's and
worker's CPU per warm run (their processes' user + system from /proc), figures
a loaded machine moves far less than the wall times; `--no-cold` leaves out
step 2. To compare other code, put it first on PYTHONPATH.

    python bench/bench_docker.py [--runs 20] [--base-image cast-base:bookworm] [--own-server] [--no-cold] [--command CMD]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
from bench_core import tree_cpu  # bench/ is the script's folder, first on sys.path

PACKAGES = ["six", "tqdm", "idna"]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The `cast` script installed beside this interpreter: a PATH lookup may hit a
# version-manager shim (pyenv's adds ~100 ms) that a user's install would not have.
CAST = str(Path(sys.executable).with_name("cast"))


def timed(cmd: list[str], env: dict, cpu: list[float] | None = None, **kwargs) -> float:
    """Wall seconds of `cmd`; its CPU seconds (user + system) appended to `cpu`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, **kwargs)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 180  # a guard against a hang; a busy machine starts it slowly
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the control plane at {url} did not start")


def stages(url: str, token: str, run_id: int, spawned: tuple[float, float] | None = None) -> dict[str, float]:
    """How long run `run_id` spent in each stage (from its transitions); given
    the wall-clock times its `cast` process was spawned and returned, also
    `cli start → created` and `final → cli exit` (one clock: the same host)."""
    run = httpx.get(f"{url}/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}).json()
    times = [(t["status"], datetime.fromisoformat(t["at"].replace("Z", "+00:00"))) for t in run["transitions"]]
    phases = {}
    if spawned:
        phases["cli start → created"] = times[0][1].timestamp() - spawned[0]
    phases.update({status: (after - at).total_seconds() for (status, at), (_, after) in zip(times, times[1:])})
    if spawned:
        phases["final → cli exit"] = spawned[1] - times[-1][1].timestamp()
    return phases


def stage_seconds(url: str, token: str, run_id: int, stage: str) -> float:
    """How long run `run_id` spent in `stage`."""
    return stages(url, token, run_id)[stage]


def bare_build(base_image: str, tag: str, env: dict) -> float:
    """`docker build --no-cache` of the packages, with the host's CA bundle in
    the context as the proxy may need it (a bare build has no other way in)."""
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(CA_BUNDLE, Path(context) / "ca.crt")
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base_image}\nCOPY ca.crt /tmp/ca.crt\n"
            f"RUN PIP_CERT=/tmp/ca.crt PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 "
            f"python3 -m pip install -q {' '.join(PACKAGES)}\n"
        )
        return timed(["docker", "build", "-q", "--no-cache", "-t", tag, context], env,
                     stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--base-image", default="cast-base:bookworm")
    parser.add_argument("--own-server", action="store_true",
                        help="a separately started control plane and worker instead of the embedded default "
                             "(`cast run` under a temporary CAST_HOME, CAST_EXECUTOR=docker)")
    parser.add_argument("--no-cold", action="store_true", help="only the warm runs (step 1)")
    parser.add_argument("--command", default="true",
                        help="the warm runs' command, for cast and bare alike (`echo line`: what one line of output "
                             "adds to each)")
    args = parser.parse_args()
    repository = f"cast-env-bench-{uuid.uuid4().hex[:8]}"
    bare_tag = f"cast-bench-bare:{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as root:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_") and k != "PYTHONDONTWRITEBYTECODE"}
        # Python's bytecode cache on, as for an installed cast (an editable install run with
        # PYTHONDONTWRITEBYTECODE compiles cast's modules on every start, ~100 ms a CLI call here).
        env.update(PYTHONPYCACHEPREFIX=f"{root}/pycache")
        env.update(CAST_HOME=f"{root}/home", CAST_WORKER_BASE_IMAGE=args.base_image,
                   CAST_WORKER_IMAGE_REPOSITORY=repository)
        server = worker = None
        outside = Path(root, "empty")  # not in a git repo: no code is sent
        outside.mkdir()
        try:
            if not args.own_server:
                env.update(CAST_EXECUTOR="docker")
                timed([CAST, "run", "true"], env, cwd=outside)  # warm-up: starts the embedded default, builds once
                state = json.loads(Path(root, "home", "server.json").read_text())
                url, services = state["url"], [state["pid"]]
                token = Path(root, "home", "admin-token").read_text().strip()
            else:
                server = subprocess.Popen([sys.executable, "-m", "cast.server", "--host", "127.0.0.1", "--port",
                                           str(port), "--data-dir", f"{root}/server"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_healthy(url)
                worker = subprocess.Popen([sys.executable, "-m", "cast.worker", "--server", url, "--token-file",
                                           f"{root}/server/worker-token", "--work-dir", f"{root}/worker",
                                           "--executor", "docker"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                token = Path(f"{root}/server/admin-token").read_text().strip()
                services = [server.pid, worker.pid]
                env.update(CAST_SERVER_URL=url, CAST_TOKEN=token)
                timed([CAST, "run", "true"], env, cwd=outside)  # warm-up: builds the plain environment once
            cast_times, bare_times, cast_cpu, service_cpu, spawned = [], [], [], [], []
            bare_command = ["true"] if args.command == "true" else ["bash", "-c", args.command]
            for _ in range(args.runs):  # interleaved, so both see the same machine
                before = tree_cpu(services)
                started = time.time()
                cast_times.append(timed([CAST, "run", args.command], env, cast_cpu, cwd=outside))
                spawned.append((started, time.time()))
                service_cpu.append(tree_cpu(services) - before)
                bare_times.append(timed(["docker", "run", "--rm", args.base_image, *bare_command], env))

            warm = [stages(url, token, run_id, spawned[run_id - 2]) for run_id in range(2, args.runs + 2)]
            if not args.no_cold:
                pip_flags = [flag for package in PACKAGES for flag in ("--pip", package)]
                cold = timed([CAST, "run", *pip_flags, "true"], env, cwd=outside)
                cold_building = stage_seconds(url, token, args.runs + 2, "building")
                bare_cold = bare_build(args.base_image, bare_tag, env)
        finally:
            if not args.own_server:
                subprocess.run([CAST, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for process in (worker, server):
                if process is not None:
                    process.terminate()
                    process.wait(30)
            images = subprocess.run(["docker", "images", "-q", repository], capture_output=True, text=True).stdout
            subprocess.run(["docker", "rmi", "-f", *images.split(), bare_tag], capture_output=True)

    cast_median, bare_median = statistics.median(cast_times), statistics.median(bare_times)
    print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); "
          f"{'own server and worker' if args.own_server else 'embedded default'}")
    print(f"warm cast run {args.command!r} (docker)   : median {cast_median * 1000:.0f} ms over {args.runs} runs")
    print(f"bare docker run --rm BASE {' '.join(bare_command)}: median {bare_median * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio                         : {cast_median / bare_median:.2f}x  (goal: at most 1.2x: "
          f"{'met' if cast_median <= 1.2 * bare_median else 'not met'})")
    print(f"  CPU of the cast process (user + system): median {statistics.median(cast_cpu) * 1000:.0f} ms")
    print(f"  CPU of the control plane and worker during a run (user + system; the container's own is the "
          f"engine's): median {statistics.median(service_cpu) * 1000:.0f} ms")
    print("  where a run's time goes (medians; from the `cast` process's spawn to the run's creation, its "
          "stages, then from its final status to the process's exit; `running` is the container's create, start "
          "and exit, its removal comes after the run):")
    for stage in warm[0]:
        print(f"    {stage:<20}: {statistics.median(times.get(stage, 0.0) for times in warm) * 1000:.0f} ms")
    if not args.no_cold:
        print(f"cold cast run, --pip {' '.join(PACKAGES)}: {cold:.1f} s end to end, building stage "
              f"{cold_building:.1f} s")
        print(f"bare docker build --no-cache, same packages: {bare_cold:.1f} s")


if __name__ == "__main__":
    main()
