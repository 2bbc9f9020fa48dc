"""cast.client.embedded: the embedded control plane under CAST_HOME. End to
end, the first command starts one server and worker (only one, even when two
commands start at once), later commands reuse it and `cast down` stops it,
even when its server.json was lost. In-process: the state file read
defensively, a live and healthy server found (HOME's own server process
trusted without a round trip), and `stop` on real processes
standing in for the server."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cast.client import embedded
from cast.client.sdk import CastError
from tests.conftest import free_port, wait_until


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry)):
                found.append(int(entry))
    return found


def test_embedded_server_starts_once_is_reused_and_stops(base_env, tmp_path):
    home = Path(base_env["CAST_HOME"])
    env = dict(base_env)

    def cast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    try:
        firsts = [subprocess.Popen(["cast", "run", f"echo hi{i}"], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        results = [process.communicate(timeout=180) for process in firsts]
        for index, (process, (stdout, stderr)) in enumerate(zip(firsts, results)):
            assert process.returncode == 0, (stdout, stderr)
            assert f"hi{index}" in stdout.splitlines()
            assert "Traceback" not in stderr
        assert sum("starting the embedded server" in stderr for _, stderr in results) == 1

        state = json.loads((home / "server.json").read_text())
        assert stat.S_IMODE((home / "admin-token").stat().st_mode) == 0o600

        listing = cast("ps", "--json")
        assert listing.returncode == 0 and "starting" not in listing.stderr
        assert sorted(run["id"] for run in json.loads(listing.stdout)) == [1, 2]
        assert json.loads((home / "server.json").read_text())["pid"] == state["pid"]

        down = cast("down")
        assert down.returncode == 0, down
        assert str(state["pid"]) in down.stdout
        wait_until(lambda: not _alive(state["pid"]), timeout=30, what="the embedded server to exit")
        wait_until(lambda: not _processes_mentioning(str(home)), timeout=30,
                   what="no process (server or worker) left for this CAST_HOME")
        again = cast("down")
        assert again.returncode == 0 and "No embedded server is running" in again.stdout
    finally:
        for pid in _processes_mentioning(str(home)):
            os.kill(pid, signal.SIGKILL)


def test_a_lost_server_json_neither_starts_a_second_server_nor_stops_cast_down(base_env, tmp_path):
    home = Path(base_env["CAST_HOME"])

    def cast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], cwd=tmp_path, env=base_env, capture_output=True, text=True, timeout=180)

    try:
        assert cast("ps").returncode == 0
        pid = json.loads((home / "server.json").read_text())["pid"]
        (home / "server.json").unlink()

        refused = cast("ps")
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert f"another embedded server (pid {pid}) is serving {home}" in refused.stderr
        assert _alive(pid) and len(_processes_mentioning(str(home / "worker"))) == 1

        down = cast("down")
        assert down.returncode == 0 and f"(pid {pid})" in down.stdout, down
        wait_until(lambda: not _processes_mentioning(str(home)), timeout=30,
                   what="no process (server or worker) left for this CAST_HOME")
        assert cast("ps").returncode == 0  # and a new one starts cleanly
    finally:
        for pid in _processes_mentioning(str(home)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"url": "http://127.0.0.1:1"}', '{"pid": 1}'])
def test_a_broken_state_file_reads_as_no_server(tmp_path, text):
    (tmp_path / embedded.STATE_FILE).write_text(text)
    assert embedded.read_state(tmp_path) is None
    assert embedded.running_url(tmp_path) is None


def test_a_running_server_is_found_only_when_its_process_lives_and_answers(server, tmp_path):
    assert embedded.read_state(tmp_path) is None  # no file
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert embedded.pid_alive(os.getpid()) and not embedded.pid_alive(gone.pid)

    for url, pid, found in [(server.url, os.getpid(), server.url), (server.url, gone.pid, None),
                            (f"http://127.0.0.1:{free_port()}", os.getpid(), None)]:
        (tmp_path / embedded.STATE_FILE).write_text(json.dumps({"url": url, "pid": pid}))
        assert embedded.running_url(tmp_path) == found

    (tmp_path / embedded.STATE_FILE).write_text(json.dumps({"url": server.url, "pid": os.getpid()}))
    assert embedded.ensure_running(tmp_path) == server.url
    assert not (tmp_path / embedded.LOG_FILE).exists()  # reused, nothing started
    with pytest.raises(CastError, match=f"already running at {server.url}"):
        embedded.run_foreground(tmp_path)


def test_this_homes_server_process_is_trusted_without_a_round_trip(tmp_path):
    """A live process whose command line is `cast.server up --home HOME` is
    HOME's server: its URL is not asked for its health (here nothing listens
    there). Another HOME's server, or a reused pid, is."""
    closed = f"http://127.0.0.1:{free_port()}"
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                 "-m", "cast.server", "up", "--home", str(tmp_path / "." / "home")])
    try:
        (tmp_path / "home").mkdir()
        for home, found in [(tmp_path / "home", closed), (tmp_path, None)]:
            (home / embedded.STATE_FILE).write_text(json.dumps({"url": closed, "pid": stand_in.pid}))
            wait_until(lambda: b"--home" in Path(f"/proc/{stand_in.pid}/cmdline").read_bytes(), timeout=30,
                       what="the stand-in's command line")
            assert embedded.serves_home(stand_in.pid, tmp_path / "home")
            assert embedded.running_url(home) == found
    finally:
        stand_in.kill()
        stand_in.wait()
    assert not embedded.serves_home(stand_in.pid, tmp_path / "home")
    assert embedded.running_url(tmp_path / "home") is None


