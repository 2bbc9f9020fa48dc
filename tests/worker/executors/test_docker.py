"""The Docker executor against the real Docker engine: environment images built
from pip/apt packages and cached, the run container's mounts, user, limits and
lifecycle, and the host's package settings reaching builds. The image cache's
own behaviour (keys, reuse, failures, listing, pruning) is tested in
tests/worker/test_docker_images.py.

Images go to a repository unique to the test session and are removed at its
end. The engine and the offline base image are required: without them these
tests fail, they are never skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import fields
from pathlib import Path

import docker
import pytest
from pip._internal.models.index import PyPI

from cast.protocol.messages import RunSpec
from cast.worker import known_images
from cast.worker.docker_images import DEFAULT_BASE_IMAGE, LABEL_WORK_DIR
from cast.worker.dockerenv import read_pip_config
from cast.worker.executors.base import BuildFailed, Job, PreparedMount
from cast.worker.executors import DOCKER_OPTIONS
from cast.worker.executors import make_executor as make_named_executor
from cast.worker.executors.docker import DockerExecutor, DockerOptions
from tests.conftest import REPO_ROOT, wait_until

PACKAGES = {"apt": ["jq"], "pip": ["six"], "pip_req": "tqdm\n"}


@pytest.fixture(scope="session")
def engine():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker tests need a Docker engine and none answers: {exc}")
    return client


@pytest.fixture(scope="session")
def base_image(engine) -> str:
    script = REPO_ROOT / "docker" / "build-base-image.sh"
    built = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.strip() == DEFAULT_BASE_IMAGE
    return DEFAULT_BASE_IMAGE


@pytest.fixture(scope="session")
def repository(engine, base_image):
    """A repository for this session's environment images, removed at the end."""
    name = f"cast-env-test-{uuid.uuid4().hex[:8]}"
    yield name
    for image in engine.images.list(name=name):
        engine.images.remove(image.id, force=True)


@pytest.fixture
def make_executor(tmp_path, repository):
    def make(work_dir: Path | None = None, **options) -> DockerExecutor:
        return DockerExecutor(work_dir or tmp_path / "worker", image_repository=repository, **options)

    return make


class Lines:
    """A build's LogSink (a line a call) and a command's LinesSink (a read's
    lines a call) alike, keeping (stream, text) in order."""

    def __init__(self):
        self.entries: list[tuple[str, str]] = []

    def __call__(self, stream: str, text: str | list[str]) -> None:
        self.entries.extend((stream, line) for line in ([text] if isinstance(text, str) else text))

    def of(self, stream: str) -> list[str]:
        return [text for s, text in self.entries if s == stream]


def make_job(tmp_path: Path, command: str, run_id: int = 1, mounts=(), **spec) -> Job:
    workdir = tmp_path / f"run{run_id}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    return Job(run_id=run_id, spec=RunSpec.from_dict({"command": command, **spec}), workdir=workdir,
               mounts=list(mounts), env={"CAST_RUN_ID": str(run_id)})


def finish(process):
    """Wait for the command, then release its container, as the agent does."""
    result = process.wait()
    process.release()
    return result


def run(executor: DockerExecutor, job: Job):
    lines = Lines()
    build = executor.build(job, lines)
    result = finish(executor.start(job, build, lines))
    return result, lines


@pytest.fixture(scope="session")
def packaged(tmp_path_factory, repository):
    """An environment with an apt package, a pip spec and a requirements file,
    built once for the session: (executor, first build's result, its log)."""
    executor = DockerExecutor(tmp_path_factory.mktemp("worker"), image_repository=repository)
    lines = Lines()
    job = make_job(tmp_path_factory.mktemp("jobs"), "true", **PACKAGES)
    build = executor.build(job, lines)
    return executor, build, lines


