"""Benchmark: cast against Ray Jobs, side by side in one process run.

Rows (pick with --rows, comma-separated; all by default):

- fixed   : a warm `cast run true` against `ray job submit -- true`, alternately
- pip     : a new pip package (`--pip six`) the first and the second time against
            Ray's `runtime_env={"pip": ["six"]}` the first and the second time
- lines   : a run printing --lines lines (default 200000,1000000), followed to
            its end (`cast run` / `ray job submit`, stdout read and dropped),
            with the cast control plane's CPU time per line (its process's
            utime+stime from /proc, before and after)
- latency : print -> follower latency: the run prints its clock every 0.2 s and
            the follower (`cast run` / `ray job submit`) sees the line; median
- logs    : `cast logs N` of the largest lines run against `ray job logs ID`

The cast side is the embedded default (`cast run` under a temporary CAST_HOME,
local executor), started by the first run and stopped at the end. Ray (pinned
below) is installed once into its own virtual environment under
~/.cache/cast-bench/ray-venv with the host's pip, so the host's pip
configuration applies. Its head runs inside a network namespace whose only way
out is a veth pair with NAT (Ray binds the host's external address otherwise,
and its pip needs the host's package index); the head is pinned to the
namespace's loopback. The namespace, the veth pair and their firewall rules are
torn down at the end, pass or fail. Needs root (ip netns).

    python bench/bench_peers.py [--rows fixed,pip,lines,latency,logs] [--lines 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

RAY_VERSION = "2.58.0"
RAY_VENV = Path.home() / ".cache" / "cast-bench" / "ray-venv"
RAY_ADDRESS = "http://127.0.0.1:8265"
ROWS = ("fixed", "pip", "lines", "latency", "logs")
# The `cast` script installed beside this interpreter: a PATH lookup may hit a
# version-manager shim (pyenv's adds ~100 ms) that a user's install would not have.
CAST = str(Path(sys.executable).with_name("cast"))
CLOCK_PRINTER = ("python3 -u -c 'import time\nfor _ in range(30):\n    print(\"T\", time.time())\n"
                 "    time.sleep(0.2)'")
# Ray's raylet gives its agents about 18 s to start and write their ports; on a busy machine
# they miss that and the head fails to start, so it is tried again.
START_ATTEMPTS = 4
NS_NET = "10.213.77"  # the veth pair's /30: .1 on the host, .2 in the namespace


def printer_command(lines: int) -> str:
    return f"python3 -c 'import sys\nsys.stdout.writelines(f\"line {{i}}\\n\" for i in range({lines}))'"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def ensure_ray() -> Path:
    ray = RAY_VENV / "bin" / "ray"
    if ray.exists():
        version = sh(str(RAY_VENV / "bin" / "python"), "-c", "import ray; print(ray.__version__)").stdout.strip()
        if version == RAY_VERSION:
            return ray
    print(f"installing ray[default]=={RAY_VERSION} into {RAY_VENV} (once)…", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(RAY_VENV)], check=True)
    subprocess.run([str(RAY_VENV / "bin" / "pip"), "install", "-q", f"ray[default]=={RAY_VERSION}"], check=True)
    return ray


class RayHead:
    """A Ray head in its own network namespace, reached with `ip netns exec`."""

    def __init__(self, ray: Path):
        self.ray = ray
        self.ns = f"castbench{os.getpid()}"
        self.veth = f"cb{os.getpid() % 100000}"
        self.rules: list[list[str]] = []
        self.env = {**bytecode_env(os.environ, Path(tempfile.gettempdir()) / "cast-bench-pycache"),
                    "PATH": f"{ray.parent}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ADDRESS": RAY_ADDRESS,
                    # On a busy machine the dashboard's modules (the job API) miss their 30 s start bound.
                    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "300",
                    "RAY_agent_register_timeout_ms": "300000", "RAY_raylet_start_wait_time_s": "300"}

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def job(self, *args: str) -> list[str]:
        return self.cmd(str(self.ray), "job", "submit", "--address", RAY_ADDRESS, *args)

    def __enter__(self) -> "RayHead":
        sh("ip", "netns", "add", self.ns)
        try:
            sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", f"{self.veth}n")
            sh("ip", "link", "set", f"{self.veth}n", "netns", self.ns)
            sh("ip", "addr", "add", f"{NS_NET}.1/30", "dev", self.veth)
            sh("ip", "link", "set", self.veth, "up")
            sh("ip", "-n", self.ns, "addr", "add", f"{NS_NET}.2/30", "dev", f"{self.veth}n")
            sh("ip", "-n", self.ns, "link", "set", f"{self.veth}n", "up")
            sh("ip", "-n", self.ns, "route", "add", "default", "via", f"{NS_NET}.1")
            for rule in (["-t", "nat", "POSTROUTING", "-s", f"{NS_NET}.0/30", "-j", "MASQUERADE"],
                         ["FORWARD", "-i", self.veth, "-j", "ACCEPT"], ["FORWARD", "-o", self.veth, "-j", "ACCEPT"]):
                table, chain = (rule[:2], rule[2]) if rule[0] == "-t" else ([], rule[0])
                rest = rule[3:] if table else rule[1:]
                sh("iptables", *table, "-I", chain, *rest)
                self.rules.append([*table, "-D", chain, *rest])
            for attempt in range(1, START_ATTEMPTS + 1):
                started = subprocess.run(self.cmd(str(self.ray), "start", "--head", "--node-ip-address",
                                                  "127.0.0.1", "--dashboard-host", "127.0.0.1", "--num-cpus", "2",
                                                  "--disable-usage-stats"),
                                         env=self.env, capture_output=True, text=True)
                if started.returncode == 0:
                    break
                subprocess.run(self.cmd(str(self.ray), "stop", "--force"), env=self.env, capture_output=True)
                print(f"ray start --head failed (attempt {attempt} of {START_ATTEMPTS})", file=sys.stderr)
            else:
                raise SystemExit(f"ray start --head failed:\n{started.stdout[-3000:]}{started.stderr[-3000:]}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(self.cmd(str(self.ray), "stop", "--force"), env=self.env, capture_output=True)
        for rule in self.rules:
            sh("iptables", *rule, check=False)
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def bytecode_env(environ, cache: Path) -> dict:
    """The environment with Python's bytecode cache on (under `cache`), as an
    installed program has it: with PYTHONDONTWRITEBYTECODE set (as on the
    development machine), an editable install compiles every module it
    imports from source on every start (about 100 ms for the CLI)."""
    env = {k: v for k, v in environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def follow_latency(cmd: list[str], env: dict) -> float:
    """Median of (the follower's clock when it reads a `T <time>` line) - <time>."""
    delays = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          bufsize=1, cwd=tempfile.gettempdir()) as process:
        for line in process.stdout:
            seen = time.time()
            words = line.split()
            if len(words) == 2 and words[0] == "T":
                try:
                    delays.append(seen - float(words[1]))
                except ValueError:
                    pass
    if not delays:
        raise SystemExit(f"no clock line came through {cmd[:3]}")
    return statistics.median(delays)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--lines", default="200000,1000000", help="line counts for the lines row, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="alternate pairs for the fixed row")
    args = parser.parse_args()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    line_counts = [int(n) for n in args.lines.split(",")]
    if os.geteuid() != 0:
        raise SystemExit("bench_peers.py needs root for its network namespace (ip netns)")
    # A SIGTERM still tears down the namespace, the veth pair, their rules and Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ray = ensure_ray()
    results: list[tuple[str, str, str, str]] = []  # (row, cast, ray, ratio)

    def record(what: str, cast_s: float, ray_s: float, extra: str = "") -> None:
        results.append((what, fmt(cast_s), fmt(ray_s), f"{cast_s / ray_s:.2f}x{extra}"))
        print(f"{what}: cast {fmt(cast_s)}, ray {fmt(ray_s)}, {cast_s / ray_s:.2f}x{extra}", flush=True)

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home, RayHead(ray) as head:
        env = {k: v for k, v in bytecode_env(os.environ, Path(home, "pycache")).items() if not k.startswith("CAST_")}
        env.update(CAST_HOME=home, CAST_EXECUTOR="local")
        try:
            timed([CAST, "run", "true"], env)  # starts the embedded default
            timed(head.job("--", "true"), head.env)  # Ray's first job starts its job machinery
            server_pid = int(json.loads(Path(home, "server.json").read_text())["pid"])
            run_ids = iter(range(2, 10**6))  # the embedded server numbers its runs from 1
            if "fixed" in rows:
                cast_times, ray_times = [], []
                for _ in range(args.runs):
                    cast_times.append(timed([CAST, "run", "true"], env))
                    next(run_ids)
                    ray_times.append(timed(head.job("--", "true"), head.env))
                record(f"warm run of `true`, median of {args.runs}", statistics.median(cast_times),
                       statistics.median(ray_times))
            if "pip" in rows:
                pip_env = json.dumps({"pip": ["six"]})
                check = "python3 -c 'import six'"
                for which in ("first", "second"):
                    cast_s = timed([CAST, "run", "--pip", "six", check], env)
                    next(run_ids)
                    ray_s = timed(head.job("--runtime-env-json", pip_env, "--", "bash", "-c", check), head.env)
                    record(f"`--pip six`, {which} time", cast_s, ray_s)
            logs_of = None
            if "lines" in rows or "logs" in rows:
                for count in (line_counts if "lines" in rows else [max(line_counts)]):
                    before = cpu_seconds(server_pid)
                    cast_s = timed([CAST, "run", printer_command(count)], env)
                    cpu = cpu_seconds(server_pid) - before
                    run_id = next(run_ids)
                    job_id = f"castbench-{uuid.uuid4().hex[:8]}"
                    ray_s = timed(head.job("--submission-id", job_id, "--", "bash", "-c", printer_command(count)),
                                  head.env)
                    record(f"{count:,} lines printed, end to end", cast_s, ray_s,
                           f"; cast control plane CPU {cpu:.1f} s = {cpu / count * 1e6:.0f} us/line")
                    if count == max(line_counts):
                        logs_of = (count, run_id, job_id)
            if "latency" in rows:
                cast_s = follow_latency([CAST, "run", CLOCK_PRINTER], env)
                next(run_ids)
                ray_s = follow_latency(head.job("--", "bash", "-c", CLOCK_PRINTER), head.env)
                record("print -> follower latency, median", cast_s, ray_s)
            if "logs" in rows and logs_of:
                count, run_id, job_id = logs_of
                cast_s = timed([CAST, "logs", str(run_id)], env)
                ray_s = timed(head.cmd(str(ray), "job", "logs", "--address", RAY_ADDRESS, job_id), head.env)
                record(f"`cast logs` / `ray job logs` of the {count:,}-line log", cast_s, ray_s)
        finally:
            subprocess.run([CAST, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"\nload average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores); "
          f"ray {RAY_VERSION}\n")
    print("| work | cast | Ray Jobs | cast / Ray |\n| --- | --- | --- | --- |")
    for what, cast_text, ray_text, ratio in results:
        print(f"| {what} | {cast_text} | {ray_text} | {ratio} |")


if __name__ == "__main__":
    main()
