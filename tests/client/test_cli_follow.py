"""Following a run's log across a dropped connection: the server is killed and
restarted on the same port and data dir while `cast logs -f` follows, and
every line still arrives exactly once, in order."""

from __future__ import annotations

import signal
import subprocess

from tests.factories import log_texts, run_id_of, wait_status
from tests.conftest import wait_until

LINES = 60
# Long enough for the worker to keep its lease while the server is down.
SLOW_LEASE = {"CAST_LEASE_SECONDS": "20"}


def test_logs_follow_resumes_after_the_server_restarts(start_server, start_worker, cast_for, base_env, tmp_path):
    server = start_server(env=SLOW_LEASE)
    start_worker(server, env=SLOW_LEASE)
    cast = cast_for(server)
    run_id = run_id_of(cast("run", "-d", f"for i in $(seq 1 {LINES}); do echo line$i; sleep 0.1; done"))

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
    assert job_lines == [f"line{i}" for i in range(1, LINES + 1)]
    # Everything the log holds was printed exactly once, in order, then the outcome.
    assert printed[: -2] == log_texts(restarted, run_id)
    assert printed[-1] == f"Run {run_id} complete"


def test_run_follows_to_the_end_and_tail_follow_starts_near_the_end(cli, worker):
    assert cli("run", "for i in 1 2 3 4 5 6; do echo n$i; done").returncode == 0
    tail = cli("logs", "-f", "--tail", "3", "1")
    assert tail.returncode == 0
    assert tail.stdout.splitlines()[:3] == log_texts(worker.server, 1)[-3:]
    assert tail.stdout.splitlines()[-1] == "Run 1 complete"
