"""A real PostgreSQL server for tests: its own cluster in a data dir, on one port.

Owns starting, stopping, killing and restarting a throwaway PostgreSQL cluster
with the machine's binaries (`initdb`, `pg_ctl`, `postgres` on PATH, or
Debian's under /usr/lib/postgresql/*/bin). Trust authentication on the given
host, fsync off: it is for tests only, yet a kill() loses no acknowledged commit.

PostgreSQL refuses to run as root. Run as root, every command goes through a
user namespace (`unshare --user --map-user=65534`): inside it the process is
unprivileged, yet it is root outside, so it can use a data dir under root's
private temp dirs and its files are root's to remove afterwards.

`wrap` prefixes every command, e.g. `["ip", "netns", "exec", "h1"]` to run the
server inside a network namespace.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUPERUSER = "cast"


def bin_dir() -> Path:
    """The directory of the machine's PostgreSQL server binaries."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(Path(p).parent.parent.name))
    if not candidates:
        raise RuntimeError("no PostgreSQL binaries found (run scripts/setup.sh --system)")
    return Path(candidates[-1]).parent


def available() -> bool:
    try:
        bin_dir()
    except RuntimeError:
        return False
    return True


class PostgresServer:
    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 5432, wrap: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.wrap = list(wrap or [])
        self.bin = bin_dir()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    def _command(self, tool: str, *args: str) -> list[str]:
        unprivileged = (["unshare", "--user", "--map-user=65534", "--map-group=65534"]
                        if os.geteuid() == 0 else [])
        return [*self.wrap, *unprivileged, str(self.bin / tool), *args]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(self._command(tool, *args), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}\n{log}")

    def start(self) -> "PostgresServer":
        """initdb on first start, then start the server and wait until it takes connections."""
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync")
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '{self.host}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.data_dir}'\n"
                    # No fsync: only the machine crashing could lose what the OS
                    # holds. Commits stay synchronous, so a SIGKILLed server
                    # (kill()) keeps every commit it acknowledged.
                    "fsync = off\nfull_page_writes = off\n"
                    "max_connections = 400\nshared_buffers = 128MB\n"
                    "log_min_messages = warning\n")
            with open(self.data_dir / "pg_hba.conf", "w") as hba:
                hba.write("local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60", "start")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown (open connections are ended); nothing if it is not running."""
        if self.pid() is not None:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would."""
        pid = self.pid()
        if pid is None:
            return
        # pg_ctl starts the postmaster in a session of its own: its group is
        # the postmaster and every backend.
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # An unreaped zombie still answers kill(pid, 0), so the next postmaster
        # would take the lock files as held: remove them, as after a crash.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.data_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if _alive(pid) else None

    def dsn(self, dbname: str) -> str:
        """A libpq connection string (for psycopg)."""
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of one database on this server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql+psycopg://{SUPERUSER}@{host}:{self.port}/{dbname}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE `name` (a copy of `template` if given); returns its URL."""
        import psycopg
        from psycopg import sql

        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours (a killed postmaster we started) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
