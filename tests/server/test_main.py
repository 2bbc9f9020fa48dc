"""`python -m cast.server`: the embedded control plane with one worker (`up`),
its home lock and server.json, and a bad setting refused in one line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cast.server import __main__ as server_main
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
        up_log = (tmp_path / "up.log").read_text()
        assert "requests are parsed with httptools" in up_log and "requests are served on uvloop" in up_log
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


def test_requests_are_parsed_with_httptools_else_with_h11_as_the_log_says(monkeypatch, caplog):
    caplog.set_level("INFO", logger="cast.server")
    from uvicorn.protocols.http import h11_impl, httptools_impl

    for protocol in (h11_impl, httptools_impl):
        monkeypatch.setattr(protocol, "HIGH_WATER_LIMIT", protocol.HIGH_WATER_LIMIT)  # put back afterwards
    assert server_main._http_parser() == "httptools"
    assert h11_impl.HIGH_WATER_LIMIT == httptools_impl.HIGH_WATER_LIMIT == server_main.BODY_HIGH_WATER
    monkeypatch.setitem(sys.modules, "httptools", None)  # as if it were not installed
    assert server_main._http_parser() == "h11"
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "requests are parsed with httptools", "httptools is not installed"]


def test_requests_are_served_on_uvloop_else_on_asyncio_as_the_log_says(monkeypatch, caplog):
    caplog.set_level("INFO", logger="cast.server")
    assert server_main._event_loop() == "uvloop"
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert server_main._event_loop() == "asyncio"
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "requests are served on uvloop", "uvloop is not installed"]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_embedded_server_runs_on_the_loop_it_picked(loop):
    async def which() -> None:
        ran.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    ran: list[str] = []
    server_main._run(which(), loop)
    assert ran == [loop]


def test_a_connection_idle_longer_than_its_clients_keep_one_is_still_open(server):
    """httpx (the worker's client) and nginx drop an idle kept-alive connection
    after 5 and 4 s: the server keeps it longer, so it never closes one just as
    a client sends on it."""
    request = b"GET /api/v1/health HTTP/1.1\r\nHost: cast\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        answers = connection.makefile("rb")
        for pause in (0, 6):
            time.sleep(pause)
            connection.sendall(request)
            assert answers.readline().startswith(b"HTTP/1.1 200"), f"no answer after {pause} s idle"
            headers = dict(line.rstrip().lower().split(b": ", 1) for line in iter(answers.readline, b"\r\n"))
            assert b'"ok"' in answers.read(int(headers[b"content-length"]))


def test_a_bad_setting_is_one_line_and_exit_code_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAST_LEASE_SECONDS", "0")
    with pytest.raises(SystemExit) as stopped:
        server_main.main([])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "cast.server: setting lease_seconds: Input should be greater than 0\n"


def test_the_home_lock_is_held_by_one_holder_at_a_time(tmp_path):
    home = tmp_path / "home"
    holder = server_main._hold_home(home)
    try:
        assert home.stat().st_mode & 0o777 == 0o700
        assert (home / "server.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(SystemExit, match=f"another embedded server \\(pid {os.getpid()}\\) is serving {home}"):
            server_main._hold_home(home)
    finally:
        holder.close()
    server_main._hold_home(home).close()  # free again once its holder closed it


def test_server_json_is_replaced_private(tmp_path):
    path = tmp_path / "server.json"
    path.write_text("old")
    path.chmod(0o644)
    server_main._write_private_json(path, {"url": "http://127.0.0.1:1", "pid": 1})
    assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:1", "pid": 1}
    assert path.stat().st_mode & 0o777 == 0o600 and [p.name for p in tmp_path.iterdir()] == ["server.json"]


def test_help_names_the_default_port():
    shown = subprocess.run([sys.executable, "-m", "cast.server", "--help"], capture_output=True, text=True, check=True)
    assert "(default $CAST_PORT, else 8470)" in " ".join(shown.stdout.split())
    up = subprocess.run([sys.executable, "-m", "cast.server", "up", "--help"], capture_output=True, text=True, check=True)
    assert "the one of the last start in HOME, else $CAST_PORT, else 8470" in " ".join(up.stdout.split())
