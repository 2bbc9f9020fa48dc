"""`python -m cast.server up`: the embedded control plane with one worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import wait_until


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_up_serves_with_one_worker_refuses_a_second_up_and_cleans_up_on_sigterm(tmp_path, base_env):
    home = tmp_path / "home"
    log = open(tmp_path / "up.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cast.server", "up", "--home", str(home), "--port", "0"],
        env={**base_env, "CAST_EXECUTOR": "local"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        server_file = home / "server.json"
        info = wait_until(lambda: server_file.exists() and json.loads(server_file.read_text()),
                          timeout=120, what="server.json")
        assert info["pid"] == process.pid
        assert oct(server_file.stat().st_mode & 0o777) == "0o600"
        assert oct((home / "admin-token").stat().st_mode & 0o777) == "0o600"
        api = httpx.Client(base_url=f"{info['url']}/api/v1", timeout=30,
                           headers={"Authorization": f"Bearer {(home / 'admin-token').read_text().strip()}"})
        # How fast kept-alive answers come (TCP_NODELAY, see __main__) is
        # measured by bench/bench_core.py: each warm `cast run` makes several calls.
        assert api.get("/health").json()["status"] == "ok"
        run_id = api.post("/runs", json={"command": "echo hello > greeting.txt"}).json()["id"]
        run = wait_until(lambda: (r := api.get(f"/runs/{run_id}").json())["status"] == "complete" and r,
                         timeout=120, what=f"run to complete (log: {tmp_path / 'up.log'})")
        assert run["worker"] == "embedded" and run["executor"] == "local"
        assert api.get(f"/runs/{run_id}/outputs/greeting.txt").content == b"hello\n"
        worker_dir = str(home / "worker")
        assert len(_processes_mentioning(worker_dir)) == 1

        # A second `up` on the same home, even with server.json gone, must not
        # start a second server and worker on the same database and folders.
        server_file.unlink()
        second = subprocess.run([sys.executable, "-m", "cast.server", "up", "--home", str(home), "--port", "0"],
                                env={**base_env, "CAST_EXECUTOR": "local"}, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode != 0
        assert second.stderr.strip() == (f"cast: another embedded server (pid {process.pid}) is serving {home}; "
                                         "stop it (`cast down`, or kill that pid) before starting one here")
        assert not server_file.exists() and len(_processes_mentioning(worker_dir)) == 1
        assert api.get("/health").json()["status"] == "ok"

        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
        assert not server_file.exists()
        wait_until(lambda: not _processes_mentioning(worker_dir), timeout=120, what="the worker to stop")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
