"""The admin verbs (cli_admin). The embedded default: with no CAST_SERVER_URL,
the first command starts a control plane and worker under CAST_HOME (only one,
even when two commands start at once), later commands reuse it, and `cast
down` stops it. The refusals the CLI makes itself before handing over or
calling the server. (Users and tokens end to end: tests/reliability/test_access.py.)"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

from tests.client.helpers import assert_one_line_error
from tests.conftest import wait_until


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


def test_admin_refusals(cli, server):
    tokens = cli("token", "ls", "--json").json()
    for args in (["cache"], ["cache", "purge"]):
        refused = cli(*args)
        assert_one_line_error(refused, "cast cache needs ls or prune")
        assert refused.returncode == 2
    both = cli("token", "create", "--worker", "--user", "admin")
    assert_one_line_error(both, "--worker tokens belong to no user")
    assert both.returncode == 2
    assert_one_line_error(cli("token", "revoke", "999"), "token 999")
    assert cli("token", "ls", "--json").json() == tokens  # nothing was created