def test_pip_and_apt_packages_are_in_the_container(packaged, tmp_path):
    executor, build, build_log = packaged
    assert not build.cached
    assert any("apt-get install jq" in line for line in build_log.of("cast"))
    # With the worker's uv (its pinned dependency), from the worker's package cache.
    assert "==> pip: uv pip install six -r requirements.txt" in build_log.of("cast")
    assert any(line.startswith("Installed 2 packages in ") for line in build_log.of("cast"))
    job = make_job(tmp_path, "python -c 'import six, tqdm; print(\"six\", six.__version__)'; "
                             "echo '{\"a\": 41}' | jq .a", **PACKAGES)
    result, lines = run(executor, job)
    assert result.exit_code == 0, lines.entries
    assert lines.of("stdout")[0].startswith("six 1.")
    assert lines.of("stdout")[1] == "41"


def test_a_repeat_build_is_a_cache_hit_and_stamps_its_use(packaged, tmp_path, engine, monkeypatch):
    executor, first, _ = packaged
    before = {entry.key: entry.last_used for entry in executor.cache_entries()}[first.key]
    time.sleep(0.01)
    lines = Lines()
    # Stamped whenever its last stamp is STAMP_SECONDS old: here at once (a
    # repeat within them is not stamped again: test_docker_images).
    monkeypatch.setattr(known_images, "STAMP_SECONDS", 0.0)
    again = executor.build(make_job(tmp_path, "true", **PACKAGES), lines)
    assert again.cached and again.key == first.key
    assert lines.entries == []  # nothing built, nothing logged
    entry = {entry.key: entry for entry in executor.cache_entries()}[first.key]
    assert entry.last_used > before
    assert entry.holds == "base: cast-base:bookworm; apt: jq; pip: six; requirements file (1 line)"
    # The build's settings (pip.conf, index URLs) stayed out of the image.
    config = engine.api.inspect_image(first.description)["Config"]
    assert not [var for var in config["Env"] if var.startswith(("PIP_", "UV_", "SSL_CERT"))]


def test_mounts_are_read_only_and_leave_no_trace(packaged, tmp_path):
    executor, _, _ = packaged
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("from a folder\n")
    single = tmp_path / "single.txt"
    single.write_text("one file\n")
    single.chmod(0o666)  # so that only the read-only mount stops the write
    data.chmod(0o777)
    job = make_job(
        tmp_path,
        "cat in/a.txt deep/er/single.txt; echo x > in/b.txt; echo $?; echo x >> deep/er/single.txt; echo $?; "
        "echo kept > deep/beside.txt",
        mounts=[PreparedMount(data, "in"), PreparedMount(single, "deep/er/single.txt")], **PACKAGES,
    )
    result, lines = run(executor, job)
    assert result.exit_code == 0, lines.entries
    assert lines.of("stdout") == ["from a folder", "one file", "1", "1"]
    assert sum("Read-only file system" in line for line in lines.of("stderr")) == 2
    assert sorted(os.listdir(data)) == ["a.txt"] and single.read_text() == "one file\n"
    # The mount points are gone from the working directory; the run's file stays.
    assert sorted(str(p.relative_to(job.workdir)) for p in job.workdir.rglob("*")) == ["deep", "deep/beside.txt"]


def test_the_command_runs_unprivileged_with_the_job_env(packaged, tmp_path):
    executor, _, _ = packaged
    job = make_job(
        tmp_path,
        "id -u; pwd; echo $SEED $PYTHONUNBUFFERED $CAST_RUN_ID; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "test -e /var/run/docker.sock && echo SOCKET; touch ~/home-is-writable && echo home ok; echo made > out.txt",
        run_id=7, **PACKAGES,
    )
    job.env["SEED"] = "42"
    result, lines = run(executor, job)
    assert result.exit_code == 0, lines.entries
    stdout = lines.of("stdout")
    assert stdout[0] == "1000"  # not root
    assert stdout[1] == "/cast/work"
    assert stdout[2] == "42 1 7"
    assert stdout[3].split() == ["CapEff:", "0000000000000000"]
    assert stdout[4].split() == ["NoNewPrivs:", "1"]
    assert "SOCKET" not in stdout and "home ok" in stdout
    assert (job.workdir / "out.txt").read_text() == "made\n"


