"""The embedded default: a control plane and worker on this machine, started
by the first `cast` command that needs them and shared by every later one.

Owns: finding a running embedded server from `CAST_HOME/server.json`
(`{"url", "pid"}`, written by `python -m cast.server up --home HOME` once it
is healthy, with `wanted_port` when the port it tried first was taken: it
listens on the port of its last start in HOME, else 8470), starting one detached under a file lock so that two concurrent
first commands start only one, and stopping it (`cast down`), found by
server.json or, if that was lost, by the lock a running server holds on
HOME/server.lock. Stopping names the active runs and follows them to their
end: the server's worker stops them (outputs saved and pushed), or, asked to
kill, they are killed first through the API. The server and worker themselves live in cast.server; this
module only runs them as a subprocess, so the CLI never imports server code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from cast.protocol.status import LEASED_STATUSES, RunStatus, is_final

from .sdk import CastError
from .transport import ProtocolError, for_url

STATE_FILE = "server.json"
LOCK_FILE = "embedded.lock"
SERVER_LOCK_FILE = "server.lock"  # held by the running server, holding its pid
LOG_FILE = "server.log"
START_TIMEOUT = 90.0
# Past the server's own bound on its worker (60 s), which stops runs within its grace.
STOP_TIMEOUT = 90.0
PROGRESS_INTERVAL = 0.5  # seconds between looks at the stopping runs


def server_command(home: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cast.server", "up", "--home", str(home), *extra]


def read_state(home: Path) -> dict | None:
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or "url" not in state or "pid" not in state:
        return None
    return state


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthy(url: str, timeout: float = 1.0) -> bool:
    conn, base = for_url(url, timeout=timeout)
    try:
        conn.request("GET", base.partition("?")[0].rstrip("/") + "/api/v1/health")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, ProtocolError):
        return False
    finally:
        conn.close()


def serves_home(pid: int, home: Path) -> bool:
    """Whether process `pid` is `python -m cast.server up --home HOME`, by its
    command line (Linux's /proc; False where that cannot be read)."""
    try:
        words = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
        at = words.index(b"--home")
        return b"cast.server" in words and Path(os.fsdecode(words[at + 1])).resolve() == home.resolve()
    except (OSError, ValueError, IndexError):
        return False


def running_url(home: Path) -> str | None:
    """The URL of the embedded server under `home`, if one runs.

    server.json is written once the server is healthy and removed as it
    stops, so a live process of that pid that is this HOME's server (its
    command line says so, which a reused pid's does not) is trusted without
    asking it: a CLI call saves a connection and a round trip. Otherwise (no
    /proc, say) the server must answer its health check."""
    state = read_state(home)
    if not state or not pid_alive(state["pid"]):
        return None
    if serves_home(state["pid"], home) or healthy(state["url"]):
        return state["url"]
    return None


class _Lock:
    """An exclusive flock on HOME/embedded.lock, held while starting or stopping."""

    def __init__(self, home: Path):
        self.path = home / LOCK_FILE

    def __enter__(self):
        import fcntl

        self._file = open(self.path, "a")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._file.close()  # closing releases the lock


def ensure_running(home: Path) -> str:
    """The URL of the embedded server, starting it first if needed."""
    url = running_url(home)
    if url:
        return url
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _Lock(home):
        url = running_url(home)  # another command may have started it meanwhile
        if url:
            return url
        return _start(home)


def _start(home: Path) -> str:
    # imported here, as signal in stop(): a warm call finds the server running and needs neither
    import subprocess

    (home / STATE_FILE).unlink(missing_ok=True)
    log_path = home / LOG_FILE
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            server_command(home), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    sys.stderr.write(f"cast: starting the embedded server in {home} (log: {log_path})\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise CastError(f"the embedded server exited with code {code} while starting; see {log_path}{_last_line(log_path)}")
        state = read_state(home)
        if state and healthy(state["url"]):
            if state.get("wanted_port"):
                sys.stderr.write(f"cast: port {state['wanted_port']} is in use; the embedded server is at "
                                 f"{state['url']} (its port is kept for the next start)\n")
            return state["url"]
        time.sleep(0.1)
    raise CastError(f"the embedded server did not become healthy within {START_TIMEOUT:.0f}s; see {log_path}")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1].strip()[:300]})" if lines else ""


