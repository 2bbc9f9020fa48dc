"""Benchmark: logs end to end, with the control plane and the worker as
processes of their own: a run printing N lines followed to its end, the
control plane's CPU per line (its pid alone) and the worker's (its pid alone,
the run's own command not counted), `cast logs N` of that log, and print ->
follower latency; with --ray, the same N-line run through Ray Jobs in the same
process run, alternately (the Ray head from bench_peers.py, in its network
namespace; needs root).

The control plane is `python -m cast.server` on a free loopback port, the
worker `python -m cast.worker --executor local` with its work dir under
/dev/shm (another filesystem than the server's data dir, as a remote worker's
would be); the CLI reaches them with CAST_SERVER_URL and CAST_TOKEN. CPU is
user + system from /proc/<pid>/stat before and after each run. The bare
command printing to /dev/null is timed beside it. Latency: a run prints its
clock every 50 ms and a `cast logs -f` reader on this machine subtracts it on
arrival. Repeats alternate (cast, bare[, ray]) and medians are printed with
the load average.

    python bench/bench_logs.py [--lines 1000000] [--repeats 3] [--ray]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class Plane:
    """The control plane and one local worker, each its own process, stopped on exit."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = root / "data"
        self.work = Path(tempfile.mkdtemp(prefix="cast-bench-work-", dir="/dev/shm"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env.update(CAST_HOME=str(root / "home"), PYTHONPYCACHEPREFIX=str(root / "pycache"))
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Plane":
        log = open(self.root / "server.log", "ab")
        self.server = subprocess.Popen([sys.executable, "-m", "cast.server", "--host", "127.0.0.1", "--port",
                                        str(self.port), "--data-dir", str(self.data)], env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(self.server)
        deadline = time.monotonic() + 300
        while not (self.data / "worker-token").exists() or not self._up():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        log = open(self.root / "worker.log", "ab")
        self.worker = subprocess.Popen([sys.executable, "-m", "cast.worker", "--server", self.url, "--token-file",
                                        str(self.data / "worker-token"), "--work-dir", str(self.work), "--name",
                                        "bench", "--executor", "local"], env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(self.worker)
        self.cli_env = {**self.env, "CAST_SERVER_URL": self.url,
                        "CAST_TOKEN": (self.data / "admin-token").read_text().strip()}
        return self

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        subprocess.run(["rm", "-rf", str(self.work)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also run the N-line job through Ray Jobs (root)")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"cast": [], "bare": [], "ray": [], "server": [], "worker": [], "logs": []}
    loads = [os.getloadavg()[0]]
    head = None
    if args.ray:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_peers import RayHead, ensure_ray  # noqa: PLC0415  (only with --ray)
        head = RayHead(ensure_ray())
    with tempfile.TemporaryDirectory() as root, Plane(Path(root)) as plane:
        if head is not None:
            head.__enter__()
        try:
            env = plane.cli_env
            timed([CAST, "run", "true"], env)  # the worker's first lease and the environment
            if head is not None:
                timed(head.job("--", "true"), head.env)  # Ray's first job starts its job machinery
            for repeat in range(args.repeats):
                server_before, worker_before = cpu_seconds(plane.server.pid), cpu_seconds(plane.worker.pid)
                figures["cast"].append(timed([CAST, "run", printer(args.lines)], env))
                figures["server"].append(cpu_seconds(plane.server.pid) - server_before)
                figures["worker"].append(cpu_seconds(plane.worker.pid) - worker_before)
                figures["bare"].append(timed(["bash", "-c", printer(args.lines)], env))
                if head is not None:
                    job = f"castbench-{uuid.uuid4().hex[:8]}"
                    figures["ray"].append(timed(head.job("--submission-id", job, "--", "bash", "-c",
                                                         printer(args.lines)), head.env))
                figures["logs"].append(timed([CAST, "logs", str(repeat + 2)], env))
                loads.append(os.getloadavg()[0])
            delays = follower_latency(env)
        finally:
            if head is not None:
                head.__exit__(None, None, None)
    median = statistics.median
    print(f"load average {min(loads):.1f}-{max(loads):.1f} ({os.cpu_count()} cores); {args.lines:,} lines, "
          f"{args.repeats} repeats, medians")
    print(f"cast run printing N lines, end to end : {median(figures['cast']):.2f} s")
    if figures["ray"]:
        print(f"ray job submit of the same, end to end : {median(figures['ray']):.2f} s "
              f"(cast / Ray {median(figures['cast']) / median(figures['ray']):.2f}x; goal: at most 1)")
    print(f"bare command printing N lines          : {median(figures['bare']):.2f} s")
    print(f"control plane CPU per line             : {median(figures['server']) / args.lines * 1e6:.2f} µs "
          f"(goal: at most 2)")
    print(f"worker CPU per line                    : {median(figures['worker']) / args.lines * 1e6:.2f} µs")
    print(f"cast logs N of that log                : {median(figures['logs']):.2f} s (goal: at most 2 s)")
    print(f"print -> follower latency              : median {median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms over {len(delays)} lines (goal: at most 100 ms)")


if __name__ == "__main__":
    main()