def test_output_is_streamed_live_and_split_by_stream(packaged, tmp_path):
    executor, _, _ = packaged
    # The command goes on only once the test has seen its first lines.
    job = make_job(tmp_path, "echo first; echo oops >&2; until [ -e go ]; do sleep 0.1; done; echo last", **PACKAGES)
    lines = Lines()
    process = executor.start(job, executor.build(job, lines), lines)
    wait_until(lambda: "first" in lines.of("stdout") and "oops" in lines.of("stderr"), timeout=120,
               what="the first lines while the command still runs")
    assert "last" not in lines.of("stdout")
    (job.workdir / "go").touch()
    assert finish(process).exit_code == 0
    assert lines.of("stdout") == ["first", "last"]


def test_a_real_tqdm_bar_of_100000_updates_becomes_a_few_lines_ending_in_its_last_state(packaged, tmp_path):
    executor, _, _ = packaged
    bar = "from tqdm import tqdm\nfor _ in tqdm(range(100000), mininterval=0, miniters=1, ascii=True): pass"
    job = make_job(tmp_path, f"python -c '{bar}'; echo after", **PACKAGES)
    result, lines = run(executor, job)
    assert result.exit_code == 0
    states = lines.of("stderr")
    # A state at most every 0.5 s (cast.worker.lines) and the final one, not 100,000 lines.
    assert 1 <= len(states) < 200, len(states)
    assert states[-1].startswith("100%|") and "100000/100000" in states[-1]
    assert all("\r" not in state for state in states)
    assert lines.of("stdout") == ["after"]


def test_running_past_the_memory_limit_fails_with_out_of_memory(make_executor, packaged, tmp_path):
    executor = make_executor(memory="64m")
    job = make_job(tmp_path, "python -c 'x = bytearray(256 * 1024 * 1024); print(len(x))'", **PACKAGES)
    result, lines = run(executor, job)
    assert result.exit_code == 137 and result.reason == "out of memory", (result, lines.entries)


def test_terminate_sends_sigterm_to_the_command(packaged, tmp_path):
    executor, _, _ = packaged
    job = make_job(tmp_path, "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 60 & wait", **PACKAGES)
    lines = Lines()
    process = executor.start(job, executor.build(job, lines), lines)
    wait_until(lambda: "ready" in lines.of("stdout"), timeout=120, what="the command to start")
    process.terminate(grace=120)
    result = finish(process)
    assert result.exit_code == 3 and "got TERM" in lines.of("stdout")  # the trap's: not killed after the grace


def test_terminate_kills_after_the_grace_and_kill_is_at_once(packaged, tmp_path, engine):
    executor, _, _ = packaged
    stubborn = make_job(tmp_path, "trap '' TERM; echo ready; while true; do sleep 0.1; done", run_id=11, **PACKAGES)
    lines = Lines()
    process = executor.start(stubborn, executor.build(stubborn, lines), lines)
    wait_until(lambda: "ready" in lines.of("stdout"), timeout=120, what="the command to start")
    started = time.monotonic()
    process.terminate(grace=1.0)
    result = finish(process)
    assert time.monotonic() - started >= 1.0, "killed, but only after the grace"
    assert (result.exit_code, result.reason) == (137, "ended by SIGKILL")

    sleeper = make_job(tmp_path, "echo ready; sleep 3600", run_id=12, **PACKAGES)  # ends only when killed
    lines = Lines()
    process = executor.start(sleeper, executor.build(sleeper, lines), lines)
    wait_until(lambda: "ready" in lines.of("stdout"), timeout=120, what="the command to start")
    process.kill()
    assert process.wait().exit_code == 137
    # A container is removed when the agent releases it, after the run's final status.
    by_dir = {"label": f"{LABEL_WORK_DIR}={executor.work_dir}"}
    assert [c.id for c in engine.containers.list(all=True, filters=by_dir)] == [process.container.id]
    process.release()
    assert engine.containers.list(all=True, filters=by_dir) == []


def test_auto_uses_docker_only_where_the_base_image_is_there(tmp_path, engine, base_image):
    assert make_named_executor("auto", tmp_path / "with", base_image=base_image).name == "docker"
    missing = f"cast-base:missing-{uuid.uuid4().hex[:8]}"
    assert make_named_executor("auto", tmp_path / "without", base_image=missing).name == "local"
    assert make_named_executor("docker", tmp_path / "asked", base_image=missing).name == "docker"


