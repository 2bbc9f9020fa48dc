"""Isolation on the Docker executor, tried from inside a run: the run cannot
reach the Docker socket, the worker's files (its work dir, the tokens), the
control plane, another run's working directory or an output it did not
mount; it runs as a non-root user with no capabilities and no way to gain
privileges. (The local executor isolates nothing: see docs/reliability.md.)"""

from __future__ import annotations

from tests.conftest import wait_until
from tests.factories import log_texts, submit, wait_final, wait_for_line

# Each check prints `ok NAME` when it holds, `FAIL NAME` when not: first two
# controls showing that the search and the network probe can find what is
# there, then what the run must be kept out of. The secrets arrive as
# environment variables, so the probe's own command line (which the process
# listing prints) never holds them.
PROBE = r"""
check() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "ok $name"; else echo "FAIL $name"; fi; }
everywhere() { grep -rqsF -D skip "$@" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; }
echo "$CONTROL_SECRET" > control.txt
check search-finds-own-file everywhere -e "$CONTROL_SECRET"
python3 -c "import socket, time; s = socket.create_server(('127.0.0.1', 8123)); time.sleep(10)" &
sleep 0.5
check loopback-works bash -c 'exec 3<>/dev/tcp/127.0.0.1/8123'
check no-docker-socket bash -c '! test -e /var/run/docker.sock && ! test -e /run/docker.sock'
check no-socket-file-at-all bash -c '[ -z "$(find / \( -path /proc -o -path /sys \) -prune -o -type s -print 2>/dev/null)" ]'
check no-worker-work-dir test ! -e "$WORKER_DIR"
check no-server-data-dir test ! -e "$DATA_DIR"
check no-token-anywhere bash -c '! everywhere -e "$WORKER_TOKEN" -e "$ADMIN_TOKEN"'
check no-other-run-dir test ! -e "$VICTIM_DIR"
check no-other-run-files bash -c '! everywhere -e "$VICTIM_SECRET"'
check no-unmounted-output bash -c '! everywhere -e "$OUTPUT_SECRET"'
check no-control-plane bash -c "! timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$SERVER_PORT'"
check no-user-namespace bash -c '! unshare -r true'
check no-mount bash -c '! mount -t tmpfs none /tmp'
check no-chroot bash -c '! chroot / true'
check no-system-files bash -c '! touch /etc/passwd'
echo "uid $(id -u) gid $(id -g)"
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status
for p in /proc/[0-9]*; do echo "process $(tr '\0' ' ' < "$p/cmdline")"; done
"""
EXPECTED_OK = ["search-finds-own-file", "loopback-works", "no-docker-socket", "no-socket-file-at-all", "no-worker-work-dir", "no-server-data-dir",
               "no-token-anywhere", "no-other-run-dir", "no-other-run-files", "no-unmounted-output",
               "no-control-plane", "no-user-namespace", "no-mount", "no-chroot", "no-system-files"]
VICTIM_SECRET = "victim-3b1f9c-secret"
OUTPUT_SECRET = "output-7d20ae-secret"
VICTIM_SLEEP = "sleep 61.25"


def test_a_run_in_a_container_is_kept_out_of_everything_it_was_not_given(server, start_worker, docker_env):
    worker = start_worker(server, executor="docker", extra_args=["--max-runs", "2"], env=docker_env)
    with server.api() as api:
        output = submit(api, f"echo {OUTPUT_SECRET} > saved.txt")
        assert wait_final(api, output, timeout=120)["status"] == "complete"
        victim = submit(api, f"echo {VICTIM_SECRET} > mine.txt; echo ready; {VICTIM_SLEEP}")
        wait_for_line(api, victim, "ready")
        victim_dir = wait_until(lambda: [path for path in (worker.work_dir / "runs").glob(f"{victim}-*")
                                         if path.suffix != ".metrics"],  # not its metrics dir beside it
                                what="its work dir")[0]
        assert (victim_dir / "mine.txt").read_text() == VICTIM_SECRET + "\n"  # the secret is on this host

        probe = submit(api, PROBE, env={
            "WORKER_DIR": str(worker.work_dir.resolve()), "DATA_DIR": str(server.data_dir.resolve()),
            "WORKER_TOKEN": server.worker_token, "ADMIN_TOKEN": server.admin_token,
            "VICTIM_DIR": str(victim_dir.resolve()), "VICTIM_SECRET": VICTIM_SECRET,
            "OUTPUT_SECRET": OUTPUT_SECRET, "CONTROL_SECRET": "control-5e8a41-secret",
            "SERVER_PORT": str(server.port),
        })
        run = wait_final(api, probe, timeout=120)
        lines = log_texts(api, probe, "stdout")
        assert run["status"] == "complete", (run, log_texts(api, probe))
        api.post(f"/runs/{victim}/kill")

    assert [line for line in lines if line.startswith(("ok ", "FAIL "))] == [f"ok {name}" for name in EXPECTED_OK]
    uid, gid = (int(word) for word in next(line for line in lines if line.startswith("uid ")).split()[1::2])
    assert uid != 0 and gid != 0
    status = dict(line.split(":\t") for line in lines if line.startswith(("Cap", "NoNewPrivs")))
    assert status == {"CapInh": "0" * 16, "CapPrm": "0" * 16, "CapEff": "0" * 16, "CapBnd": "0" * 16,
                      "CapAmb": "0" * 16, "NoNewPrivs": "1"}
    processes = [line for line in lines if line.startswith("process ")]
    assert processes and not any(VICTIM_SLEEP in line for line in processes), processes
