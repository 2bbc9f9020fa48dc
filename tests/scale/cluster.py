"""A cast deployment across network namespaces: the hosts of the scale-out tests.

Owns starting and stopping the parts, each on its own host (`netns.Network`)
with its own working dir: PostgreSQL (`db`), the S3 store (`s3`), two
control-plane replicas (`r1`, `r2`, each with its own data dir: they share
only the database and the store), nginx with docker/nginx/cast.conf (`lb`)
and three workers (`w1`..`w3`). The test process is the client: the SDK and
the CLI reach the balancer's address over the bridge.

`Cluster` is a context manager: leaving it, pass or fail, stops every process
it started, removes the namespaces and the bridge (`Network.close`) and the
temporary dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from cast.client.sdk import Client
from tests.conftest import wait_until
from tests.realservers.postgres import PostgresServer
from tests.realservers.seaweed import SeaweedServer
from tests.scale.netns import Host, Network, owner_gone

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO_ROOT / "docker" / "nginx" / "cast.conf"
PORT = 8470
BUCKET = "cast"
# Short, so a lost worker's run is interrupted within seconds; long enough
# that a busy 2-core machine does not cost a live run its lease (6 s did).
LEASE_SECONDS = 20


DIR_PREFIX = "cast-scale-"


def _sweep_stale_dirs() -> None:
    """Remove the temporary dirs of earlier runs whose pytest process is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        tag = path.name[len(DIR_PREFIX):].split("-")[0]
        if owner_gone(tag):
            shutil.rmtree(path, ignore_errors=True)