def test_a_run_s_docker_image_is_its_base(make_executor, tmp_path, engine, base_image):
    other = f"cast-test-base-{uuid.uuid4().hex[:6]}:1"
    engine.images.get(base_image).tag(other)
    try:
        executor = make_executor()
        job = make_job(tmp_path, "id -un", docker_image=other)
        result, lines = run(executor, job)
        assert result.exit_code == 0 and lines.of("stdout") == ["cast"], lines.entries
        assert f"base: {other}" in [entry.holds for entry in executor.cache_entries()]
    finally:
        engine.images.remove(other)


def test_a_run_whose_environment_image_went_after_its_build_is_built_again(make_executor, tmp_path, engine):
    executor = make_executor()
    job = make_job(tmp_path, "echo here")
    build = executor.build(job, Lines())
    engine.images.remove(build.description)  # as a prune by another process would, before the start
    lines = Lines()
    result = finish(executor.start(job, build, lines))
    assert result.exit_code == 0 and lines.of("stdout") == ["here"], lines.entries
    assert lines.of("cast")[0].startswith(f"Building environment {build.description} ")
    engine.api.inspect_image(build.description)  # made again


def _host_network_index() -> str:
    """The network package index of the host's pip settings: its index-url, else
    its first http(s) extra index, else the index pip itself defaults to."""
    pip = read_pip_config()
    for url in (pip.get("index-url", ""), *pip.get("extra-index-url", "").split()):
        if url.startswith(("http://", "https://")):
            return url.rstrip("/")
    if pip.get("index-url") or pip.get("no-index"):
        pytest.fail(f"the host's pip settings name no network index: {pip}")
    return PyPI.simple_url


def _container_needs_the_host_ca(engine, base_image, index: str) -> bool:
    """Whether a container reaches the package index only through a proxy whose
    CA the image's own bundle lacks (as on the machines cast is developed on)."""
    probe = ("import ssl, sys, urllib.error, urllib.request\n"
             f"try:\n urllib.request.urlopen({index + '/six/'!r}, timeout=30)\n"
             "except urllib.error.URLError as e:\n sys.exit(3 if isinstance(e.reason, ssl.SSLError) else 4)\n")
    try:
        engine.containers.run(base_image, ["python3", "-c", probe], remove=True)
    except docker.errors.ContainerError as exc:
        assert exc.exit_status == 3, f"{index} is not reachable from a container: exit {exc.exit_status}"
        return True
    return False


# What each installer says when it cannot verify the index, and once it installed six.
_UNVERIFIED = {"pip": "CERTIFICATE_VERIFY_FAILED", "uv": "invalid peer certificate"}
_INSTALLED = {"pip": "Downloading six-1.17.0", "uv": "+ six==1.17.0"}


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_the_host_pip_ca_bundle_reaches_the_build(make_executor, tmp_path, monkeypatch, engine, base_image, installer):
    """Only the host's network index, through the network: the host's CA bundle
    is what lets pip (or uv) verify it behind a TLS-intercepting proxy."""
    monkeypatch.setenv("CAST_WORKER_INSTALLER", installer)
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    index = _host_network_index()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index folders, no find-links
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv("PIP_RETRIES", "0")
    spec = {"pip": ["six==1.17.0"]}
    if _container_needs_the_host_ca(engine, base_image, index):
        lines = Lines()
        with pytest.raises(BuildFailed, match="pip step failed"):
            make_executor(tmp_path / "no-ca").build(make_job(tmp_path, "true", **spec), lines)
        assert any(_UNVERIFIED[installer] in text for _, text in lines.entries), lines.entries
    monkeypatch.setenv("PIP_CERT", bundle)
    executor = make_executor(tmp_path / "with-ca")
    assert executor.images.host_settings.pip["cert"] == bundle
    lines = Lines()
    build = executor.build(make_job(tmp_path, "true", **spec), lines)
    assert not build.cached
    assert any(text.strip().startswith(_INSTALLED[installer]) for _, text in lines.entries), lines.entries
    result, run_lines = run(executor, make_job(tmp_path, "python -c 'import six; print(six.__version__)'", **spec))
    assert run_lines.of("stdout") == ["1.17.0"]


