"""`cast status`, `whoami`, `login`/`logout` and `web`, and `cast run`'s
refusal of what no worker could run: the real CLI against a real server and
real workers."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

from tests.conftest import LEASE_SECONDS, wait_until
from tests.factories import get_run, submit, wait_status


def _plain(base_env, tmp_path):
    """A runner with no CAST_SERVER_URL or token in its environment."""

    def run(*args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], cwd=tmp_path, env={**base_env, **(env or {})}, input=input,
                              capture_output=True, text=True, timeout=120)

    return run


def test_status_lists_workers_with_capacities_their_runs_and_the_queue(server, start_worker, cli):
    start_worker(server, name="w1", extra_args=["--max-runs", "1"])
    running = submit(server, "sleep 60")
    wait_status(server, running, "running")
    queued = cli("run", "-d", "--queue-anyway", "-t", "gpu", "true")
    assert queued.returncode == 0, queued.stderr
    cli("run", "-d", "true")

    shown = cli("status")
    assert shown.returncode == 0, shown.stderr
    assert f"Server:   {server.url} (cast " in shown.stdout
    database = server.env.get("CAST_DATABASE_URL", f"sqlite:///{server.data_dir / 'cast.db'}")  # no password: shown as is
    assert f"Database: {database}" in shown.stdout
    assert f"Storage:  {server.data_dir}" in shown.stdout
    [row] = [line for line in shown.stdout.splitlines() if line.startswith("w1 ")]
    assert re.match(rf"w1\s+local\s+(yes|NO)\s+{os.cpu_count()}\s+[\d.]+ GB\s+0\s+1/1\s+\S+ \S+\s+#{running}$", row), row
    assert "Queue:    2 runs waiting (1 cpu, 1 gpu)" in shown.stdout

    as_json = cli("status", "--json").json()
    [worker] = as_json["workers"]
    assert (worker["name"], worker["executor"], worker["runs"], worker["gpus"]) == ("w1", "local", [running], 0)
    assert worker["cpus"] == os.cpu_count() and worker["memory"] > 0
    assert as_json["queue"] == {"total": 2, "by_machine_type": {"cpu": 1, "gpu": 1}}
    cli("kill", str(running))


def test_whoami_says_who_where_and_where_the_token_came_from(server, cli):
    presence = max(60, 4 * LEASE_SECONDS)
    assert f"Workers: none connected (none asked for work in the last {presence} s); queued runs wait for one" in (
        cli("status").stdout)  # this server has no worker
    shown = cli("whoami")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"admin (admin) on {server.url}\ntoken from CAST_TOKEN\n"
    assert cli("whoami", "--json").json() == {"name": "admin", "admin": True, "server": server.url,
                                              "token_from": "CAST_TOKEN"}


def test_login_saves_a_private_config_later_commands_use_it_and_logout_removes_it(server, base_env, tmp_path):
    cast = _plain(base_env, tmp_path)
    config = Path(base_env["CAST_HOME"]) / "config.json"

    refused = cast("login", server.url, "--token", "cast_u_wrong")
    assert refused.returncode == 1
    assert refused.stderr == f"cast: error: {server.url} refused this token (unknown token); nothing saved\n"
    assert not config.exists()

    logged_in = cast("login", server.url + "/", input=server.admin_token + "\n")  # not a tty: read from stdin
    assert logged_in.returncode == 0, logged_in.stderr
    assert logged_in.stdout == f"Logged in to {server.url} as admin (admin); saved in {config}\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert json.loads(config.read_text()) == {"url": server.url, "token": server.admin_token}

    assert cast("whoami").stdout == f"admin (admin) on {server.url}\ntoken from {config}\n"
    assert cast("ps").returncode == 0
    assert not (config.parent / "server.json").exists()  # no embedded server was started
    # The environment still wins over the saved login.
    assert cast("whoami", env={"CAST_TOKEN": "cast_u_other"}).stderr.startswith("cast: error: unknown token")

    assert cast("logout").stdout == f"Logged out of {server.url}; removed {config}\n"
    assert not config.exists()
    assert cast("logout").stdout == f"Not logged in (no {config}).\n"


def test_web_prints_a_one_time_sign_in_link(server, cli):
    shown = cli("web", "--no-open")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Viewer:  {server.url}/"
    assert re.fullmatch(rf"Sign in: {re.escape(server.url)}/#sign-in=cast_s_[\w-]+", lines[1])
    assert lines[2].startswith("(one use, until ")


def test_runs_no_worker_could_run_are_refused_in_one_line_unless_queued_anyway(server, start_worker, cli):
    start_worker(server, name="w1", extra_args=["--gpus", "0"])
    wait_until(lambda: cli("status", "--json").json()["workers"], what="w1 to register")
    cpus = os.cpu_count()

    gpus = cli("run", "-t", "gpu:2", "true")
    assert gpus.returncode == 1
    assert re.fullmatch(rf"cast: error: no worker can run this: it asks for 2 GPUs; workers: w1 \(local, {cpus} CPUs?, "
                        r"[\d.]+ GB, 1 GPU(, unsandboxed)?\) \(--queue-anyway waits for a worker that can\)\n",
                        gpus.stderr), gpus.stderr
    apt = cli("run", "--apt", "curl", "true")
    assert apt.returncode == 1
    assert "it asks for apt packages, which the local executor cannot install (docker can); workers: w1" in apt.stderr
    assert cli("ps", "--json").json() == []  # nothing was queued

    queued = cli("run", "-d", "--json", "--queue-anyway", "-t", "gpu:2", "true")
    assert queued.returncode == 0, queued.stderr
    run_id = queued.json()["id"]
    time.sleep(1)  # w1 asks for work meanwhile: it is not leased
    assert get_run(server, run_id)["status"] == "machine_requested"
    logs = cli("logs", str(run_id))
    assert "waiting: no connected worker can run this (queued anyway)" in logs.stdout


def test_a_waiting_run_says_what_it_waits_for_in_its_followed_log(server, start_worker, cli, base_env, tmp_path):
    env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token}
    follower = subprocess.Popen(["cast", "run", "echo hello"], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("waiting:" in line for line in lines):
            lines.append(follower.stdout.readline())
        assert any("waiting: no worker registered yet; it runs once one does" in line for line in lines), lines
        start_worker(server, name="w1", extra_args=["--max-runs", "1"])
        follower.wait(120)
        rest = follower.stdout.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert "hello" in rest and follower.returncode == 0, rest

    busy = submit(server, "sleep 60")
    wait_status(server, busy, "running")
    waiting = cli("run", "-d", "--json", "true").json()["id"]
    assert "waiting: 1 worker can run it (w1), busy" in cli("logs", str(waiting)).stdout
    cli("kill", str(busy), str(waiting))
