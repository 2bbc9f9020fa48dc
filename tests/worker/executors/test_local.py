"""The local executor for real: bash in the working dir, its environment, logs,
read-only mounts (even for root), GPUs, stop and kill."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cast.protocol.messages import RunSpec
from cast.worker.envs import HOST_KEY
from cast.worker.executors.base import BuildFailed, BuildResult, InvalidExecutorOption, Job, PreparedMount
from cast.worker.executors.local import LocalExecutor
from cast.worker.mounts import make_read_only
from cast.worker.sandbox import RUN_UID_BASE
from tests.conftest import wait_until
from tests.worker.pipconfig import EXPECTED, PACKAGES, PROBE, host_pip_config  # noqa: F401  (fixture)

HOST = BuildResult(key=HOST_KEY, cached=True)


class Sink:
    """A build's LogSink (a line a call) and a command's LinesSink (a read's lines a call) alike."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, stream: str, text: str | list[str]) -> None:
        with self._lock:
            self.lines.extend((stream, line) for line in ([text] if isinstance(text, str) else text))

    def of(self, stream: str) -> list[str]:
        return [text for s, text in self.lines if s == stream]


@pytest.fixture
def executor(tmp_path) -> LocalExecutor:
    executor = LocalExecutor(tmp_path / "work")
    assert executor.sandboxed, executor.unsandboxed_reason  # bubblewrap is installed by scripts/setup.sh
    return executor


@pytest.fixture
def unsandboxed(tmp_path, monkeypatch) -> LocalExecutor:
    """The local executor on a host without bubblewrap."""
    monkeypatch.setenv("CAST_WORKER_BWRAP", str(tmp_path / "no-bwrap"))
    executor = LocalExecutor(tmp_path / "plain")
    assert not executor.sandboxed
    return executor


def make_job(tmp_path: Path, command: str, **fields) -> Job:
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    return Job(run_id=7, spec=RunSpec.from_dict({"command": command, **fields.pop("spec", {})}), workdir=workdir,
               **fields)


def test_runs_bash_in_the_working_dir_with_the_run_environment(executor, tmp_path, monkeypatch):
    monkeypatch.setenv("CAST_WORKER_TOKEN", "secret-worker-token")
    job = make_job(tmp_path, 'pwd; echo "id=$CAST_RUN_ID seed=$SEED token=${CAST_WORKER_TOKEN:-none}"; '
                             'echo oops >&2; exit 3',
                   env={"CAST_RUN_ID": "7", "SEED": "42"})
    sink = Sink()
    result = executor.start(job, HOST, sink).wait()
    assert result.exit_code == 3
    assert sink.of("stdout") == [str(job.workdir), "id=7 seed=42 token=none"]
    assert sink.of("stderr") == ["oops"]


def test_lines_reach_the_sink_while_the_command_runs(executor, tmp_path):
    job = make_job(tmp_path, "echo first; sleep 1; echo second; sleep 3600")  # ends only when killed
    sink = Sink()
    process = executor.start(job, HOST, sink)
    wait_until(lambda: sink.of("stdout") == ["first", "second"], timeout=120, what="both lines, mid-run")
    process.kill()
    assert process.wait().exit_code == 137


def test_a_pip_environment_is_on_the_path(executor, tmp_path):
    job = make_job(tmp_path, 'python -c "import termcolor, sys; print(sys.prefix)"',
                   spec={"pip": ["termcolor"]})
    build = executor.build(job, Sink())
    sink = Sink()
    assert executor.start(job, build, sink).wait().exit_code == 0
    assert sink.of("stdout") == [str(executor.envs.path(build.key))]
    assert executor.build(job, Sink()).cached
    assert [entry.key for entry in executor.cache_entries()] == [build.key]


def test_a_uv_environment_honours_the_hosts_pip_settings_and_runs_in_the_sandbox(host_pip_config, tmp_path):
    executor = LocalExecutor(tmp_path / "work")  # reads this test's pip settings on its first build
    assert executor.sandboxed and executor.envs.installer.name == "uv"
    job = make_job(tmp_path, f'python -c "{PROBE}"', spec={"pip": PACKAGES})
    log = Sink()
    build = executor.build(job, log)
    assert log.of("cast")[0].endswith("(pip: 2 packages, with uv)")
    sink = Sink()
    assert executor.start(job, build, sink).wait().exit_code == 0
    # 1.0 of cast-probe although 2.0 lies beside it: the constraint held.
    assert sink.of("stdout") == [f"{EXPECTED['cast_probe']} {EXPECTED['cast_probe_index']}"]
    # The environment's files are the worker's cache's, linked.
    module = next(executor.envs.path(build.key).glob("lib/python*/site-packages/cast_probe/__init__.py"))
    assert module.stat().st_nlink >= 2 and (tmp_path / "work" / "uv-cache").is_dir()


def test_an_installer_setting_that_cannot_be_had_stops_the_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("CAST_WORKER_INSTALLER", "conda")
    with pytest.raises(InvalidExecutorOption, match="CAST_WORKER_INSTALLER='conda': expected one of auto, uv, pip"):
        LocalExecutor(tmp_path / "work")


def test_apt_packages_are_refused_clearly(executor, tmp_path):
    with pytest.raises(BuildFailed, match="cannot install apt packages; use the docker executor"):
        executor.build(make_job(tmp_path, "true", spec={"apt": ["jq"]}), Sink())


def test_cuda_visible_devices_holds_only_the_runs_gpus(executor, tmp_path):
    sink = Sink()
    executor.start(make_job(tmp_path, 'echo "[$CUDA_VISIBLE_DEVICES]"', gpus=[1, 3]), HOST, sink).wait()
    executor.start(make_job(tmp_path, 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"'), HOST, sink).wait()
    assert sink.of("stdout") == ["[1,3]", "[]"]


@pytest.fixture
def read_only_sources(tmp_path):
    data = tmp_path / "sources" / "dataset"
    data.mkdir(parents=True)
    (data / "train.txt").write_text("train\n")
    single = tmp_path / "sources" / "weights.bin"
    single.write_text("weights\n")
    make_read_only(data)
    make_read_only(single)
    return data, single


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "unsandboxed"])
def test_mounts_cannot_be_written_even_by_root(sandboxed, executor, unsandboxed, tmp_path, read_only_sources):
    executor = executor if sandboxed else unsandboxed
    data, single = read_only_sources
    job = make_job(tmp_path, "cat data/train.txt models/w.bin; "
                             "echo x >> data/train.txt; echo x > data/new.txt; echo x >> models/w.bin; "
                             "rm -f data/train.txt; echo survived",
                   mounts=[PreparedMount(data, "data"), PreparedMount(single, "models/w.bin")])
    (job.workdir / "data").write_text("a checkout file the mount replaces\n")
    sink = Sink()
    result = executor.start(job, HOST, sink).wait()

    assert result.exit_code == 0
    assert sink.of("stdout") == ["train", "weights", "survived"]
    errors = sink.of("stderr")
    assert len(errors) == 4 and all("Read-only file system" in line or "Permission denied" in line
                                    for line in errors), errors
    assert (data / "train.txt").read_text() == "train\n" and not (data / "new.txt").exists()
    assert single.read_text() == "weights\n"
    if sandboxed:  # bind mounts, seen only inside the run: an empty mount point is left
        assert not (job.workdir / "data").is_symlink() and not any((job.workdir / "data").iterdir())
    else:
        if os.geteuid() == 0:
            assert all("Read-only file system" in line for line in errors)
        assert (job.workdir / "data").resolve() == data.resolve()
    # The read-only view belonged to the run alone: the worker's own view is unchanged.
    assert os.access(data.parent, os.W_OK)


def start_until_ready(executor: LocalExecutor, job: Job, sink: Sink):
    """Start `job`, whose command prints `ready` once its traps are set."""
    process = executor.start(job, HOST, sink)
    wait_until(lambda: sink.of("stdout") == ["ready"], timeout=120, interval=0.02, what="the command to start")
    return process


def test_runs_of_one_number_on_two_workers_of_one_host_never_share_a_uid(tmp_path):
    # Two workers of two control planes on one host: each gets a run #7.
    first, second = LocalExecutor(tmp_path / "work-a"), LocalExecutor(tmp_path / "work-b")
    sinks = [Sink(), Sink()]
    processes = []
    for executor, sink, name in ((first, sinks[0], "a"), (second, sinks[1], "b")):
        (tmp_path / name).mkdir()
        job = make_job(tmp_path / name, "id -u; echo ready; sleep 3600")
        processes.append(executor.start(job, HOST, sink))
        wait_until(lambda: "ready" in sink.of("stdout"), timeout=120, what="the command to start")
    uids = [int(sink.of("stdout")[0]) for sink in sinks]
    for sink, uid in zip(sinks, uids):
        assert f"uid {uid};" in sink.of("cast")[0] if os.geteuid() == 0 else "a user namespace" in sink.of("cast")[0]
    for process in processes:
        process.kill()
        process.wait()
        process.release()
    if os.geteuid() == 0:
        assert uids[0] != uids[1] and min(uids) >= RUN_UID_BASE + 7
    else:
        assert uids == [os.geteuid(), os.geteuid()]


def test_terminate_sends_sigterm_to_the_group_and_waits_for_a_clean_exit(executor, tmp_path):
    job = make_job(tmp_path, "trap 'echo got TERM; exit 7' TERM; echo ready; sleep 30 & wait")
    sink = Sink()
    process = start_until_ready(executor, job, sink)
    process.terminate(grace=120)
    result = process.wait()
    assert result.exit_code == 7  # the trap's: not waited out (0), not killed (137)
    assert sink.of("stdout") == ["ready", "got TERM"]


def test_terminate_kills_after_the_grace_period(executor, tmp_path):
    job = make_job(tmp_path, "trap '' TERM; echo ready; sleep 30; echo never")
    sink = Sink()
    process = start_until_ready(executor, job, sink)
    started = time.monotonic()
    process.terminate(grace=0.5)
    result = process.wait()
    assert result.exit_code == 137 and time.monotonic() - started > 0.4, "killed, but only after the grace"
    assert "never" not in sink.of("stdout")


def test_kill_ends_the_whole_group_at_once(executor, tmp_path):
    job = make_job(tmp_path, "trap '' TERM; sleep 3600 & echo ready; sleep 3600; echo never")
    sink = Sink()
    process = start_until_ready(executor, job, sink)
    process.kill()
    assert process.wait().exit_code == 137  # else an hour later: the suite's per-test timeout fails it
    assert "never" not in sink.of("stdout")


def test_the_command_starts_in_the_spec_workdir_sandboxed_or_not(executor, unsandboxed, tmp_path):
    for local in (executor, unsandboxed):
        job = make_job(tmp_path, "pwd; cat ../top.txt", spec={"workdir": "sub/deep"})
        (job.workdir / "sub" / "deep").mkdir(parents=True, exist_ok=True)
        (job.workdir / "sub" / "top.txt").write_text("top\n")
        sink = Sink()
        assert local.start(job, HOST, sink).wait().exit_code == 0, sink.lines
        assert sink.of("stdout") == [str(job.workdir / "sub" / "deep"), "top"]