def test_cleanup_stale_removes_containers_of_the_same_work_dir(make_executor, packaged, tmp_path, engine):
    mine, other = make_executor(tmp_path / "mine"), make_executor(tmp_path / "other")
    processes = []
    for executor in (mine, other):
        job = make_job(tmp_path, "sleep 60", **PACKAGES)
        processes.append(executor.start(job, executor.build(job, Lines()), Lines()))
    successor = make_executor(tmp_path / "mine")  # a new worker on the crashed one's work dir
    successor.cleanup_stale()
    by_dir = lambda executor: engine.containers.list(  # noqa: E731
        all=True, filters={"label": f"{LABEL_WORK_DIR}={executor.work_dir}"})
    assert by_dir(mine) == []
    assert len(by_dir(other)) == 1
    processes[1].kill()
    finish(processes[1])
    assert by_dir(other) == []


def test_container_settings_give_a_run_its_own_gpus_and_limits(make_executor, tmp_path):
    executor = make_executor(memory="2g", cpus=1.5, pids_limit=256)
    job = make_job(tmp_path, "nvidia-smi", machine_type="gpu:2")
    job.gpus = [1, 3]
    job.env["CUDA_VISIBLE_DEVICES"] = "1,3"  # host numbering; inside the container they are 0 and 1
    settings = executor.container_settings(job, "image")
    [request] = settings["device_requests"]
    assert request["DeviceIDs"] == ["1", "3"] and request["Capabilities"] == [["gpu"]]
    assert "CUDA_VISIBLE_DEVICES" not in settings["environment"]
    assert (settings["mem_limit"], settings["nano_cpus"], settings["pids_limit"]) == (2 << 30, 1_500_000_000, 256)
    assert settings["network_mode"] == "bridge" and settings["cap_drop"] == ["ALL"]
    assert "privileged" not in settings
    defaults = make_executor().limits("cpu")
    assert defaults["memory"] == int(executor.engine_memory * 0.9) and defaults["cpus"] == executor.engine_cpus


@pytest.mark.parametrize("flags, message", [
    (["--executor", "local", "--memory", "8g", "--network", "none"],
     "--memory, --network: only for the docker executor, not --executor local"),
    (["--executor", "docker", "--cpus", "-1"], "docker executor option cpus (--cpus or CAST_WORKER_CPUS) cannot be '-1'"),
    (["--executor", "auto", "--pids-limit", "0"],  # a bad setting is not hidden by falling back to local
     "docker executor option pids-limit (--pids-limit or CAST_WORKER_PIDS_LIMIT) cannot be '0'"),
    (["--executor", "docker", "--memory", "lots"],
     "docker executor option memory (--memory or CAST_WORKER_MEMORY) cannot be 'lots'"),
])
def test_the_worker_flags_are_the_options_and_bad_values_are_one_line(tmp_path, engine, flags, message):
    assert DOCKER_OPTIONS == tuple(option.name for option in fields(DockerOptions))
    token = tmp_path / "token"
    token.write_text("unused")
    result = subprocess.run([sys.executable, "-m", "cast.worker", "--server", "http://127.0.0.1:9",
                             "--token-file", str(token), "--work-dir", str(tmp_path / "worker"), *flags],
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("CAST_")})
    assert (result.returncode, result.stderr.strip()) == (2, f"cast worker: {message}")


def test_the_command_starts_in_the_spec_workdir_of_its_checkout(make_executor, tmp_path):
    job = make_job(tmp_path, "pwd; cat ../top.txt; echo made > here.txt", workdir="sub/deep")
    (job.workdir / "sub" / "deep").mkdir(parents=True)
    (job.workdir / "sub" / "top.txt").write_text("top\n")
    result, lines = run(make_executor(), job)
    assert result.exit_code == 0, lines.entries
    assert lines.of("stdout") == ["/cast/work/sub/deep", "top"]
    assert (job.workdir / "sub" / "deep" / "here.txt").read_text() == "made\n"
