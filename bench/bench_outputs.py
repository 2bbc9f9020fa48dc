"""Benchmark: saving and pushing a run's 1 GiB output, against Python's
`hashlib.sha256` of a file of that size and against `cp` + that hash, in the
same process run.

Four measurements, taken alternately so all see the same machine:

- staged: `cast run` on the embedded default (local executor; the worker shares
  the server's storage on the working dir's filesystem), so the output is
  hashed in place and renamed into storage;
- http: a control plane and a worker started apart, the worker's working dir on
  /dev/shm (another filesystem), so the output streams once as a tar over
  HTTP, hashed by the server as it writes it (a remote worker's path);
- hash: `hashlib.sha256` of a 1 GiB file (hashlib.file_digest);
- cp + hash: `cp` of that file to a new one, then its hash.

A run's save + push is its time from `saving` to its final status (the run's
transitions). The run writes its output with `head -c 1G /dev/zero` (sha256
takes as long over zeros as over any bytes). Prints the medians and the ratios,
and the CPU seconds each took: for http, the server's and the worker's
processes over the whole run (all their threads); for the others, this process
and its children.

    python bench/bench_outputs.py [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

CAST = str(Path(sys.executable).with_name("cast"))
SIZE = 1 << 30
COMMAND = f"head -c {SIZE} /dev/zero > out.bin"


def _api(url: str, token: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{url}/api/v1{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def save_and_push(url: str, token: str, run_id: int) -> float:
    """Seconds from `saving` to the final status; the run must complete."""
    while (run := _api(url, token, f"/runs/{run_id}"))["status"] not in ("complete", "failed", "killed", "interrupted"):
        # The times come from the run's transitions, so a slow poll costs no precision,
        # and a fast one would take the CPU the push is measured on.
        time.sleep(1.0)
    assert run["status"] == "complete", run
    at = {t["status"]: datetime.fromisoformat(t["at"].replace("Z", "+00:00")) for t in run["transitions"]}
    return (at["complete"] - at["saving"]).total_seconds()


def staged(env: dict, home: str) -> float:
    out = subprocess.run([CAST, "run", "-d", "--json", COMMAND], env=env, check=True, capture_output=True,
                         text=True, cwd=home).stdout
    run_id = json.loads(out)["id"]
    state = json.loads(Path(home, "server.json").read_text())
    return save_and_push(state["url"], Path(home, "admin-token").read_text().strip(), run_id)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system, every thread) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_here() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def over_http(url: str, token: str, pids: list[int], cpu: list[float]) -> float:
    before = sum(map(_cpu_of, pids))
    run_id = _api(url, token, "/runs", {"command": COMMAND})["id"]
    seconds = save_and_push(url, token, run_id)
    cpu.append(sum(map(_cpu_of, pids)) - before)
    return seconds


def hash_only(path: Path, cpu: list[float]) -> float:
    start, before = time.perf_counter(), _cpu_here()
    with open(path, "rb") as handle:
        hashlib.file_digest(handle, "sha256")
    cpu.append(_cpu_here() - before)
    return time.perf_counter() - start


def cp_and_hash(path: Path, scratch: Path, cpu: list[float]) -> float:
    target = scratch / "copy.bin"
    start, before = time.perf_counter(), _cpu_here()
    subprocess.run(["cp", "--reflink=never", str(path), str(target)], check=True)
    with open(target, "rb") as handle:
        hashlib.file_digest(handle, "sha256")
    seconds = time.perf_counter() - start
    cpu.append(_cpu_here() - before)
    target.unlink()
    return seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"staged": [], "http": [], "hash": [], "cp + hash": []}
    cpu: dict[str, list[float]] = {"http": [], "hash": [], "cp + hash": []}
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as home, \
            tempfile.TemporaryDirectory(dir="/dev/shm", ignore_cleanup_errors=True) as shm:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        env.update(CAST_HOME=f"{home}/embedded", CAST_EXECUTOR="local")
        source = Path(home, "source.bin")
        with open(source, "wb") as out:
            for _ in range(SIZE >> 24):
                out.write(os.urandom(1 << 24))
        data_dir, port = Path(home, "server"), _free_port()
        url = f"http://127.0.0.1:{port}"
        plain = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        server = subprocess.Popen([sys.executable, "-m", "cast.server", "--host", "127.0.0.1", "--port", str(port),
                                   "--data-dir", str(data_dir)], env=plain, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        worker = None
        try:
            while not (data_dir / "worker-token").exists() or subprocess.run(
                    ["curl", "-sf", f"{url}/api/v1/health"], capture_output=True).returncode:
                time.sleep(0.2)
            worker = subprocess.Popen(
                [sys.executable, "-m", "cast.worker", "--server", url, "--token-file", str(data_dir / "worker-token"),
                 "--work-dir", f"{shm}/worker", "--name", "remote", "--executor", "local"],
                env=plain, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            token = (data_dir / "admin-token").read_text().strip()
            # Starts the embedded default; runs are sent from a folder outside any git repository.
            subprocess.run([CAST, "run", "true"], env=env, check=True, stdout=subprocess.DEVNULL, cwd=home)
            for _ in range(args.runs):
                times["staged"].append(staged(env, env["CAST_HOME"]))
                times["hash"].append(hash_only(source, cpu["hash"]))
                times["http"].append(over_http(url, token, [server.pid, worker.pid], cpu["http"]))
                times["cp + hash"].append(cp_and_hash(source, Path(home), cpu["cp + hash"]))
        finally:
            subprocess.run([CAST, "down"], env=env, stdout=subprocess.DEVNULL)
            for process in (worker, server):
                if process is not None:
                    process.terminate()
                    process.wait(30)
            shutil.rmtree(data_dir, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores); "
          f"{args.runs} runs each, alternately")
    for name, values in times.items():
        spent = f"; CPU {', '.join(f'{v:.2f}' for v in cpu[name])} s" if name in cpu else ""
        print(f"{name:<10}: median {median[name]:.2f} s  ({', '.join(f'{v:.2f}' for v in values)}{spent})")
    print(f"staged / hash      : {median['staged'] / median['hash']:.2f}x  (goal: at most 1.5x)")
    print(f"http / (cp + hash) : {median['http'] / median['cp + hash']:.2f}x  (goal: at most 1.5x)")


if __name__ == "__main__":
    main()
