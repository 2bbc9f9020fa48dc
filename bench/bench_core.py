"""Benchmark: a warm `cast run "true"` end to end on the embedded default
against a bare `bash -c true`, in the same process run, and where its time goes.

Measured alternately (cast, bare, the CLI's start-up, the interpreter's), so
all see the same machine. Prints the medians, the ratio, and the run's time
split: the interpreter's start (`python -c pass`), the CLI's start-up and exit
(`cast --help`, and `cast run --help`, which imports only the `run` verb's
module as `cast run` does), the run on the control plane and worker (created -> final,
from its transitions, and each stage), and the rest (the create and follow
round trips, the outcome); and the CPU the control plane and its worker
spent per run (user + system of the server's process and its children, from
/proc, over the measured runs), a figure the machine's load moves far less than
the wall times. The embedded control plane and worker run under a temporary
CAST_HOME with the local executor and are stopped at the end. To compare
other code, put it first on PYTHONPATH: every process (CLI, server, worker)
inherits it.

Python's bytecode cache is on (PYTHONDONTWRITEBYTECODE dropped, the cache under
the temporary CAST_HOME), as for an installed cast; `--no-bytecode-cache` keeps
the environment's setting, with which an editable install compiles cast's
modules on every start.

    python bench/bench_core.py [--runs 20] [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

# The `cast` script installed beside this interpreter: a PATH lookup may hit a
# version-manager shim (pyenv's adds ~100 ms) that a user's install would not have.
CAST = str(Path(sys.executable).with_name("cast"))


CPU: dict[str, list[float]] = {}  # the command's own CPU seconds (user + system), by its name


def timed(cmd: list[str], env: dict, name: str = "") -> float:
    """Wall seconds of `cmd`; its CPU seconds go to CPU[name], a figure that
    a busy machine's queueing for the cores does not inflate as it does the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if name:
        CPU.setdefault(name, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def run_times(home: str, run_id: int) -> tuple[float, dict[str, float]]:
    """Run `run_id`'s seconds from created to final, and per stage."""
    state = json.loads(Path(home, "server.json").read_text())
    token = Path(home, "admin-token").read_text().strip()
    request = urllib.request.Request(f"{state['url']}/api/v1/runs/{run_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        run = json.load(answer)
    times = [(t["status"], datetime.fromisoformat(t["at"].replace("Z", "+00:00"))) for t in run["transitions"]]
    stages = {status: (after - at).total_seconds() for (status, at), (_, after) in zip(times, times[1:])}
    return (times[-1][1] - times[0][1]).total_seconds(), stages


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of processes `pids` and their live descendants, from /proc."""
    ticks, todo = 0, list(pids)
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:  # ended meanwhile
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def service_cpu(home: str) -> float:
    """CPU seconds of the embedded server's process and its live descendants (the worker)."""
    return tree_cpu([json.loads(Path(home, "server.json").read_text())["pid"]])


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="keep the environment's PYTHONDONTWRITEBYTECODE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        if not args.no_bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = f"{home}/pycache"
        env.update(CAST_HOME=home, CAST_EXECUTOR="local")
        times: dict[str, list[float]] = {"cast": [], "bare": [], "cli": [], "run-help": [], "python": []}
        try:
            subprocess.run([CAST, "run", "true"], env=env, check=True, stdout=subprocess.DEVNULL)  # warm-up: starts the embedded default
            service_before = service_cpu(home)
            for _ in range(args.runs):
                times["cast"].append(timed([CAST, "run", "true"], env, "cast run true"))
                times["bare"].append(timed(["bash", "-c", "true"], env))
                times["cli"].append(timed([CAST, "--help"], env, "cast --help"))
                times["run-help"].append(timed([CAST, "run", "--help"], env, "cast run --help"))
                times["python"].append(timed([sys.executable, "-c", "pass"], env, "python -c pass"))
            # The bash runs and the CLI's start-ups between the runs cost the server nothing.
            service = (service_cpu(home) - service_before) / args.runs
            server = [run_times(home, run_id) for run_id in range(2, args.runs + 2)]
        finally:
            subprocess.run([CAST, "down"], env=env, stdout=subprocess.DEVNULL)
    cast_median, bare_median = statistics.median(times["cast"]), statistics.median(times["bare"])
    on_server = [total for total, _ in server]
    print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); bytecode cache "
          f"{'off' if args.no_bytecode_cache else 'on'}")
    print(f"warm cast run true : median {cast_median * 1000:.0f} ms over {args.runs} runs")
    print(f"bare bash -c true  : median {bare_median * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio              : {cast_median / bare_median:.1f}x; against python -c pass (the floor of a Python "
          f"CLI): {cast_median / statistics.median(times['python']):.1f}x  (goal: cast run at most 100 ms: "
          f"{'met' if cast_median <= 0.1 else 'not met'})")
    print("where a run's time goes (medians):")
    print(f"  python -c pass (the interpreter's start)       : {ms(times['python'])}")
    print(f"  cast --help (the CLI's start-up and exit)      : {ms(times['cli'])}")
    print(f"  cast run --help (the same, as far as `run` goes; --help imports every verb module): "
          f"{ms(times['run-help'])}")
    print(f"  the run, created -> final (control plane+worker): {ms(on_server)}")
    for stage in server[0][1]:
        print(f"    {stage:<16}: {ms([stages.get(stage, 0.0) for _, stages in server])}")
    rest = [total - cli - run for total, cli, run in zip(times["cast"], times["run-help"], on_server)]
    print(f"  the rest (create and follow round trips, the outcome): {ms(rest)}")
    print("CPU time of the client's process (user + system), medians:")
    for name, seconds in CPU.items():
        print(f"  {name:<16}: {ms(seconds)}")
    print(f"CPU time of the control plane and worker per run (user + system, mean): {service * 1000:.0f} ms")


if __name__ == "__main__":
    main()
