"""`cast down` with runs going loses no work: it names them, the embedded
worker stops them (SIGTERM to the command, outputs saved and pushed, `stopped`
with the reason "server shut down"), and the server stops after them;
`--kill` kills them instead, outputs dropped, and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_until

# Writes a step every 0.2 s, forever: only a stop ends it.
STEPS = "i=0; while true; do i=$((i+1)); echo $i >> steps.txt; echo step $i; sleep 0.2; done"


@pytest.fixture
def cast(base_env, tmp_path):
    env = {**base_env, "CAST_EXECUTOR": "local"}
    home = Path(env["CAST_HOME"])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["cast", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    yield run
    state = home / "server.json"
    if state.exists():
        try:
            os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def _start_steps(cast) -> int:
    started = cast("run", "-d", "--json", STEPS)
    assert started.returncode == 0, started
    run_id = json.loads(started.stdout)["id"]
    wait_until(lambda: "step 5" in cast("logs", str(run_id)).stdout.splitlines(), timeout=60,
               what="the run's fifth step")
    return run_id


def test_cast_down_stops_active_runs_with_their_outputs_saved(cast, tmp_path):
    run_id = _start_steps(cast)

    down = cast("down")

    assert down.returncode == 0, down
    lines = down.stdout.splitlines()
    assert lines[0] == (f"Stopping 1 active run: {run_id} (running); their outputs are saved "
                        "(cast down --kill skips that)")
    assert lines[-1].startswith("Stopped the embedded server at ")
    # The last status may land as the server goes away; if so, the line says where to look.
    assert (f"  run {run_id} stopped: server shut down" in lines
            or f"  run {run_id}: see how it ended with `cast ps` once cast is up again" in lines), lines

    info = json.loads(cast("info", "--json", str(run_id)).stdout)  # starts cast again
    assert (info["status"], info["reason"]) == ("stopped", "server shut down")
    assert [t["status"] for t in info["transitions"]][-4:] == ["stopping", "saving", "pushing", "stopped"]
    assert "steps.txt" in cast("ls", f"runs/{run_id}").stdout
    copied = cast("cp", f"runs/{run_id}/steps.txt", "copied.txt")
    assert copied.returncode == 0, copied
    steps = (tmp_path / "copied.txt").read_text().split()
    assert len(steps) >= 5 and steps == [str(n) for n in range(1, len(steps) + 1)]
    assert cast("down").returncode == 0


def test_cast_down_kill_kills_active_runs_and_says_their_outputs_are_not_saved(cast):
    run_id = _start_steps(cast)

    down = cast("down", "--kill")

    assert down.returncode == 0, down
    lines = down.stdout.splitlines()
    assert lines[0] == f"Killing 1 active run: {run_id} (running); their outputs are not saved"
    assert lines[-1].startswith("Stopped the embedded server at ")
    info = json.loads(cast("info", "--json", str(run_id)).stdout)
    assert info["status"] == "killed" and info["reason"] == "killed by admin", info
    assert json.loads(cast("ls", "--json", f"runs/{run_id}").stdout) == []
    assert cast("down").returncode == 0


def test_cast_down_without_runs_says_only_that_it_stopped(cast):
    assert cast("ps").returncode == 0
    down = cast("down")
    assert down.returncode == 0 and down.stdout.splitlines()[0].startswith("Stopped the embedded server at "), down
