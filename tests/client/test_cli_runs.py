"""The verbs about runs (cli_runs) through the real `cast` CLI: the transcript
of issue 2, the read commands (ps, info, logs, with --json), labels, failures,
timeouts, stop and kill, ^C, and following a log to its end, also across a
restart of the server."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
from types import SimpleNamespace

import pytest

from cast.protocol.units import format_duration
from cast.worker.resources import cpu_count
from tests.client.helpers import assert_one_line_error
from tests.conftest import wait_until
from tests.factories import get_run, log_texts, page_entries, run_id_of, wait_for_line, wait_status
from tests.realservers.relay import Relay, Request

FOLLOW_LINES = 60
# Long enough for the worker to keep its lease while the server is down.
SLOW_LEASE = {"CAST_LEASE_SECONDS": "20"}


def test_transcript_run_ls_mount_ps(cli, worker):
    first = cli("run", "echo hello > greeting.txt && cat greeting.txt")
    assert first.returncode == 0, first
    lines = first.stdout.splitlines()
    # Piped, so plain lines: no emoji, same words as on a terminal.
    assert lines[:2] == ["Casting run #1…", "Stop viewing logs with ^C"]
    expected_in_order = ["Machine_Requested… done", "Building… done", "Mounting… done", "Run is running",
                         "hello", "Saving… done", "Pushing… done", "Total run time: ", "Run 1 complete"]
    position = 0
    for expected in expected_in_order:
        position = next((i for i in range(position, len(lines)) if lines[i].startswith(expected)), None)
        assert position is not None, f"{expected!r} missing or out of order in {lines}"
    assert lines[-1] == "Run 1 complete"
    assert lines.count("hello") == 1
    assert "✨" not in first.stdout and "🎉" not in first.stdout

    listing = cli("ls", "runs/1")
    assert listing.returncode == 0, listing
    assert listing.stdout == "greeting.txt    6 B\n"

    second = cli("run", "-m", "runs/1/greeting.txt", "cat greeting.txt")
    assert second.returncode == 0, second
    assert "hello" in second.stdout.splitlines()
    assert second.stdout.splitlines()[-1] == "Run 2 complete"

    table = cli("ps")
    assert table.returncode == 0, table
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["ID", "STATUS", "COMMAND", "DURATION", "LABELS"]
    assert rows[1].split()[:3] == ["2", "complete", "cat"]
    assert rows[2].split()[:3] == ["1", "complete", "echo"]
    assert "echo hello > greeting.txt && cat greeting.txt" in rows[2]
    assert rows[1].split()[-1].endswith("s")  # a duration such as 0.41s

    as_json = cli("ps", "--json").json()
    assert [r["id"] for r in as_json] == [2, 1]
    assert cli("ls", "runs/1", "--json").json() == [{"name": "greeting.txt", "type": "file", "size": 6}]
    assert get_run(worker.server, 1)["mounted_by"] == [2]


def test_info_logs_labels_and_secret_env(cli, worker):
    result = cli("run", "-e", "SEED=7", "-e", "API_TOKEN=hunter2", "--label", "exp1",
                 'for i in 1 2 3 4 5; do echo "line $i $SEED"; done; echo oops >&2')
    assert result.returncode == 0, result

    info = cli("info", "1")
    assert info.returncode == 0, info
    assert "hunter2" not in info.stdout
    assert "API_TOKEN=****" in info.stdout and "SEED=7" in info.stdout
    assert "exp1" in info.stdout and "Exit code:" in info.stdout
    stage_rows = {row.split()[0]: row.split()[1:] for row in info.stdout.split("Stages:\n")[1].splitlines()}
    for stage in ("machine_requested", "building", "mounting", "running", "saving", "pushing"):
        assert stage_rows[stage] and stage_rows[stage][0].endswith("s"), (stage, info.stdout)
    assert stage_rows["complete"] == []
    info_json = cli("info", "1", "--json").json()
    assert info_json["spec"]["env"] == {"SEED": "7", "API_TOKEN": "****"}
    assert info_json["exit_code"] == 0 and info_json["status"] == "complete"

    everything = cli("logs", "1")
    assert everything.returncode == 0
    job_lines = [line for line in everything.stdout.splitlines() if line.startswith("line ")]
    assert job_lines == [f"line {i} 7" for i in range(1, 6)]
    assert "oops" in everything.stdout.splitlines()
    assert cli("logs", "1", "--tail", "2").stdout.splitlines() == log_texts(worker.server, 1)[-2:]
    logs_json = cli("logs", "1", "--json").json()
    assert logs_json["finished"] is True
    assert [e["text"] for e in page_entries(logs_json)] == log_texts(worker.server, 1)
    assert {chunk["stream"] for chunk in logs_json["chunks"]} == {"cast", "stdout", "stderr"}

    assert cli("label", "1", "best").returncode == 0
    assert [r["id"] for r in cli("ps", "--label", "best", "--json").json()] == [1]
    assert cli("label", "1", "best", "--remove").returncode == 0
    assert cli("ps", "--label", "best", "--json").json() == []
    assert [r["id"] for r in cli("ps", "--status", "complete", "--json").json()] == [1]
    assert cli("ps", "--status", "failed").stdout == "no runs match\n"


def test_info_shows_the_sandbox_and_limits_the_run_ran_under(cli, server, start_worker):
    """The Limits row and --json's `limits` are the worker's settings, as the
    command itself reads them back: memory per process and processes from
    CAST_WORKER_MEMORY and CAST_WORKER_PIDS_LIMIT, CPU time from the timeout
    over the worker's CPUs."""
    start_worker(server, env={"CAST_WORKER_MEMORY": "300m", "CAST_WORKER_PIDS_LIMIT": "40"})
    result = cli("run", "--timeout", "600", "ulimit -d; ulimit -u; ulimit -t")
    assert result.returncode == 0, result
    cpu_seconds = math.ceil(600 * cpu_count())
    assert log_texts(server, 1, "stdout") == [str(300 * 1024), "40", str(cpu_seconds)]
    limits = (f"sandboxed (bubblewrap), memory 300 MB per process, 40 processes, "
              f"{format_duration(cpu_seconds)} CPU time per process")
    assert re.search(r"^Limits:\s+(.*)$", cli("info", "1").stdout, re.M)[1] == limits
    assert cli("info", "1", "--json").json()["limits"] == limits


