"""The local executor's sandbox, tried from inside runs through a real server and
worker: a run cannot reach the server's files (tokens, database, stored
outputs), the worker's or another run's working dir; it sees its mounts as
real files, has a HOME and /tmp of its own, leaves no process behind, and
ends clearly at its process and memory limits. A worker without bubblewrap
warns, says "NOT sandboxed" in each run's machine line, and a server with more
than one user leases it nothing unless its operator allows it."""

from __future__ import annotations

import os
import subprocess
import uuid

from tests.conftest import wait_until
from tests.factories import get_run, log_texts, submit, wait_final, wait_for_line, wait_status

# Each check prints `ok NAME` when it holds, `FAIL NAME` when not; the first
# two are controls that show the checks can see what is there.
PROBE = r"""
check() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "ok $name"; else echo "FAIL $name"; fi; }
echo "$CONTROL_SECRET" > control.txt
check own-file-found grep -qF "$CONTROL_SECRET" "$PWD/control.txt"
check mount-is-readable grep -qF "$OUTPUT_SECRET" prev/saved.txt
check no-server-data-dir test ! -e "$DATA_DIR"
check no-database test ! -e "$DATA_DIR/cast.db"
check no-tokens bash -c '! cat "$DATA_DIR/worker-token" "$DATA_DIR/admin-token"'
check no-cast-home test ! -e "$CAST_HOME_DIR"
check no-worker-files bash -c 'b=$(basename "$PWD"); test ! -e "$WORKER_DIR/worker.lock" && [ -z "$(ls "$WORKER_DIR/runs" | grep -v -x -e "$b" -e "$b.metrics")" ]'
check no-other-run-dir test ! -e "$VICTIM_DIR"
check no-stored-output-write bash -c '! echo overwritten >> "$DATA_DIR/runs/$OUTPUT_RUN/saved.txt"'
check mount-not-writable bash -c '! echo overwritten >> prev/saved.txt'
check no-host-secrets bash -c '! ln /etc/shadow stolen 2>/dev/null && ! cat /etc/shadow | grep -q .'
check no-host-processes bash -c '! ps -eo args | grep -q "^$VICTIM_SLEEP"'
echo "find $(find prev -type f)"
echo "du $(du -b prev/saved.txt | cut -f1)"
echo "home $HOME tmp ${TMPDIR:-unset} uid $(id -u)"
touch "$HOME/$MARKER" "$TMPDIR/$MARKER" && echo "private dirs writable"
setsid sleep "$ESCAPEE" < /dev/null > /dev/null 2>&1 &
echo done
"""
CHECKS = ["own-file-found", "mount-is-readable", "no-server-data-dir", "no-database", "no-tokens", "no-cast-home",
          "no-worker-files", "no-other-run-dir", "no-stored-output-write", "mount-not-writable", "no-host-secrets",
          "no-host-processes"]
OUTPUT_SECRET = "output-51c2e0-secret"
VICTIM_SLEEP = "sleep 62.75"


def _host_processes(text: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if text in line]