def test_stop_without_a_server(tmp_path):
    assert embedded.stop(tmp_path / "never") == f"No embedded server in {tmp_path / 'never'}."
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / embedded.STATE_FILE).write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": gone.pid}))
    assert embedded.stop(tmp_path) == f"No embedded server is running in {tmp_path}."
    assert not (tmp_path / embedded.STATE_FILE).exists()  # the stale file is cleared


def test_stop_ends_the_process_server_json_names(tmp_path):
    process = subprocess.Popen(["sleep", "600"])
    try:
        (tmp_path / embedded.STATE_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": process.pid}))
        said = embedded.stop(tmp_path)
        assert said == f"Stopped the embedded server at http://127.0.0.1:9 (pid {process.pid})."
        assert process.wait(timeout=60) == -signal.SIGTERM
        assert not (tmp_path / embedded.STATE_FILE).exists()
    finally:
        process.kill()
        process.wait()


HOLD_SERVER_LOCK = """
import fcntl, os, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0)
lock.write(str(os.getpid()))
lock.flush()
time.sleep(600)
"""


def test_stop_finds_a_server_whose_state_file_was_lost_by_its_lock(tmp_path):
    lock_path = tmp_path / embedded.SERVER_LOCK_FILE
    lock_path.write_text("")
    assert embedded._server_lock_holder(tmp_path) is None  # a lock nobody holds
    process = subprocess.Popen([sys.executable, "-c", HOLD_SERVER_LOCK, str(lock_path)])
    try:
        wait_until(lambda: embedded._server_lock_holder(tmp_path) == process.pid, timeout=120,
                   what="the stand-in server to hold server.lock")
        said = embedded.stop(tmp_path)
        assert said == (f"Stopped the embedded server at an unknown address (its {embedded.STATE_FILE} is gone) "
                        f"(pid {process.pid}).")
        assert process.wait(timeout=60) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()


def test_the_embedded_port_stays_the_same_across_restarts_and_a_taken_one_is_replaced_aloud(base_env, tmp_path):
    import socket

    home = Path(base_env["CAST_HOME"])

    def cast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], cwd=tmp_path, env=base_env, capture_output=True, text=True, timeout=180)

    def port() -> int:
        return int(json.loads((home / "server.json").read_text())["url"].rsplit(":", 1)[1])

    with socket.socket() as probe:  # the default, 8470, unless a neighbour (another test's server) holds it
        default_free = probe.connect_ex(("127.0.0.1", 8470)) != 0
    try:
        assert cast("ps").returncode == 0
        first = port()
        assert first == 8470 or not default_free
        assert cast("down").returncode == 0
        assert cast("ps").returncode == 0
        assert port() == first
        assert cast("down").returncode == 0

        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", first))
            squatter.listen()
            taken = cast("ps")
            assert taken.returncode == 0, taken.stderr
            moved = port()
            assert moved != first
            assert f"cast: port {first} is in use; the embedded server is at http://127.0.0.1:{moved}" in taken.stderr
        assert cast("down").returncode == 0
        assert cast("ps").returncode == 0
        assert port() == moved  # the port it moved to is kept
        assert cast("down").returncode == 0
    finally:
        for pid in _processes_mentioning(str(home)):
            os.kill(pid, signal.SIGKILL)