def test_failed_run_exits_with_its_code_and_keeps_outputs(cli, worker):
    result = cli("run", "echo partial > part.txt; echo bad; exit 3")
    assert result.returncode == 3, result
    assert result.stdout.splitlines()[-1] == "Run 1 failed (exit code 3)"
    run = get_run(worker.server, 1)
    assert run["status"] == "failed" and run["exit_code"] == 3
    assert cli("ls", "runs/1").stdout == "part.txt    8 B\n"


def test_timeout_stops_the_run(cli, worker):
    result = cli("run", "--timeout", "1", "echo begin; sleep 30; echo never")
    assert result.returncode == 1, result
    assert "begin" in result.stdout and "never" not in result.stdout
    assert result.stdout.splitlines()[-1] == "Run 1 stopped: timed out after 1s"
    run = get_run(worker.server, 1)
    assert run["status"] == "stopped" and run["reason"] == "timed out after 1s", run
    assert run["spec"]["timeout"] == 1


def test_background_stop_keeps_outputs_and_kill_drops_them(cli, worker):
    loop = "echo kept > out.txt; echo ready; sleep 60"
    submitted = cli("run", "-d", "--json", loop)
    assert submitted.returncode == 0, submitted
    stopped_id = submitted.json()["id"]
    killed_id = run_id_of(cli("run", "-d", loop))
    for run_id in (stopped_id, killed_id):
        wait_for_line(worker.server, run_id, "ready", timeout=60)

    assert cli("stop", str(stopped_id)).stdout == f"Run {stopped_id} is being stopped\n"
    assert cli("kill", str(killed_id)).stdout == f"Run {killed_id} is being killed\n"
    assert wait_status(worker.server, stopped_id, "stopped")["status"] == "stopped"
    assert wait_status(worker.server, killed_id, "killed")["status"] == "killed"
    assert cli("ls", f"runs/{stopped_id}").stdout == "out.txt    5 B\n"
    assert "out.txt" not in cli("ls", f"runs/{killed_id}").stdout

    # Stopping a finished run is refused with the server's reason, one line.
    again = cli("stop", str(stopped_id))
    assert again.returncode != 0 and again.stderr.startswith(f"cast: error: run {stopped_id}: ")
    assert again.stderr.rstrip().endswith(f"run {stopped_id} is stopped; it cannot be stopped")
    assert len(again.stderr.strip().splitlines()) == 1

    follow = cli("logs", "-f", str(killed_id))
    assert follow.returncode == 1
    assert follow.stdout.splitlines()[-1].startswith(f"Run {killed_id} killed")


