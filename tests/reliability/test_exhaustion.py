"""Resource exhaustion: a run that prints gigabytes of log, writes more output
than the server keeps, forks without bound or fills the disk (the worker's or
the server's) is stopped or failed with a clear reason, and the server and the
other runs keep working.

Caps under test: the server's per-run log cap (CAST_MAX_LOG_BYTES_PER_RUN,
one visible truncation marker) and JSON body cap (CAST_MAX_JSON_BODY_BYTES,
which the worker's log batches must stay under), its output cap
(CAST_MAX_OUTPUT_BYTES), the Docker executor's pids limit
(CAST_WORKER_PIDS_LIMIT); a full disk is a small tmpfs under the worker or
as the server's data dir (a real ENOSPC: the server answers 507).
"""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from tests.conftest import wait_until
from tests.factories import log_texts, output_paths, page_entries, submit, wait_final, wait_for_line

TICKS = 'for i in $(seq 1 30); do echo "tick $i"; sleep 0.1; done'


def _ticked(api, run_id: int) -> None:
    run = wait_final(api, run_id, timeout=120)
    assert run["status"] == "complete", (run, log_texts(api, run_id))
    assert log_texts(api, run_id, "stdout") == [f"tick {i}" for i in range(1, 31)]


def test_gigabytes_of_log_are_cut_at_the_cap_while_the_server_and_another_run_keep_going(
        start_server, start_worker, cast_via):
    cap = 2000 * 4096  # bytes: 2,000 lines of 4,095 characters and a newline
    server = start_server(env={"CAST_MAX_LOG_BYTES_PER_RUN": str(cap)})
    start_worker(server, extra_args=["--max-runs", "2"])
    with server.api() as api:
        # 2 GiB in lines of 4 KiB; the output file proves the worker read it all.
        flood = submit(api, "yes \"$(printf '%04095d' 0)\" | head -c 2G && echo done > flooded.txt")
        neighbour = submit(api, TICKS)
        wait_for_line(api, neighbour, "tick 1")
        # The server keeps answering all through the flood. How fast is the
        # benchmarks' business; the bound only tells a frozen server from a
        # machine busy with other work.
        while api.get(f"/runs/{flood}").json()["status"] not in ("complete", "failed"):
            assert httpx.get(f"{server.url}/api/v1/health", timeout=60).status_code == 200
            assert api.get("/runs").status_code == 200
            time.sleep(0.1)

        run = wait_final(api, flood)
        assert run["status"] == "complete", run
        assert output_paths(api, flood) == ["flooded.txt"]
        entries = page_entries(api.get(f"/runs/{flood}/logs", params={"limit": 10000}).json())
        printed = [e for e in entries if e["stream"] == "stdout"]
        assert len(printed) == 2000 and all(len(e["text"]) == 4095 for e in printed)
        marker = f"[cast] log truncated after {cap:,} bytes (7.8 MB)"
        markers = [i for i, e in enumerate(entries) if e["text"] == marker]
        assert len(markers) == 1 and entries[markers[0]]["stream"] == "cast"
        assert markers[0] > entries.index(printed[-1])
        assert entries[-1]["text"].startswith("Pushing… done")  # the stage lines still follow
        _ticked(api, neighbour)

    shown = cast_via(server.url, server.admin_token).run("logs", str(flood)).stdout.splitlines()
    assert marker in shown


def test_long_lines_printed_at_full_speed_are_all_kept(start_server, start_worker):
    # Batches of 500 such lines would be 10 MB: the worker must keep each
    # request under the server's body cap rather than have it refused.
    server = start_server(env={"CAST_MAX_JSON_BODY_BYTES": str(2 << 20)})
    start_worker(server)
    with server.api() as api:
        run_id = submit(api, "yes \"$(printf '%020000d' 7)\" | head -n 1000")
        assert wait_final(api, run_id)["status"] == "complete"
        assert log_texts(api, run_id, "stdout") == ["0" * 19999 + "7"] * 1000


def test_outputs_over_the_cap_fail_the_run_with_the_reason(start_server, start_worker, cast_via):
    cap = 4 << 20
    server = start_server(env={"CAST_MAX_OUTPUT_BYTES": str(cap)})
    start_worker(server)
    cast = cast_via(server.url, server.admin_token)
    result = cast.run("run", "head -c 8M /dev/urandom > big.bin && echo wrote")
    assert result.returncode == 1
    reason = f"outputs not saved: the output of run 1 exceeds the limit of {cap} bytes"
    assert result.stdout.splitlines()[-1] == f"Run 1 failed (exit code 0): {reason}"
    with server.api() as api:
        run = api.get("/runs/1").json()
        assert (run["status"], run["exit_code"], run["reason"]) == ("failed", 0, reason)
        assert output_paths(api, 1) == []
    # The server and the worker go on: a run within the cap keeps its output.
    assert cast.run("run", "head -c 1M /dev/urandom > small.bin").returncode == 0
    assert cast.run("ls", "runs/2").stdout.split()[0] == "small.bin"


