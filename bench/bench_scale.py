"""Benchmark: the scale-out control plane alone, loaded by simulated workers.

Replicas behind nginx on PostgreSQL, loaded by SIMULATED workers that run nothing.
The stack is started by this script on loopback: a PostgreSQL server
(tests/realservers/postgres.py) in a temporary data dir, `--replicas` control
plane processes (`python -m cast.server`) on it, and nginx with
docker/nginx/cast.conf in front of them (`--database sqlite` puts the
replicas on one SQLite file instead, for comparison; `--replicas 1` goes
without the balancer).

The load is a TEST-ONLY generator, not cast's worker: asyncio processes whose
simulated workers speak the real worker HTTP protocol (register, long-poll
lease, heartbeats, and a run's requests as the real worker makes them for a
command that writes nothing and ends at once: `mounting`, `running`, the
sandbox's log line, `saving`, `pushing` and `complete` in one request) and run no
command, build nothing, push no outputs. So every figure is the control plane's
and the database's cost alone; a real worker adds its own on its own host.

Phases (each prints its figures):

  kinds      per-replica capacity, against one replica directly, closed loop
             with --clients concurrent requests: claims (lease, wait 0, on a
             pre-filled queue), status reports, heartbeats (a worker's one
             heartbeat, --heartbeat-leases of its leases in each), log appends
             (10 lines a batch); requests/s of each, the replica's CPU per
             request, its RSS, and the database's share of the CPU the replica
             and the database used.
  e2e        runs submitted at --rate for --seconds through the balancer,
             --workers simulated workers (one run at a time each); sustained
             runs/s from submit to complete, p50/p99 queued -> running (from
             the runs' transitions), zero duplicates checked in the
             database (one claim per run, attempt 1, every run complete),
             and the CPU per run of the replicas, of the database and of
             what else shares the cores (the load processes and nginx).
  heartbeat  N active runs on one replica, held by simulated workers of
             --runs-per-worker runs each, every worker heartbeating all its
             leases in one request at the real worker's interval
             (cast.protocol.messages.heartbeat_interval of the lease); N is
             raised until heartbeats fall behind (p99 answer past one
             interval, or a lease lost).

    python bench/bench_scale.py [--database postgres|sqlite] [--replicas 2]
        [--phases kinds,e2e,heartbeat] [--rate 100] [--seconds 20]
        [--workers 64] [--procs 4] [--clients 16] [--heartbeat-leases 10]
        [--heartbeat-steps 250,500,1000,2000] [--runs-per-worker 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.realservers

from cast.protocol.logs import LogBatch, LogRun  # noqa: E402
from cast.protocol.messages import LogStream  # noqa: E402
from cast.protocol.worker_messages import HeldLease, StatusReport, WorkerHeartbeat, heartbeat_interval  # noqa: E402
from cast.protocol.status import RunStatus as S  # noqa: E402

# The statuses a simulated worker reports after its claim (building), as the real agent does.
LOG_LINES_PER_BATCH = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode} before it was healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} was not healthy within {timeout} s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- CPU and memory of the stack's processes ---------------------------------------------

def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (PostgreSQL's backends, say)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants, those alive now
    and those that ended (PostgreSQL's backends of closed connections)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in _tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the stack ----------------------------------------------------------------------------

class Stack:
    """PostgreSQL (or one SQLite file), the replicas and nginx, in one temporary dir."""

    def __init__(self, root: Path, *, database: str, replicas: int, lease_seconds: float):
        self.root = root
        self.processes: list[subprocess.Popen] = []
        self.postgres = None
        self.nginx: subprocess.Popen | None = None
        if database == "postgres":
            from tests.realservers.postgres import PostgresServer

            self.postgres = PostgresServer(root / "pg", "127.0.0.1", free_port()).start()
            self.database_url = self.postgres.create_database("cast")
        else:
            self.database_url = f"sqlite:///{root / 'cast.db'}"
        self.replica_urls: list[str] = []
        self.replicas: list[subprocess.Popen] = []
        for index in range(replicas):
            port = free_port()
            data_dir = root / f"replica{index}"
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("CAST_")},
                   "CAST_DATABASE_URL": self.database_url, "CAST_LEASE_SECONDS": str(lease_seconds)}
            log = open(root / f"replica{index}.log", "wb")
            process = subprocess.Popen(
                [sys.executable, "-m", "cast.server", "--host", "127.0.0.1", "--port", str(port),
                 "--data-dir", str(data_dir), "--log-level", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
            self.processes.append(process)
            self.replicas.append(process)
            url = f"http://127.0.0.1:{port}"
            # The first start makes the tokens; the others find them in the database.
            wait_healthy(url, process)
            self.replica_urls.append(url)
        self.admin_token = (root / "replica0" / "admin-token").read_text().strip()
        self.worker_token = (root / "replica0" / "worker-token").read_text().strip()
        self.url = self._start_nginx() if replicas > 1 else self.replica_urls[0]

    def _start_nginx(self) -> str:
        """nginx with docker/nginx/cast.conf as it is, the replicas in its cast-upstreams.conf."""
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        port = free_port()
        prefix = self.root / "nginx"
        (prefix / "logs").mkdir(parents=True)
        site = (REPO_ROOT / "docker" / "nginx" / "cast.conf").read_text()
        (prefix / "cast.conf").write_text(site.replace("listen 8470;", f"listen 127.0.0.1:{port};"))
        (prefix / "cast-upstreams.conf").write_text(
            "".join(f"server {url.removeprefix('http://')} max_fails=1 fail_timeout=2s;\n"
                    for url in self.replica_urls))
        (prefix / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n"
            "events { worker_connections 16384; }\n"
            f"http {{\naccess_log off;\nclient_body_temp_path {prefix}/body;\nproxy_temp_path {prefix}/proxy;\n"
            "include cast.conf;\n}\n")
        self.nginx = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr", "wb"))
        self.processes.append(self.nginx)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, self.nginx, timeout=30)
        return url

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.postgres is not None:
            self.postgres.stop()

    def check_runs(self, first_id: int) -> dict:
        """Runs from `first_id` on, read from the database: duplicates, statuses, queued -> running."""
        from sqlalchemy import create_engine, func, select
        from sqlalchemy.orm import Session

        from cast.server.models import Run, RunTransition

        engine = create_engine(self.database_url)
        try:
            with Session(engine) as session:
                claims = dict(session.execute(
                    select(RunTransition.run_id, func.count())
                    .where(RunTransition.run_id >= first_id, RunTransition.status == S.BUILDING.value)
                    .group_by(RunTransition.run_id)).all())
                statuses = dict(session.execute(
                    select(Run.status, func.count()).where(Run.id >= first_id).group_by(Run.status)).all())
                retried = session.scalar(select(func.count()).where(Run.id >= first_id, Run.attempt > 1))
                times: dict[int, dict[str, object]] = {}
                for run_id, status, at in session.execute(
                        select(RunTransition.run_id, RunTransition.status, RunTransition.at)
                        .where(RunTransition.run_id >= first_id,
                               RunTransition.status.in_([S.MACHINE_REQUESTED.value, S.RUNNING.value,
                                                         S.COMPLETE.value]))):
                    times.setdefault(run_id, {}).setdefault(status, at)
        finally:
            engine.dispose()
        waits = [(t[S.RUNNING.value] - t[S.MACHINE_REQUESTED.value]).total_seconds()
                 for t in times.values() if S.RUNNING.value in t and S.MACHINE_REQUESTED.value in t]
        return {"claims": claims, "statuses": statuses, "retried": retried, "waits": waits, "times": times}


# --- simulated workers and clients (each function runs in its own process) ----------------

def _client(url: str, token: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"},
        # Idle connections are dropped before the replicas' keep-alive ends
        # them, so no request goes out on a connection the server is closing.
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections,
                            keepalive_expiry=2.0),
        timeout=httpx.Timeout(60.0))


class LeaseLost(Exception):
    """409 on a report: the server took the run back (its lease expired)."""


def _ok(answer: httpx.Response) -> httpx.Response:
    """The answer, or an error saying what it was (httpx's own does not cross processes)."""
    if answer.status_code == 409:
        raise LeaseLost(answer.text[:300])
    if answer.status_code >= 400:
        raise RuntimeError(f"{answer.request.method} {answer.request.url.path}: {answer.status_code} {answer.text[:300]}")
    return answer


async def _register(http: httpx.AsyncClient, name: str, max_runs: int = 1) -> str:
    answer = await http.post("/workers", json={"name": name, "executor": "local", "cpus": 2,
                                               "memory": 2**30, "max_runs": max_runs, "sandboxed": True})
    _ok(answer)
    return answer.json()["id"]


async def _report(http: httpx.AsyncClient, run_id: int, token: str, *statuses: S,
                  lines: dict[S, list[str]] | None = None, **last) -> None:
    """Status reports in one request, as the real worker sends them (`POST
    /runs/{id}/statuses`), each status with the log `lines` printed before it
    (the first and only lines of the run); `last` are fields of the last one
    (its exit code)."""
    reports = []
    for index, status in enumerate(statuses):
        report = StatusReport(token, status, **(last if index == len(statuses) - 1 else {})).to_dict()
        del report["lease_token"]
        if lines and status in lines:
            report["logs"] = {"seq": 0, "runs": [LogRun(LogStream.CAST, lines[status]).to_dict()]}
        reports.append(report)
    answer = _ok(await http.post(f"/runs/{run_id}/statuses", json={"lease_token": token, "reports": reports}))
    if answer.json()["refused"]:
        raise LeaseLost(f"run {run_id}: {', '.join(status.value for status in statuses)} refused")


def simulated_workers(url: str, token: str, count: int, submit_end: float, tag: str) -> list[int]:
    """`count` simulated workers, one run at a time each, until the queue stays
    empty after `submit_end`; the ids of the runs they were leased."""

    async def worker(http: httpx.AsyncClient, index: int, leased: list[int]) -> None:
        worker_id = await _register(http, f"sim-{tag}-{index}")
        while True:
            answer = await http.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 2})
            if answer.status_code == 204:
                if time.time() > submit_end:
                    return
                continue
            _ok(answer)
            lease = answer.json()
            run_id, lease_token = lease["run_id"], lease["lease_token"]
            leased.append(run_id)
            try:
                # The real worker's request for a short run that writes nothing:
                # `mounting` and `running` wait for company, and with nothing to
                # push the outcome follows `saving` and `pushing` at once
                # (worker/agent.py); the sandbox's line goes between
                # (worker/outbox.py).
                await _report(http, run_id, lease_token, S.MOUNTING, S.RUNNING, S.SAVING, S.PUSHING, S.COMPLETE,
                              exit_code=0, lines={S.SAVING: ["Sandbox: none (simulated worker)"]})
            except LeaseLost:
                continue  # as the real worker does: the run is the server's to retry; the check counts it

    async def main() -> list[int]:
        leased: list[int] = []
        async with _client(url, token, count) as http:
            await asyncio.gather(*(worker(http, index, leased) for index in range(count)))
        return leased

    return asyncio.run(main())