def test_ctrl_c_detaches_and_the_run_keeps_going(cli, worker, base_env, tmp_path):
    env = {**base_env, "CAST_SERVER_URL": worker.server.url, "CAST_TOKEN": worker.server.admin_token}
    # The run would go on for an hour: only the kill below ends it.
    # With SIGINT's default action, as a terminal's cast has it: a test runner's
    # worker process may ignore it (pytest-xdist's do), and an ignored signal
    # stays ignored across exec, so Python would never raise KeyboardInterrupt.
    process = subprocess.Popen(["cast", "run", "echo started; sleep 3600"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_line(worker.server, 1, "started", timeout=120)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, (stdout, stderr)
    assert "cast logs -f 1" in stderr and "cast stop 1" in stderr and "cast kill 1" in stderr
    assert "Traceback" not in stderr
    assert get_run(worker.server, 1)["status"] == "running"
    assert cli("kill", "1").returncode == 0
    wait_status(worker.server, 1, "killed", timeout=120)


def test_json_of_background_run_is_the_run(cli, worker):
    result = cli("run", "-d", "--json", "--label", "x", "true")
    run = json.loads(result.stdout)
    assert run["id"] == 1 and run["labels"] == ["x"] and run["spec"]["command"] == "true"
    wait_status(worker.server, 1, "complete")


def test_on_a_terminal_lines_carry_the_marks(worker, base_env, tmp_path):
    import os
    import pty

    env = {**base_env, "CAST_SERVER_URL": worker.server.url, "CAST_TOKEN": worker.server.admin_token}
    controller, terminal = pty.openpty()
    process = subprocess.Popen(["cast", "run", "echo hello"], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # the terminal closes when cast exits
            break
        if not data:
            break
        output += data
    os.close(controller)
    assert process.wait(timeout=60) == 0
    lines = output.decode().replace("\r\n", "\n").splitlines()
    assert lines[:2] == ["💫 Casting run #1…", "✨ Stop viewing logs with ^C"]
    assert "✨ Run is running" in lines and "hello" in lines
    assert "✨ Building… done" in [line.split(" (")[0] for line in lines]
    assert lines[-2].startswith("🎉 Total run time: ") and lines[-1] == "🎉 Run 1 complete"


def test_logs_follow_resumes_after_the_server_restarts(start_server, start_worker, cast_for, base_env, tmp_path):
    server = start_server(env=SLOW_LEASE)
    start_worker(server, env=SLOW_LEASE)
    cast = cast_for(server)
    run_id = run_id_of(cast("run", "-d", f"for i in $(seq 1 {FOLLOW_LINES}); do echo line$i; sleep 0.1; done"))

    followed = tmp_path / "followed.txt"
    env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token}
    with open(followed, "w") as out, open(tmp_path / "follower-stderr.txt", "w") as err:
        follower = subprocess.Popen(["cast", "logs", "-f", str(run_id)], cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        wait_until(lambda: "line5\n" in followed.read_text(), timeout=60, what="the follower to print line5")
        server.stop(signal.SIGKILL)  # cuts the follow stream mid-run
        restarted = start_server(data_dir=server.data_dir, port=server.port, env=SLOW_LEASE)
        follower.wait(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    stderr = (tmp_path / "follower-stderr.txt").read_text()
    assert follower.returncode == 0, stderr
    assert "reconnecting" in stderr and "Traceback" not in stderr

    assert wait_status(restarted, run_id, "complete")["status"] == "complete"
    printed = followed.read_text().splitlines()
    job_lines = [line for line in printed if line.startswith("line")]
    assert job_lines == [f"line{i}" for i in range(1, FOLLOW_LINES + 1)]
    # Everything the log holds was printed exactly once, in order, then the outcome.
    assert printed[: -2] == log_texts(restarted, run_id)
    assert printed[-1] == f"Run {run_id} complete"


def _without_outcome(request: Request, status: int, body: bytes) -> bytes:
    """The follow stream's pages as a server from before the outcome went in them sent them."""
    if "/logs/follow" not in request.path or status != 200:
        return body
    pages = [json.loads(line) for line in body.splitlines() if line.strip()]
    return b"".join(json.dumps({k: v for k, v in page.items() if k != "outcome"}).encode() + b"\n" for page in pages)


@pytest.mark.parametrize("old_server", [False, True], ids=["outcome-in-stream", "server-without-it"])
def test_run_prints_the_outcome_the_stream_carries_and_asks_for_the_run_only_without_it(worker, cast_for,
                                                                                       old_server):
    relay = Relay(worker.server.url, **({"rewrite": _without_outcome} if old_server else {}))
    try:
        result = cast_for(SimpleNamespace(url=relay.url, admin_token=worker.server.admin_token))(
            "run", "echo hi; exit 3")
    finally:
        relay.close()
    run_id = run_id_of(result)
    assert result.returncode == 3, result
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("Total run time: ") and lines[-1] == f"Run {run_id} failed (exit code 3)"
    asked = [request.path.split("?")[0] for request in relay.requests
             if request.method == "GET" and request.path.startswith(f"/api/v1/runs/{run_id}")]
    assert asked == [f"/api/v1/runs/{run_id}/logs/follow", *([f"/api/v1/runs/{run_id}"] if old_server else [])]


def test_run_follows_to_the_end_and_tail_follow_starts_near_the_end(cli, worker):
    assert cli("run", "for i in 1 2 3 4 5 6; do echo n$i; done").returncode == 0
    tail = cli("logs", "-f", "--tail", "3", "1")
    assert tail.returncode == 0
    assert tail.stdout.splitlines()[:3] == log_texts(worker.server, 1)[-3:]
    assert tail.stdout.splitlines()[-1] == "Run 1 complete"


def _tree_sha256s(root) -> dict[str, str]:
    """sha256 of every file below `root`, by its path relative to it."""
    import hashlib

    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _manifest(server, run_id: int) -> dict[str, str]:
    with server.api() as api:
        files = api.get(f"/runs/{run_id}/outputs").json()["files"]
    return {f["path"]: f["sha256"] for f in files}


def test_idempotent_reuses_the_complete_run_and_pull_downloads_its_outputs(cli, worker, tmp_path):
    command = "mkdir -p d && echo hi > d/a.txt && head -c 300000 /dev/urandom > b.bin"
    first = cli("run", "--idempotent", "--pull", "out", command)
    assert first.returncode == 0, first
    assert "Copied runs/1 to out/" in first.stdout
    manifest = _manifest(worker.server, 1)
    assert set(manifest) == {"d/a.txt", "b.bin"}
    assert _tree_sha256s(tmp_path / "out") == manifest

    again = cli("run", "--idempotent", "--pull", "again", command)
    assert again.returncode == 0, again
    assert again.stdout.splitlines()[0] == "Run 1 already did this; reusing it"
    assert _tree_sha256s(tmp_path / "again") == manifest
    shown = cli("run", "-d", "--json", "--idempotent", command)
    assert (shown.json()["id"], shown.json()["reused"], shown.json()["status"]) == (1, True, "complete")
    assert [r["id"] for r in cli("ps", "--json").json()] == [1]

    # Without --idempotent, or with anything different, it runs again.
    fresh = cli("run", "-d", "--json", command)
    assert (fresh.json()["id"], fresh.json()["reused"]) == (2, False)
    other = cli("run", "-d", "--json", "--idempotent", "-e", "SEED=2", command)
    assert (other.json()["id"], other.json()["reused"]) == (3, False)


def test_idempotent_looks_at_the_local_code_and_its_uncommitted_changes(cli, worker, tmp_path):
    from tests.client.test_cli_spec import git, make_repo

    repo = make_repo(tmp_path / "proj", "1")
    ask = ("run", "-d", "--json", "--idempotent", "python train.py")
    first = cli(*ask, cwd=repo).json()
    wait_status(worker.server, first["id"], "complete")
    assert cli(*ask, cwd=repo).json()["id"] == first["id"]

    (repo / "train.py").write_text("print('edited')\n")  # an uncommitted change
    edited = cli(*ask, cwd=repo).json()
    assert edited["reused"] is False
    wait_status(worker.server, edited["id"], "complete")
    assert cli(*ask, cwd=repo).json()["id"] == edited["id"]

    (repo / "train.py").write_text("print('version 2')\n")
    git(repo, "commit", "-q", "-am", "2")  # another commit
    assert cli(*ask, cwd=repo).json()["reused"] is False
    from_data = cli(*ask, cwd=repo / "data").json()  # another workdir, same code
    assert from_data["reused"] is False and from_data["spec"]["workdir"] == "data"


def test_pull_downloads_nothing_when_the_run_does_not_complete(cli, worker, tmp_path):
    failed = cli("run", "--pull", "out", "echo x > f.txt; exit 3")
    assert failed.returncode == 3, failed
    assert "Nothing pulled into out: run 1 did not complete" in failed.stderr
    assert not (tmp_path / "out").exists()
    assert cli("run", "--idempotent", "-d", "--json", "echo x > f.txt; exit 3").json()["reused"] is False

    nothing = cli("run", "--pull", "empty", "true")  # complete, but it saved no outputs
    assert nothing.returncode == 0, nothing
    assert "Nothing pulled into empty: run 3 saved no outputs" in nothing.stderr
    assert not (tmp_path / "empty").exists()

    refused = cli("run", "-d", "--pull", "out", "true")
    assert_one_line_error(refused, "--pull waits for the run to complete; it cannot be combined with -d/--background")