class Proc:
    """One process on one host, in its own session (so its children go with it)."""

    def __init__(self, host: Host, argv: list[str], log: Path, env: dict):
        self.host, self.argv, self.log_path, self.env = host, argv, log, env
        self.process: subprocess.Popen | None = None

    def start(self) -> "Proc":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([*self.host.wrap, *self.argv], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int, wait: float = 20) -> None:
        if not self.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class Cluster:
    def __init__(self, *, workers: int = 3, max_runs: int = 4):
        self.workers_wanted, self.max_runs = workers, max_runs
        self.net = Network()
        _sweep_stale_dirs()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.net.tag}-"))
        self.procs: list[Proc] = []
        self.replicas: dict[str, Proc] = {}
        self.workers: dict[str, Proc] = {}
        self.db: PostgresServer | None = None
        self.s3: SeaweedServer | None = None

    # --- lifecycle -------------------------------------------------------

    def __enter__(self) -> "Cluster":
        try:
            self.net.__enter__()
            for role in ("db", "s3", "r1", "r2", "lb", *(f"w{i}" for i in range(1, self.workers_wanted + 1))):
                self.net.add(role)
            self._start_db()
            self._start_store()
            self.env = self._server_env()
            # One after the other: the first migrates the empty database and bootstraps the tokens.
            for role in ("r1", "r2"):
                self.start_replica(role)
            self._start_balancer()
            for i in range(1, self.workers_wanted + 1):
                self.start_worker(f"w{i}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            for proc in reversed(self.procs):
                proc.signal(signal.SIGKILL, wait=30)
            for server in (self.s3, self.db):
                if server is not None:
                    with contextlib.suppress(Exception):
                        server.kill()
        finally:
            self.net.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def host(self, role: str) -> Host:
        return self.net.hosts[role]

    def _start_db(self) -> None:
        host = self.host("db")
        self.db = PostgresServer(self.tmp / "db" / "pgdata", host=host.addr, port=5432, wrap=host.wrap)
        (self.tmp / "db").mkdir()
        self.db.start()
        self.database_url = self.db.create_database("cast")

    def _start_store(self) -> None:
        host = self.host("s3")
        self.s3 = SeaweedServer(self.tmp / "s3", host=host.addr, port=8333, wrap=host.wrap).start()
        self.s3.create_bucket(BUCKET)

    def _server_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAST_", "AWS_"))}
        env.update(self.s3.env(BUCKET))
        env.update({"CAST_DATABASE_URL": self.database_url, "CAST_LEASE_SECONDS": str(LEASE_SECONDS),
                    "PYTHONUNBUFFERED": "1", "CAST_HOME": str(self.tmp / "home")})
        return env

    # --- replicas --------------------------------------------------------

    def replica_url(self, role: str) -> str:
        return f"http://{self.host(role).addr}:{PORT}"

    def start_replica(self, role: str) -> Proc:
        data_dir = self.tmp / role
        proc = Proc(self.host(role), [sys.executable, "-m", "cast.server", "--host", self.host(role).addr,
                                      "--port", str(PORT), "--data-dir", str(data_dir), "--no-access-log"],
                    self.tmp / f"{role}.log", self.env).start()
        self.procs.append(proc)
        self.replicas[role] = proc
        wait_until(lambda: self._healthy(proc, self.replica_url(role)), timeout=120, interval=0.1,
                   what=f"replica {role}:\n{proc.tail()}")
        return proc

    @staticmethod
    def _healthy(proc: Proc, url: str) -> bool:
        if not proc.alive:
            raise AssertionError(f"{proc.argv} exited:\n{proc.tail()}")
        try:
            return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_replica(self, role: str) -> None:
        self.replicas[role].signal(signal.SIGKILL)

    @property
    def admin_token(self) -> str:
        return (self.tmp / "r1" / "admin-token").read_text().strip()

    @property
    def worker_token_file(self) -> Path:
        return self.tmp / "r1" / "worker-token"

    # --- the balancer ----------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host('lb').addr}:{PORT}"

    def _start_balancer(self) -> None:
        conf_dir = self.tmp / "lb"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (conf_dir / sub).mkdir(parents=True)
        (conf_dir / "cast-upstreams.conf").write_text("".join(
            f"server {self.host(role).addr}:{PORT} max_fails=1 fail_timeout=2s;\n" for role in ("r1", "r2")))
        temp_paths = "".join(f"    {sub}_temp_path {conf_dir / sub};\n"
                             for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        temp_paths = temp_paths.replace(f"client_body_temp_path {conf_dir / 'client_body'}",
                                        f"client_body_temp_path {conf_dir / 'body'}")
        (conf_dir / "nginx.conf").write_text(
            f"user root;\nworker_processes 1;\npid {conf_dir / 'nginx.pid'};\n"
            f"error_log {conf_dir / 'error.log'} warn;\ndaemon off;\n"
            "events { worker_connections 8192; }\n"
            f"http {{\n    access_log off;\n{temp_paths}    include {NGINX_CONF};\n}}\n")
        proc = Proc(self.host("lb"), ["nginx", "-c", str(conf_dir / "nginx.conf"), "-p", str(conf_dir)],
                    self.tmp / "lb.log", self.env).start()
        self.procs.append(proc)
        wait_until(lambda: self._healthy(proc, self.url), timeout=30, interval=0.1, what=f"nginx:\n{proc.tail()}")

    # --- workers ---------------------------------------------------------

    def start_worker(self, role: str) -> Proc:
        env = {k: v for k, v in self.env.items() if not k.startswith(("CAST_", "AWS_"))}
        env.update({"PYTHONUNBUFFERED": "1", "CAST_HOME": str(self.tmp / role / "home")})
        proc = Proc(self.host(role), [sys.executable, "-m", "cast.worker", "--server", self.url,
                                      "--token-file", str(self.worker_token_file),
                                      "--work-dir", str(self.tmp / role / "work"), "--name", role,
                                      "--executor", "local", "--max-runs", str(self.max_runs)],
                    self.tmp / f"{role}.log", env).start()
        self.procs.append(proc)
        self.workers[role] = proc
        return proc

    def client(self) -> Client:
        return Client(self.url, self.admin_token)

    def logs(self) -> str:
        """Every process's log tail, for a failed assertion's message."""
        return "\n".join(f"--- {proc.log_path.name}\n{proc.tail()}" for proc in self.procs)
