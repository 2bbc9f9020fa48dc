"""The sandbox of the local executor, with the real bubblewrap: the probe and its
reasons, what preparing a run changes on the host (never through a link),
the limits it describes, and signals that reach processes which left the
command's group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cast.protocol.messages import RunSpec
from cast.worker.envs import HOST_KEY
from cast.worker.executors.base import BuildResult, Job, PreparedMount
from cast.worker.executors.local import LocalExecutor
from cast.worker.sandbox import RUN_UID_BASE, Limits, Sandbox, SandboxUnavailable, take_uid
from tests.conftest import wait_until

HOST = BuildResult(key=HOST_KEY, cached=True)


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox.probe("bwrap", tmp_path / "probe", hidden=[])


def test_the_probe_names_what_is_missing(tmp_path):
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap \(.*no-bwrap\) is not installed"):
        Sandbox.probe(str(tmp_path / "no-bwrap"), tmp_path / "probe", hidden=[])
    failing = tmp_path / "failing-bwrap"
    failing.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="cannot make a sandbox here: bwrap: No permissions to create new"):
        Sandbox.probe(str(failing), tmp_path / "probe", hidden=[])
    assert not (tmp_path / "probe").exists()


def test_preparing_a_run_never_follows_its_links(sandbox, tmp_path):
    host_file, host_dir = tmp_path / "host.txt", tmp_path / "host-dir"
    host_file.write_text("host\n")
    host_dir.mkdir()
    before = {path: os.lstat(path) for path in (host_file, host_dir)}
    workdir = tmp_path / "run"
    (workdir / "code").mkdir(parents=True)
    (workdir / "code" / "train.py").write_text("print()\n")
    (workdir / "file-link").symlink_to(host_file)
    (workdir / "dir-link").symlink_to(host_dir)
    source = tmp_path / "dataset"
    source.mkdir()

    run = sandbox.prepare(run_id=12, workdir=workdir, area=tmp_path / "area", read_only=[],
                          mounts=[(source, workdir / "data" / "set")], gpus=False, limits=Limits(1 << 30, 64))

    uid = run.uid
    assert uid >= RUN_UID_BASE + 12 if os.geteuid() == 0 else uid == os.geteuid()
    for path in (workdir, workdir / "code", workdir / "code" / "train.py", workdir / "file-link",
                 workdir / "data", workdir / "data" / "set", run.home, run.tmp):
        assert os.lstat(path).st_uid == uid, path
    for path, info in before.items():  # what the links point to is not the run's
        assert (os.lstat(path).st_uid, os.lstat(path).st_mode) == (info.st_uid, info.st_mode)
    assert (workdir / "data" / "set").is_dir() and not any((workdir / "data" / "set").iterdir())
    run.end()
    assert not run.area.exists()


def test_a_run_uid_is_no_other_runs_until_given_back(tmp_path):
    locks = tmp_path / "uids"
    first, again, next_one = take_uid(7, locks), take_uid(7, locks), take_uid(8, locks)
    if os.geteuid() != 0:  # every run keeps the worker's uid, in a user namespace of its own
        assert {first.uid, again.uid, next_one.uid} == {os.geteuid()} and not locks.exists()
        return
    assert [first.uid, again.uid, next_one.uid] == [RUN_UID_BASE + 7, RUN_UID_BASE + 8, RUN_UID_BASE + 9]
    first.release()
    first.release()  # once only
    back = take_uid(7, locks)
    assert back.uid == RUN_UID_BASE + 7
    for held in (again, next_one, back):
        held.release()
    assert not any(locks.iterdir())  # nothing left behind in the pool


def test_the_uids_of_a_worker_that_died_are_free_again(tmp_path):
    locks = tmp_path / "uids"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from cast.worker.sandbox import take_uid; "
                               f"print(take_uid(7, Path({str(locks)!r})).uid, flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())
        beside = take_uid(7, locks)
        if os.geteuid() == 0:
            assert (held, beside.uid) == (RUN_UID_BASE + 7, RUN_UID_BASE + 8)
        beside.release()
    finally:
        holder.kill()
        holder.wait()
    after = take_uid(7, locks)  # its lock went with its process; the file it left is taken over
    assert after.uid == (RUN_UID_BASE + 7 if os.geteuid() == 0 else os.geteuid())
    after.release()


def test_a_mount_path_through_a_link_of_the_checkout_is_refused(sandbox, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (workdir / "data").symlink_to(outside)
    with pytest.raises(ValueError, match="mount path 'data/set' leads outside the working directory"):
        sandbox.prepare(run_id=1, workdir=workdir, area=tmp_path / "area", read_only=[],
                        mounts=[(tmp_path, workdir / "data" / "set")], gpus=False, limits=Limits(1 << 30, 64))
    assert not any(outside.iterdir())


def test_the_limits_read_as_a_person_would_write_them():
    assert Limits(memory=8 << 30, processes=4096).describe() == \
        "memory 8.0 GB per process, 4096 processes, CPU time unlimited"
    assert Limits(memory=300 << 20, processes=40, cpu_seconds=3600).describe() == \
        "memory 300 MB per process, 40 processes, 1h0m0s CPU time per process"
    assert Limits(memory=1000, processes=2, cpu_seconds=5).prlimit() == \
        ["prlimit", "--data=1000", "--nproc=2", "--cpu=5", "--"]


def test_a_run_is_held_to_its_limits_from_its_first_word(sandbox, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    # A shell's start-up file runs before the command's first word: it is held too.
    (workdir / "start.sh").write_text("echo start-up: $(ulimit -u)\n")
    run = sandbox.prepare(run_id=5, workdir=workdir, area=tmp_path / "area", read_only=[], mounts=[], gpus=False,
                          limits=Limits(memory=300 << 20, processes=40, cpu_seconds=7))
    shown = subprocess.run(sandbox.argv(run, "cat /proc/self/limits; nosuchcommand"), cwd=workdir,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           env={**os.environ, "BASH_ENV": str(workdir / "start.sh")})
    lines = shown.stdout.splitlines()
    assert lines[0] == "start-up: 40"
    limits = {line[:26].strip(): line[26:].split()[:2] for line in lines[2:]}
    assert limits["Max data size"] == [str(300 << 20)] * 2  # soft and hard: the run cannot raise it
    assert limits["Max processes"] == ["40", "40"]
    assert limits["Max cpu time"] == ["7", "7"]
    assert "line 1: nosuchcommand: command not found" in shown.stderr
    assert shown.returncode == 127


def _job(tmp_path: Path, command: str, **spec) -> Job:
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    return Job(run_id=3, spec=RunSpec.from_dict({"command": command, **spec}), workdir=workdir)


def _processes(text: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if text in line]


def test_stop_reaches_a_process_that_left_the_group_and_kill_ends_every_one(tmp_path):
    executor = LocalExecutor(tmp_path / "work")
    lines: list[str] = []
    command = ("setsid bash -c 'trap \"echo escapee got TERM; exit 0\" TERM; echo escapee ready; "
               "sleep 1001.5 & wait' & setsid sleep 1002.5 & trap '' TERM; echo ready; sleep 1003.5")
    process = executor.start(_job(tmp_path, command), HOST, lambda stream, texts: lines.extend(texts))
    wait_until(lambda: {"ready", "escapee ready"} <= set(lines), timeout=60, what="the command to start")
    process.terminate(grace=600)
    wait_until(lambda: "escapee got TERM" in lines, timeout=60, what="SIGTERM to reach the setsid process")
    assert _processes("sleep 1003.5")  # it ignores SIGTERM: still running within its grace
    process.kill()
    result = process.wait()
    assert (result.exit_code, result.reason) == (128 + signal.SIGKILL, "ended by SIGKILL")
    wait_until(lambda: not any(_processes(f"sleep 100{n}.5") for n in (1, 2, 3)), timeout=60,
               what="every process of the run to end")
    process.release()
    assert not list((tmp_path / "work" / "sandboxes").iterdir())  # its HOME and /tmp went with it


def test_a_command_that_ends_takes_its_leftovers_with_it(tmp_path):
    executor = LocalExecutor(tmp_path / "work")
    process = executor.start(_job(tmp_path, "setsid sleep 1004.5 & echo left; exit 4"), HOST, lambda *_: None)
    results = []
    waiting = threading.Thread(target=lambda: results.append(process.wait()), daemon=True)
    waiting.start()
    waiting.join(timeout=300)  # guards against a hang only: the leftover must not hold the run open
    assert [result.exit_code for result in results] == [4]
    wait_until(lambda: not _processes("sleep 1004.5"), timeout=60, what="the leftover to end")


def test_a_mount_is_a_real_read_only_folder_inside(tmp_path):
    source = tmp_path / "dataset"
    (source / "part").mkdir(parents=True)
    (source / "part" / "a.bin").write_bytes(b"x" * 5000)
    executor = LocalExecutor(tmp_path / "work")
    job = _job(tmp_path, "find data -type f; du -sb data/part/a.bin | cut -f1; "
                         "tar cf - data | tar tf - | sort | tr '\\n' ' '")
    job.mounts = [PreparedMount(source, "data")]
    lines: list[tuple[str, str]] = []
    sink = lambda stream, texts: lines.extend((stream, text) for text in texts)  # noqa: E731
    assert executor.start(job, HOST, sink).wait().exit_code == 0
    assert [text for stream, text in lines if stream == "stdout"] == [
        "data/part/a.bin", "5000", "data/ data/part/ data/part/a.bin "]


def test_the_workers_own_folders_are_hidden_even_inside_a_system_tree(tmp_path):
    """CAST_HOME under /opt, say: the system tree is seen, the worker's folder in it is empty."""
    sandbox = Sandbox.probe("bwrap", tmp_path / "probe", hidden=[Path("/usr/share")])
    workdir = tmp_path / "run"
    workdir.mkdir()
    run = sandbox.prepare(run_id=5, workdir=workdir, area=tmp_path / "area", read_only=[], mounts=[], gpus=False,
                          limits=Limits(1 << 30, 64))
    seen = subprocess.run(sandbox.argv(run, "ls -A /usr/share | wc -l; test -x /usr/bin/bash && echo system"),
                          capture_output=True, text=True, timeout=300)
    assert seen.stdout.split() == ["0", "system"], seen.stderr
    assert any(os.scandir("/usr/share"))  # hidden inside the run only