def test_a_sandboxed_run_sees_only_its_own_and_leaves_nothing_running(server, start_worker, base_env):
    worker = start_worker(server, extra_args=["--max-runs", "2"])
    with server.api() as api:
        output = submit(api, f"echo {OUTPUT_SECRET} > saved.txt")
        assert wait_final(api, output, timeout=120)["status"] == "complete"
        victim = submit(api, f"echo ready; {VICTIM_SLEEP}")
        wait_for_line(api, victim, "ready", timeout=120)
        victim_dir = wait_until(lambda: list((worker.work_dir / "runs").glob(f"{victim}-*")), what="its work dir")[0]
        marker, escapee = f"marker-{uuid.uuid4().hex}", "1234.5"
        probe = submit(api, PROBE, mounts=[{"resource": f"runs/{output}", "path": "prev"}], env={
            "CONTROL_SECRET": "control-secret-e4a1", "OUTPUT_SECRET": OUTPUT_SECRET, "OUTPUT_RUN": str(output),
            "DATA_DIR": str(server.data_dir.resolve()), "CAST_HOME_DIR": base_env["CAST_HOME"],
            "WORKER_DIR": str(worker.work_dir.resolve()), "VICTIM_DIR": str(victim_dir.resolve()),
            "VICTIM_SLEEP": VICTIM_SLEEP, "MARKER": marker, "ESCAPEE": escapee,
        })
        run = wait_final(api, probe, timeout=120)
        lines = log_texts(api, probe)
        assert run["status"] == "complete", lines
        api.post(f"/runs/{victim}/kill")

    assert [f"ok {name}" for name in CHECKS] == [line for line in lines if line.split(" ")[0] in ("ok", "FAIL")], lines
    assert any(line.startswith("Sandbox: bubblewrap") and "4096 processes" in line for line in lines), lines
    assert "find prev/saved.txt" in lines  # a bind mount: find and du see the real file
    assert f"du {len(OUTPUT_SECRET) + 1}" in lines
    home_line = next(line for line in lines if line.startswith("home "))
    assert home_line.startswith("home /home/cast tmp /tmp uid "), home_line
    assert "private dirs writable" in lines
    assert not (server.data_dir / "runs" / str(output) / "saved.txt").read_text().count("overwritten")
    # The run's HOME and /tmp were its own: nothing of them is on the host, and
    # the process it left behind with setsid ended with it.
    assert not list(worker.work_dir.rglob(marker)) and not os.path.exists(os.path.join("/tmp", marker))
    wait_until(lambda: not _host_processes(f"sleep {escapee}"), timeout=60, what="the escaped sleep to end")


def test_a_run_ends_clearly_at_its_process_and_memory_limits(server, start_worker):
    start_worker(server, env={"CAST_WORKER_PIDS_LIMIT": "40", "CAST_WORKER_MEMORY": "300m"})
    with server.api() as api:
        fork_bomb = submit(api, "for i in $(seq 200); do sleep 301.25 & done; wait")
        hungry = submit(api, "python -c 'bytearray(600 * 1024 * 1024)'")
        bombed = wait_final(api, fork_bomb, timeout=180)
        assert (bombed["status"], bombed["reason"]) == ("failed", "reached its limit of 40 processes (pids limit)")
        ran_out = wait_final(api, hungry, timeout=180)
        lines = log_texts(api, hungry)
    assert ran_out["status"] == "failed", lines
    assert any("MemoryError" in line for line in lines), lines
    assert any(line.startswith("Sandbox: bubblewrap") and "memory 300 MB per process, 40 processes" in line
               for line in lines), lines
    wait_until(lambda: not _host_processes("sleep 301.25"), timeout=60, what="the run's processes to end")


def test_a_worker_without_bubblewrap_warns_and_a_multi_user_server_leases_it_nothing(server, start_worker, tmp_path):
    worker = start_worker(server, env={"CAST_WORKER_BWRAP": str(tmp_path / "missing-bwrap")})
    with server.api() as api:
        alone = submit(api, "echo hello")
        assert wait_final(api, alone, timeout=120)["status"] == "complete"
        assert "Machine_Requested… done (local, cpu, NOT sandboxed)" in log_texts(api, alone, "cast")
        assert get_run(api, alone)["limits"] == "NOT sandboxed, no limits"
        assert "RUNS ON THIS WORKER ARE NOT SANDBOXED" in worker.log_path.read_text()

        assert api.post("/users", json={"name": "bob"}).status_code in (200, 201)
        # Refused at submit, since no worker could run it; queued anyway on request.
        at_submit = api.post("/runs", json={"command": "echo after bob"})
        assert at_submit.status_code == 409 and "CAST_ALLOW_UNSANDBOXED_WORKERS" in at_submit.json()["detail"]
        refused = submit(api, "echo after bob", queue_anyway=True)
        wait_until(lambda: "CAST_ALLOW_UNSANDBOXED_WORKERS" in worker.log_path.read_text().split("NOT SANDBOXED")[-1],
                   timeout=60, what="the worker to log the refusal")
        assert get_run(api, refused)["status"] == "machine_requested"

    server.stop()
    server.env["CAST_ALLOW_UNSANDBOXED_WORKERS"] = "1"
    server.start()
    assert wait_status(server, refused, "complete", timeout=120)["status"] == "complete"