def submitter(url: str, token: str, rate: float, start: float, seconds: float, connections: int = 256) -> list[int]:
    """Runs of `true` submitted at `rate` per second (open loop) from `start` for `seconds`."""

    async def main() -> list[int]:
        ids: list[int] = []
        async with _client(url, token, connections) as http:
            async def one() -> None:
                answer = await http.post("/runs", json={"command": "true"})
                _ok(answer)
                ids.append(answer.json()["id"])

            tasks = []
            total = int(rate * seconds)
            for index in range(total):
                delay = start + index / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
        return ids

    return asyncio.run(main())


def _heartbeat(leases: list[tuple[int, str, str]]) -> dict:
    """A worker's heartbeat body for `leases` (run id, lease token, worker id)."""
    return WorkerHeartbeat(leases=[HeldLease(run_id, token) for run_id, token, _ in leases]).to_dict()


def closed_loop(url: str, worker_token: str, kind: str, runs: list[tuple[int, str, str]], clients: int,
                seconds: float, heartbeat_leases: int = 1) -> tuple[list[float], list[tuple[int, str, str]]]:
    """`clients` concurrent loops of one request kind for up to `seconds`: (latencies, runs claimed).

    claims: a lease (wait 0) per request, a worker per loop, until the queue is
    empty; status: mounting, then running, on each of `runs` (claimed before,
    each (run id, lease token, worker id)); logs: round after round over
    `runs`; heartbeat: round after round, a worker's heartbeat of up to
    `heartbeat_leases` of its runs each."""

    async def main() -> tuple[list[float], list[tuple[int, str, str]]]:
        latencies: list[float] = []
        claimed: list[tuple[int, str, str]] = []
        deadline = time.monotonic() + seconds
        async with _client(url, worker_token, clients) as http:
            async def request(worker_id: str, mine: list[tuple[int, str, str]],
                              groups: list[list[tuple[int, str, str]]], step: int) -> bool:
                """One request of this kind; False once there is nothing more to do."""
                if kind == "claims":
                    answer = await http.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 0})
                    if answer.status_code == 204:
                        return False
                    _ok(answer)
                    claimed.append((answer.json()["run_id"], answer.json()["lease_token"], worker_id))
                    return True
                if not mine or (kind == "status" and step >= 2 * len(mine)):
                    return False
                if kind == "heartbeat":
                    group = groups[step % len(groups)]
                    answer = _ok(await http.post(f"/workers/{group[0][2]}/heartbeat", json=_heartbeat(group)))
                    if any(state["lost"] for state in answer.json()["leases"]):
                        raise LeaseLost(f"a lease of worker {group[0][2]}")
                    return True
                run_id, lease_token, _ = mine[step % len(mine)]
                if kind == "status":
                    await _report(http, run_id, lease_token, S.MOUNTING if step < len(mine) else S.RUNNING)
                else:
                    seq = (step // len(mine)) * LOG_LINES_PER_BATCH
                    lines = [f"line {seq + i} of a simulated run" for i in range(LOG_LINES_PER_BATCH)]
                    batch = LogBatch(lease_token=lease_token, seq=seq, runs=[LogRun(LogStream.STDOUT, lines)])
                    _ok(await http.post(f"/runs/{run_id}/logs", json=batch.to_dict()))
                return True

            async def loop(index: int) -> None:
                worker_id = await _register(http, f"bench-{kind}-{index}", 10_000) if kind == "claims" else ""
                mine = runs[index::clients]
                by_worker: dict[str, list[tuple[int, str, str]]] = {}
                for held in mine:
                    by_worker.setdefault(held[2], []).append(held)
                groups = [leases[i:i + heartbeat_leases] for leases in by_worker.values()
                          for i in range(0, len(leases), heartbeat_leases)]
                step = 0
                while time.monotonic() < deadline:
                    begun = time.perf_counter()
                    try:
                        if not await request(worker_id, mine, groups, step):
                            return
                    except LeaseLost:
                        # A run the last phase did not reach in time: its lease
                        # expired. It leaves the rotation; the answer still counts.
                        if kind == "heartbeat":
                            groups.remove(groups[step % len(groups)])
                            if not groups:
                                return
                        else:
                            mine.remove(mine[step % len(mine)])
                    latencies.append(time.perf_counter() - begun)
                    step += 1

            await asyncio.gather(*(loop(index) for index in range(clients)))
        return latencies, claimed

    return asyncio.run(main())


def heartbeaters(url: str, worker_token: str, runs: list[tuple[int, str, str]], interval: float, seconds: float,
                 start: float) -> tuple[list[float], int]:
    """Each worker holding some of `runs` heartbeats all of them in one request,
    as the real worker does (an answer, then `interval` of waiting), from
    `start` (staggered over one interval) for `seconds`: (each heartbeat's
    latency, leases lost)."""

    async def main() -> tuple[list[float], int]:
        latencies: list[float] = []
        lost = 0
        by_worker: dict[str, list[tuple[int, str, str]]] = {}
        for held in runs:
            by_worker.setdefault(held[2], []).append(held)
        async with _client(url, worker_token, 512) as http:
            async def one(index: int, worker_id: str, leases: list[tuple[int, str, str]]) -> None:
                nonlocal lost
                await asyncio.sleep(max(0.0, start + interval * index / len(by_worker) - time.time()))
                while time.time() < start + seconds:
                    await asyncio.sleep(interval)
                    begun = time.perf_counter()
                    answer = _ok(await http.post(f"/workers/{worker_id}/heartbeat", json=_heartbeat(leases)))
                    latencies.append(time.perf_counter() - begun)
                    gone = sum(1 for state in answer.json()["leases"] if state["lost"])
                    if gone:
                        lost += gone
                        return

            await asyncio.gather(*(one(i, worker_id, leases) for i, (worker_id, leases) in enumerate(by_worker.items())))
        return latencies, lost

    return asyncio.run(main())


# --- phases -------------------------------------------------------------------------------

def _submit_all(url: str, token: str, count: int) -> list[int]:
    """`count` runs of `true` queued as fast as the server takes them (not timed)."""
    return submitter(url, token, rate=10_000, start=time.time(), seconds=count / 10_000, connections=16)


def _claim_all(url: str, worker_token: str, clients: int = 16) -> list[tuple[int, str, str]]:
    """Every queued run claimed, by `clients` workers (not timed)."""
    return closed_loop(url, worker_token, "claims", [], clients, 600)[1]


def _split(items: list, parts: int) -> list[list]:
    return [items[index::parts] for index in range(parts)]


def phase_kinds(stack: Stack, pool: multiprocessing.pool.Pool, args) -> dict:
    url = stack.replica_urls[0]
    replica = stack.replicas[0].pid
    database_pid = stack.postgres.pid() if stack.postgres is not None else None
    results = {}
    queued = _submit_all(url, stack.admin_token, args.kinds_runs)
    claimed: list[tuple[int, str]] = []
    for kind in ("claims", "status", "heartbeat", "logs"):
        before = (cpu_seconds(replica), cpu_seconds(database_pid) if database_pid else 0.0, time.monotonic())
        parts = [[] for _ in range(args.procs)] if kind == "claims" else _split(claimed, args.procs)
        futures = [pool.apply_async(closed_loop, (url, stack.worker_token, kind, part,
                                                  max(1, args.clients // args.procs), args.kind_seconds,
                                                  args.heartbeat_leases))
                   for part in parts]
        done = [f.get() for f in futures]
        wall = time.monotonic() - before[2]
        replica_cpu = cpu_seconds(replica) - before[0]
        database_cpu = (cpu_seconds(database_pid) - before[1]) if database_pid else 0.0
        latencies = [x for lat, _ in done for x in lat]
        if kind == "claims":
            claimed = [pair for _, pairs in done for pair in pairs]
        count = len(latencies)
        share = database_cpu / (database_cpu + replica_cpu) if database_pid and replica_cpu else float("nan")
        results[kind] = {"per_second": count / wall, "p50": percentile(latencies, 0.5),
                         "p99": percentile(latencies, 0.99), "replica_cores": replica_cpu / wall,
                         "database_cores": database_cpu / wall, "database_share": share, "rss": rss_mib(replica)}
        # CPU per request is the figure a loaded machine moves least: requests/s
        # on a core of one's own is its inverse.
        label = f"heartbeat ({args.heartbeat_leases} leases)" if kind == "heartbeat" else kind
        print(f"  {label:<9}: {count / wall:6.0f} requests/s ({count} in {wall:.1f} s, p50 "
              f"{percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms); "
              f"CPU per request: replica {replica_cpu / max(count, 1) * 1000:.2f} ms, database "
              f"{database_cpu / max(count, 1) * 1000:.2f} ms"
              + (f" ({share:.0%} of the two)" if database_pid else "")
              + f"; replica RSS {rss_mib(replica):.0f} MiB", flush=True)
    _end_runs(url, stack.worker_token, claimed)
    # The runs the claims left queued are stopped: the next phase's workers
    # would otherwise take them first and count their cost against its runs.
    _stop_runs(url, stack.admin_token, sorted(set(queued) - {run_id for run_id, _, _ in claimed}))
    return results


def phase_e2e(stack: Stack, pool: multiprocessing.pool.Pool, args) -> dict:
    start = time.time() + 3  # the workers register and start polling first
    submit_end = start + args.seconds
    cpu_before = [cpu_seconds(p.pid) for p in stack.replicas]
    db_before = cpu_seconds(stack.postgres.pid()) if stack.postgres is not None else 0.0
    # What else shares the machine's cores: the load processes and the balancer.
    others = [p.pid for p in pool._pool] + ([stack.nginx.pid] if stack.nginx else [])
    others_before = sum(cpu_seconds(pid) for pid in others)
    workers = [pool.apply_async(simulated_workers, (stack.url, stack.worker_token, count, submit_end, f"{i}"))
               for i, count in enumerate(_split_count(args.workers, args.procs)) if count]
    submitters = [pool.apply_async(submitter, (stack.url, stack.admin_token, args.rate / args.submitters, start,
                                               args.seconds))
                  for _ in range(args.submitters)]
    submitted = sorted(x for f in submitters for x in f.get())
    leased = [x for f in workers for x in f.get()]
    replica_cpu = [cpu_seconds(p.pid) - before for p, before in zip(stack.replicas, cpu_before)]
    database_cpu = (cpu_seconds(stack.postgres.pid()) - db_before) if stack.postgres is not None else 0.0
    others_cpu = sum(cpu_seconds(pid) for pid in others) - others_before
    checked = stack.check_runs(submitted[0])
    ours = set(submitted)
    claims = {k: v for k, v in checked["claims"].items() if k in ours}
    duplicates = sum(1 for v in claims.values() if v > 1) + (len(leased) - len(set(leased)))
    completes = [t[S.COMPLETE.value] for run_id, t in checked["times"].items() if run_id in ours and S.COMPLETE.value in t]
    queued = [t[S.MACHINE_REQUESTED.value] for run_id, t in checked["times"].items() if run_id in ours]
    span = (max(completes) - min(queued)).total_seconds() if completes else float("nan")
    waits = checked["waits"]
    result = {
        "submitted": len(submitted), "complete": len(completes), "duplicates": duplicates,
        "retried": checked["retried"], "statuses": checked["statuses"], "runs_per_second": len(completes) / span,
        "p50": percentile(waits, 0.5), "p99": percentile(waits, 0.99), "max": max(waits, default=float("nan")),
        "replica_cpu": replica_cpu, "database_cpu": database_cpu, "others_cpu": others_cpu, "span": span,
        "rss": [rss_mib(p.pid) for p in stack.replicas],
    }
    print(f"  submitted {len(submitted)} at {args.rate:g}/s for {args.seconds:g} s through "
          f"{'nginx and ' if stack.nginx else ''}{len(stack.replicas)} replica(s), {args.workers} simulated workers")
    print(f"  complete {len(completes)}; statuses {checked['statuses']}; duplicate claims {duplicates}; "
          f"retried {checked['retried']}")
    print(f"  sustained {result['runs_per_second']:.1f} runs/s end to end (first queued -> last complete "
          f"{span:.1f} s)")
    print(f"  queued -> running: p50 {result['p50'] * 1000:.0f} ms, p99 {result['p99'] * 1000:.0f} ms, "
          f"max {result['max'] * 1000:.0f} ms")
    done = max(len(completes), 1)
    print(f"  CPU per run: replicas {sum(replica_cpu) / done * 1000:.1f} ms, database {database_cpu / done * 1000:.1f} ms"
          f" ({database_cpu / max(database_cpu + sum(replica_cpu), 1e-9):.0%} of the two); replica RSS "
          f"{', '.join(f'{r:.0f}' for r in result['rss'])} MiB")
    print(f"  CPU per run of the load processes and nginx (not cast's): {others_cpu / done * 1000:.1f} ms; all four "
          f"used {(sum(replica_cpu) + database_cpu + others_cpu) / span:.2f} cores over the span", flush=True)
    return result


def _split_count(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def phase_heartbeat(stack: Stack, pool: multiprocessing.pool.Pool, args) -> dict:
    url = stack.replica_urls[0]
    interval = heartbeat_interval(args.lease_seconds)
    results = {}
    print(f"  heartbeat interval {interval:g} s (the worker's for a lease of {args.lease_seconds:g} s), "
          f"{args.runs_per_worker} runs a worker, {args.heartbeat_seconds:g} s a step, one replica")
    for active in args.heartbeat_steps:
        _submit_all(url, stack.admin_token, active)
        workers = max(1, -(-active // args.runs_per_worker))
        runs = _claim_all(url, stack.worker_token, clients=workers)
        start = time.time() + 2
        replica_before = cpu_seconds(stack.replicas[0].pid)
        # A worker's runs stay in one load process (they go in one request).
        parts = [[held for held in runs if int(held[2].rsplit("-", 1)[1], 16) % args.procs == part]
                 for part in range(args.procs)]
        futures = [pool.apply_async(heartbeaters, (url, stack.worker_token, part, interval,
                                                   args.heartbeat_seconds, start))
                   for part in parts if part]
        done = [f.get() for f in futures]
        latencies = [x for lat, _ in done for x in lat]
        lost = sum(n for _, n in done)
        cpu = cpu_seconds(stack.replicas[0].pid) - replica_before
        p99 = percentile(latencies, 0.99)
        per_second = len(latencies) / args.heartbeat_seconds
        # Behind: a heartbeat's answer takes longer than the wait between two,
        # so each worker heartbeats at under half the rate it means to, or a lease was lost.
        behind = lost > 0 or p99 > interval
        results[active] = {"per_second": per_second, "p50": percentile(latencies, 0.5), "p99": p99, "lost": lost,
                           "behind": behind, "cpu": cpu / args.heartbeat_seconds}
        print(f"  {active:>6} active runs, {workers} workers: {per_second:6.0f} heartbeats/s (at most "
              f"{workers / interval:.0f}/s); answer p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p99 "
              f"{p99 * 1000:.0f} ms; leases lost {lost}; replica CPU {cpu / args.heartbeat_seconds:.2f} cores, "
              f"{cpu / max(len(latencies), 1) * 1000:.2f} ms a heartbeat -> {'BEHIND' if behind else 'keeps up'}",
              flush=True)
        # The step's runs end, so the next step's claims find only its own.
        _end_runs(url, stack.worker_token, runs)
        if behind:
            break
    return results


def _end_runs(url: str, token: str, runs: list[tuple[int, str, str]]) -> None:
    async def main() -> None:
        async with _client(url, token, 32) as http:
            semaphore = asyncio.Semaphore(32)

            async def one(run_id: int, lease_token: str) -> None:
                async with semaphore:
                    # A run whose lease expired meanwhile is already over (409).
                    await http.post(f"/runs/{run_id}/status", json=StatusReport(
                        lease_token, S.FAILED, reason="benchmark step over").to_dict())

            await asyncio.gather(*(one(r, t) for r, t, _ in runs))

    asyncio.run(main())


def _stop_runs(url: str, token: str, run_ids: list[int]) -> None:
    async def main() -> None:
        async with _client(url, token, 32) as http:
            semaphore = asyncio.Semaphore(32)

            async def one(run_id: int) -> None:
                async with semaphore:
                    _ok(await http.post(f"/runs/{run_id}/stop"))

            await asyncio.gather(*(one(run_id) for run_id in run_ids))

    asyncio.run(main())


def _default_sigterm() -> None:
    """The load processes die of the pool's SIGTERM instead of taking main()'s cleanup handler."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--phases", default="kinds,e2e,heartbeat")
    parser.add_argument("--rate", type=float, default=100.0, help="runs submitted per second (e2e)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long runs are submitted (e2e)")
    parser.add_argument("--workers", type=int, default=64, help="simulated workers (e2e)")
    parser.add_argument("--submitters", type=int, default=2, help="submitting processes (e2e)")
    parser.add_argument("--procs", type=int, default=4, help="load generator processes")
    parser.add_argument("--clients", type=int, default=16, help="concurrent requests (kinds)")
    parser.add_argument("--kind-seconds", type=float, default=10.0)
    parser.add_argument("--kinds-runs", type=int, default=3000, help="runs queued for the claims (kinds)")
    parser.add_argument("--heartbeat-steps", type=lambda s: [int(x) for x in s.split(",")],
                        default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--heartbeat-seconds", type=float, default=15.0)
    parser.add_argument("--heartbeat-leases", type=int, default=10, help="leases in each heartbeat (kinds)")
    parser.add_argument("--runs-per-worker", type=int, default=10, help="runs each simulated worker holds (heartbeat)")
    # Workers heartbeat min(lease / 3, 1 s) apart (heartbeat_interval), so any lease of 3 s
    # or more loads the replica alike; 60 s (the server's default is 15) leaves time to
    # claim a heartbeat step's thousands of runs before its first heartbeat, where a
    # real worker would have been heartbeating since its first claim.
    parser.add_argument("--lease-seconds", type=float, default=60.0)
    args = parser.parse_args()
    phases = args.phases.split(",")
    # A SIGTERM (a `timeout`) ends the run through the cleanup below, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="cast-bench-scale-"))
    stack = None
    try:
        stack = Stack(root, database=args.database, replicas=args.replicas, lease_seconds=args.lease_seconds)
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores); database "
              f"{args.database}; {args.replicas} replica(s)" + (" behind nginx" if stack.nginx else ""))
        print("load: SIMULATED workers (test-only; they speak the worker protocol and run nothing)", flush=True)
        # Leaving the block terminates the load processes, also on an error or a signal.
        with multiprocessing.Pool(processes=max(args.procs, args.submitters) * 2, initializer=_default_sigterm) as pool:
            if "kinds" in phases:
                print("per replica, closed loop (one replica directly):")
                phase_kinds(stack, pool, args)
            if "e2e" in phases:
                print("end to end, trivial runs:")
                phase_e2e(stack, pool, args)
            if "heartbeat" in phases:
                print("heartbeat capacity, per replica:")
                phase_heartbeat(stack, pool, args)
    finally:
        if stack is not None:
            stack.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
