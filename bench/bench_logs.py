"""Benchmark: logs on the embedded default with the local executor: a run
printing N lines end to end, the control plane's CPU per line, `cast logs N`
of that log, and print -> follower latency.

The end-to-end time is `cast run` of a command printing N lines, followed to
its end (the CLI's output thrown away), against the bare command printing to
/dev/null in the same process run. The control plane's CPU is read from
/proc/<pid>/stat (user + system) before and after the run, the pid from
CAST_HOME/server.json; the embedded default's worker runs in that process,
so the figure counts both. Latency: a run prints its clock every 50 ms and a
`cast logs -f` reader on this machine subtracts it from its own on arrival.
Repeats are taken alternately (cast, bare) and medians printed with the load.

    python bench/bench_logs.py [--lines 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAST = str(Path(sys.executable).with_name("cast"))


def printer(lines: int) -> str:
    return f"python3 -c 'import sys; sys.stdout.writelines(f\"line {{i}}\\n\" for i in range({lines}))'"


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 (utime, stime) in clock ticks; the name (field 2) may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def follower_latency(env: dict) -> list[float]:
    """Seconds from a line's print to a `cast logs -f` reader's receipt, per line."""
    command = ("python3 -c 'import time\n"
               "for _ in range(60): print(\"T\", repr(time.time()), flush=True); time.sleep(0.05)'")
    run_id = subprocess.run([CAST, "run", "-d", command], env=env, check=True, capture_output=True,
                            text=True, cwd=tempfile.gettempdir()).stdout
    run_id = next(word for word in run_id.split() if word.isdigit())
    follower = subprocess.Popen([CAST, "logs", "-f", run_id], env=env, stdout=subprocess.PIPE, text=True)
    delays = []
    for line in follower.stdout:
        words = line.split()
        if len(words) >= 2 and words[-2] == "T":
            delays.append(time.time() - float(words[-1]))
    follower.wait()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"cast": [], "bare": [], "cpu": [], "logs": []}
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(CAST_HOME=home, CAST_EXECUTOR="local", PYTHONPYCACHEPREFIX=f"{home}/pycache")
        try:
            # The first run starts the embedded default.
            subprocess.run([CAST, "run", "true"], env=env, check=True, stdout=subprocess.DEVNULL)
            pid = json.loads(Path(home, "server.json").read_text())["pid"]
            for repeat in range(args.repeats):
                before = cpu_seconds(pid)
                figures["cast"].append(timed([CAST, "run", printer(args.lines)], env))
                figures["cpu"].append(cpu_seconds(pid) - before)
                figures["bare"].append(timed(["bash", "-c", printer(args.lines)], env))
                figures["logs"].append(timed([CAST, "logs", str(repeat + 2)], env))
            delays = follower_latency(env)
        finally:
            subprocess.run([CAST, "down"], env=env, stdout=subprocess.DEVNULL)
    median = statistics.median
    print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); {args.lines:,} lines, "
          f"{args.repeats} repeats, medians")
    print(f"cast run printing N lines, end to end : {median(figures['cast']):.2f} s")
    print(f"bare command printing N lines          : {median(figures['bare']):.2f} s")
    print(f"control plane + worker CPU per line    : {median(figures['cpu']) / args.lines * 1e6:.1f} µs "
          f"(goal: at most 2)")
    print(f"cast logs N of that log                : {median(figures['logs']):.2f} s (goal: at most 2 s)")
    print(f"print -> follower latency              : median {median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms over {len(delays)} lines (goal: at most 100 ms)")


if __name__ == "__main__":
    main()