def _server_lock_holder(home: Path) -> int | None:
    """The pid of the server holding HOME/server.lock, if one does."""
    import fcntl

    try:
        with open(home / SERVER_LOCK_FILE) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = lock.read().strip()
                return int(text) if text.isdigit() else None
            return None  # nobody holds it: no server is running
    except OSError:
        return None


def _runs_client(home: Path, url: str):
    from .sdk import Client

    try:
        return Client(url, (home / "admin-token").read_text().strip(), timeout=10)
    except (OSError, CastError):
        return None


def _active_runs(client) -> dict[int, RunStatus]:
    """The runs a worker holds now, by id; empty when the server cannot say."""
    if client is None:
        return {}
    try:
        runs = client.list_runs(status=[s.value for s in LEASED_STATUSES], limit=500)["runs"]
    except CastError:
        return {}
    return {run["id"]: RunStatus(run["status"]) for run in runs}


def _wind_down(client, runs: dict[int, RunStatus], *, kill: bool, say: Callable[[str], None]) -> None:
    """Name the active runs and what will become of them; with `kill`, kill them now."""
    if not runs:
        return
    listed = ", ".join(f"{run_id} ({status.value})" for run_id, status in sorted(runs.items()))
    count = f"{len(runs)} active run{'s' if len(runs) != 1 else ''}"
    if not kill:
        say(f"Stopping {count}: {listed}; their outputs are saved (cast down --kill skips that)")
        return
    say(f"Killing {count}: {listed}; their outputs are not saved")
    for run_id in runs:
        try:
            runs[run_id] = RunStatus(client.kill_run(run_id)["status"])
        except CastError as exc:  # ended meanwhile: the worker's report says how
            say(f"  run {run_id}: {exc}")


def _follow(client, runs: dict[int, RunStatus], say: Callable[[str], None]) -> None:
    """Say each change of the runs' statuses, while the server still answers."""
    for run_id in list(runs):
        if is_final(runs[run_id]):
            continue
        try:
            run = client.get_run(run_id)
        except CastError:
            continue
        status = RunStatus(run["status"])
        if status is not runs[run_id]:
            runs[run_id] = status
            ending = f": {run['reason']}" if is_final(status) and run.get("reason") else ""
            say(f"  run {run_id} {status.value}{ending}")


def stop(home: Path, *, kill: bool = False, say: Callable[[str], None] = lambda line: None) -> str:
    """Stop the embedded server, its worker first, which stops its runs (or,
    with `kill`, after they were killed); `say` hears the progress. Returns what
    happened, for the user."""
    import signal

    if not home.is_dir():
        return f"No embedded server in {home}."
    with _Lock(home):
        state = read_state(home)
        if state and pid_alive(state["pid"]):
            pid, url = int(state["pid"]), state["url"]
        else:
            (home / STATE_FILE).unlink(missing_ok=True)
            pid = _server_lock_holder(home)
            if pid is None:
                return f"No embedded server is running in {home}."
            url = f"an unknown address (its {STATE_FILE} is gone)"
        client = _runs_client(home, state["url"]) if state else None
        runs = _active_runs(client)
        _wind_down(client, runs, kill=kill, say=say)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        next_look = time.monotonic()
        while pid_alive(pid) and not _is_zombie(pid):
            if time.monotonic() > deadline:
                raise CastError(f"the embedded server (pid {pid}) did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM")
            if runs and time.monotonic() >= next_look:
                _follow(client, runs, say)
                next_look = time.monotonic() + PROGRESS_INTERVAL
            time.sleep(0.05)
        unseen = sorted(run_id for run_id, status in runs.items() if not is_final(status))
        if unseen:  # ended as the server went away, before a last look
            say(f"  run{'s' if len(unseen) > 1 else ''} {', '.join(map(str, unseen))}: "
                "see how it ended with `cast ps` once cast is up again")
        state = read_state(home)
        if state and int(state["pid"]) == pid:
            (home / STATE_FILE).unlink(missing_ok=True)
        return f"Stopped the embedded server at {url} (pid {pid})."


def _is_zombie(pid: int) -> bool:
    """A child that exited but was not reaped still answers kill(pid, 0)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def run_foreground(home: Path, extra: tuple[str, ...] = ()) -> None:
    """`cast up`: become the embedded server (exec), so ^C and signals reach it."""
    url = running_url(home)
    if url:
        raise CastError(f"the embedded server is already running at {url}; `cast down` stops it")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = server_command(home, *extra)
    sys.stdout.flush()
    os.execv(command[0], command)