def test_a_full_server_disk_fails_the_run_with_507_and_leaves_nothing_half_written(
        start_server, start_worker, small_disk, cast_via, tmp_path):
    data_dir = small_disk(tmp_path / "server-data", megabytes=32)
    server = start_server(data_dir=data_dir)
    start_worker(server)
    cast = cast_via(server.url, server.admin_token)
    result = cast.run("run", "head -c 64M /dev/urandom > big.bin && echo wrote")
    assert result.returncode == 1, result
    reason = "outputs not saved: server storage full"
    assert result.stdout.splitlines()[-1] == f"Run 1 failed (exit code 0): {reason}"
    with server.api() as api:
        run = api.get("/runs/1").json()
        assert (run["status"], run["exit_code"], run["reason"]) == ("failed", 0, reason)
        assert output_paths(api, 1) == []
        assert "The server refused the output push (HTTP 507): server storage full" in log_texts(api, 1, "cast")
        # The answer itself, as any client sees it: 507, marked permanent.
        refused = httpx.put(f"{server.url}/api/v1/uploads/big", content=b"x" * (40 << 20),
                            headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=120)
        assert (refused.status_code, refused.json()) == (507, {"detail": "server storage full"})
        assert refused.headers["X-Cast-Permanent"] == "1"
    assert list((data_dir / "tmp").iterdir()) == []  # the half-received bodies are gone
    assert not (data_dir / "runs" / "1").exists() and not (data_dir / "uploads" / "big").exists()
    # Space came back with them: a run that fits is saved.
    assert cast.run("run", "head -c 1M /dev/urandom > small.bin").returncode == 0
    assert cast.run("ls", "runs/2").stdout.split()[0] == "small.bin"


def test_a_database_write_on_a_full_server_disk_answers_507_and_changes_nothing(start_server, small_disk, tmp_path):
    data_dir = small_disk(tmp_path / "server-data", megabytes=8)
    # The database on the full disk is SQLite in the data dir, whatever CAST_TEST_DATABASE says:
    # a PostgreSQL server keeps its files on a disk of its own.
    server = start_server(data_dir=data_dir, env={"CAST_DATABASE_URL": f"sqlite:///{data_dir / 'cast.db'}"})
    with server.api() as api:
        first = submit(api, "true")
        filler = data_dir / "filler"
        subprocess.run(["sh", "-c", f"head -c 16M /dev/zero > {filler}"], check=False, stderr=subprocess.DEVNULL)
        # SQLite meets ENOSPC when it commits a run of 60 KB.
        refused = api.post("/runs", json={"command": "echo " + "x" * 60_000})
        assert (refused.status_code, refused.json()) == (507, {"detail": "server storage full"})
        assert refused.headers["X-Cast-Permanent"] == "1"
        assert [run["id"] for run in api.get("/runs").json()["runs"]] == [first]
        filler.unlink()
        assert submit(api, "true") == first + 1
    assert "Traceback" not in server.log_path.read_text()


def test_a_fork_bomb_is_killed_at_its_pids_limit_while_another_run_goes_on(server, start_worker, docker_env):
    start_worker(server, executor="docker", extra_args=["--max-runs", "2"],
                 env={**docker_env, "CAST_WORKER_PIDS_LIMIT": "64", "CAST_WORKER_CPUS": "1"})
    with server.api() as api:
        bomb = submit(api, "echo armed; bomb() { bomb | bomb; }; bomb")
        wait_for_line(api, bomb, "armed", timeout=120)
        neighbour = submit(api, TICKS)
        run = wait_final(api, bomb, timeout=60)
        assert run["status"] == "failed"
        assert run["reason"] == "reached its limit of 64 processes (pids limit)"
        assert any(line.endswith("fork: retry: Resource temporarily unavailable")
                   for line in log_texts(api, bomb, "stderr"))
        _ticked(api, neighbour)


@pytest.mark.parametrize("executor", ["local", "docker"])
def test_a_run_filling_the_disk_fails_clearly_while_others_go_on(executor, request, server, start_worker,
                                                                  small_disk, tmp_path):
    env = request.getfixturevalue("docker_env") if executor == "docker" else {}
    small_disk(tmp_path / "cramped", megabytes=48)  # the work dir of the worker below
    start_worker(server, executor=executor, name="cramped", extra_args=["--max-runs", "2"], env=env)
    with server.api() as api:
        neighbour = submit(api, TICKS)
        wait_for_line(api, neighbour, "tick 1", timeout=120)
        filler = submit(api, "head -c 200M /dev/zero > fill.bin")
        run = wait_final(api, filler, timeout=60)
        assert run["status"] == "failed", run
        assert run["reason"] == "exit code 1; the worker's disk is full"
        assert any("No space left on device" in line for line in log_texts(api, filler, "stderr"))
        _ticked(api, neighbour)
        # Its working dir is gone once its outputs are delivered: the disk is usable again.
        after = submit(api, "head -c 4M /dev/urandom > after.bin")
        assert wait_final(api, after)["status"] == "complete"
        assert output_paths(api, after) == ["after.bin"]
        wait_until(lambda: output_paths(api, filler) == ["fill.bin"], timeout=10, what="the partial output")
