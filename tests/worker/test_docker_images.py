"""cast.worker.docker_images: what an environment image holds and its key, the
build script, the splitting of a container's output into lines, and the image
cache on the real Docker engine (builds, reuse, failures, listing, pruning).

The engine and the offline base image are required, as in the Docker
executor's tests whose session fixtures these share; images go to a repository
unique to the test and are removed after it.
"""

from __future__ import annotations

import filecmp
import io

import subprocess
import sys
import threading
import time
import uuid

import pytest

from cast.protocol.messages import LogStream, RunSpec
from cast.worker.docker_images import (BUILD_RECIPE, DEFAULT_BASE_IMAGE, LABEL_HOLDS, LABEL_KEY, LABEL_RUN_ID,
                                       LABEL_WORK_DIR, EnvironmentSpec, ImageCache, _timestamp,
                                       pump_output)
from cast.worker.dockerenv import HostPackageSettings
from cast.worker.executors.base import BuildFailed, BuildResult, InvalidExecutorOption
from cast.worker.installer import choose_installer
from tests.worker.executors.test_docker import base_image, engine  # noqa: F401  (session fixtures)
from tests.worker.pipconfig import EXPECTED, PACKAGES, PROBE, host_pip_config  # noqa: F401  (fixture)

UV = choose_installer("uv")  # the worker's pinned dependency
PIP = choose_installer("pip")


def spec(**fields) -> RunSpec:
    return RunSpec.from_dict({"command": "true", **fields})


# --- what an environment holds ---------------------------------------------

def test_the_spec_is_sorted_deduplicated_and_based_on_the_runs_image_or_the_default():
    env = EnvironmentSpec.of(spec(apt=["jq", "curl", "jq"], pip=["six", "attrs", "six"]), "base:1")
    assert (env.base_image, env.apt, env.pip, env.pip_req) == ("base:1", ("curl", "jq"), ("attrs", "six"), "")
    assert EnvironmentSpec.of(spec(docker_image="mine:2"), "base:1").base_image == "mine:2"


@pytest.mark.parametrize("fields", [{"pip": ["--index-url=http://evil"]}, {"apt": ["jq; rm -rf /"]}])
def test_a_package_that_is_not_one_fails_the_build(fields):
    with pytest.raises(BuildFailed):
        EnvironmentSpec.of(spec(**fields), "base:1")


def test_the_key_depends_on_the_content_not_its_order():
    one = EnvironmentSpec.of(spec(pip=["six", "attrs"], apt=["jq"]), "base:1")
    same = EnvironmentSpec.of(spec(pip=["attrs", "six"], apt=["jq"]), "base:1")
    assert one.key("sha256:a") == same.key("sha256:a")
    assert len(one.key("sha256:a")) == 24
    others = [one.key("sha256:b"),  # the base image was rebuilt
              EnvironmentSpec.of(spec(pip=["six"], apt=["jq"]), "base:1").key("sha256:a"),
              EnvironmentSpec.of(spec(pip=["six", "attrs"]), "base:1").key("sha256:a"),
              EnvironmentSpec.of(spec(pip=["six", "attrs"], apt=["jq"], pip_req="tqdm\n"), "base:1").key("sha256:a")]
    assert len({one.key("sha256:a"), *others}) == 5


def test_the_key_changes_with_the_build_recipe(monkeypatch):
    env = EnvironmentSpec.of(spec(pip=["six"]), "base:1")
    before = env.key("sha256:a")
    monkeypatch.setattr("cast.worker.docker_images.BUILD_RECIPE", BUILD_RECIPE + "-next")
    assert env.key("sha256:a") != before


def test_holds_names_the_base_packages_and_counts_requirement_lines():
    assert EnvironmentSpec.of(spec(), "base:1").holds() == "base: base:1"
    env = EnvironmentSpec.of(spec(apt=["jq"], pip=["six"], pip_req="# pinned\ntqdm\n\n  attrs\n"), "base:1")
    assert env.holds() == "base: base:1; apt: jq; pip: six; requirements file (2 lines)"
    assert EnvironmentSpec.of(spec(pip_req="tqdm"), "b").holds() == "base: b; requirements file (1 line)"
    assert env.summary() == "base image base:1; apt: 1 package; pip: 1 package, requirements file (2 lines)"
    assert env.summary("with uv") == ("base image base:1; apt: 1 package; pip: 1 package, requirements file (2 lines), "
                                      "with uv")
    assert EnvironmentSpec.of(spec(), "b").summary("with uv") == "base image b"  # nothing for pip to install


def test_the_build_script_runs_only_the_steps_it_needs_and_is_valid_shell():
    bare = EnvironmentSpec.of(spec(), "b").build_script(preamble="export A=1")
    assert bare.startswith("set -eu\nexport A=1\n") and "apt-get" not in bare and "pip install" not in bare
    full = EnvironmentSpec.of(spec(apt=["jq"], pip=["six>=1.0"], pip_req="tqdm\n"), "b").build_script(preamble=":")
    steps = [line for line in full.splitlines() if line.startswith('echo "==> ')]
    assert [step.split(":")[0] for step in steps] == ['echo "==> setup', 'echo "==> apt', 'echo "==> pip']
    assert "apt-get install -y -q --no-install-recommends jq" in full
    assert "python3 -m pip install 'six>=1.0' -r /cast/host/build/requirements.txt" in full
    only_requirements = EnvironmentSpec.of(spec(pip_req="tqdm\n"), "b").build_script(preamble=":")
    assert 'echo "==> pip: pip install -r requirements.txt"' in only_requirements
    assert "python3 -m pip install -r /cast/host/build/requirements.txt" in only_requirements
    assert "install  " not in only_requirements + full
    settings = HostPackageSettings(pip={"constraint": "/etc/hostname", "timeout": "30"}).build_inputs().uv
    with_uv = EnvironmentSpec.of(spec(pip=["six>=1.0"], pip_req="tqdm\n"), "b").build_script(preamble=":", uv=settings)
    # uv from the worker's cache, with the host's settings; pip where uv cannot run in the image.
    assert ("/cast/host/uv pip install --system --break-system-packages --config-file /cast/host/build/uv.toml "
            "--cache-dir /cast/host/uv-cache --link-mode copy --constraints /cast/host/0-hostname "
            "'six>=1.0' -r /cast/host/build/requirements.txt") in with_uv
    assert "export UV_HTTP_TIMEOUT=30 NO_COLOR=1" in with_uv
    assert 'echo "==> pip: pip install \'six>=1.0\' -r requirements.txt (uv cannot run in this image)"' in with_uv
    # Extending an image built with the same apt packages: no apt step, uv from the cache first.
    extending = EnvironmentSpec.of(spec(apt=["jq"], pip_req="tqdm\n"), "b").build_script(preamble=":", uv=settings,
                                                                                      extending=True)
    assert "apt-get" not in extending and "--offline --link-mode copy" in extending
    assert 'echo "Not all of it is in the package cache: asking the package indexes"' in extending
    for script in (bare, full, with_uv, extending):
        checked = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr


# --- output into lines (cast.worker.lines reads them: tests/worker/test_lines.py) ----

def test_pump_output_keeps_the_two_streams_apart():
    out: list[str] = []
    err: list[str] = []
    pump_output(iter([(b"a\nb", None), (None, b"oops"), (b"c\n", b"!\n")]), out.extend, err.extend)
    assert out == ["a", "bc"] and err == ["oops!"]


def test_docker_times_with_nanoseconds_read_as_unix_time():
    assert _timestamp("2024-01-02T03:04:05Z") == 1704164645.0
    assert _timestamp("2024-01-02T03:04:05.123456789Z") == pytest.approx(1704164645.123456)


# --- the image cache on the engine ------------------------------------------

class Log:
    """A LogSink keeping every line; the image cache logs only to LogStream.CAST."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, stream: LogStream, text: str) -> None:
        assert stream == LogStream.CAST
        self.lines.append(text)


@pytest.fixture
def make_cache(engine, base_image, tmp_path):  # noqa: F811
    """ImageCache factory on a repository of this test's own, removed after it."""
    repositories, caches = [], []

    def make(work_dir=None, *, base=base_image, installer=None) -> ImageCache:
        repository = f"cast-env-images-{uuid.uuid4().hex[:8]}"
        repositories.append(repository)
        caches.append(ImageCache(engine, work_dir or tmp_path / "worker", base_image=base, repository=repository,
                                 network="bridge", installer=installer))
        return caches[-1]

    yield make
    for cache in caches:
        cache.known.close()
    for repository in repositories:
        # A layered environment is a child of the one it extends: the engine refuses to
        # remove a parent first, so the images with the most layers go first.
        images = engine.images.list(name=repository)
        for image in sorted(images, key=lambda i: len(i.attrs["RootFS"]["Layers"]), reverse=True):
            engine.images.remove(image.id, force=True)


def test_an_image_is_built_once_then_reused_and_holds_its_labels(make_cache, engine, tmp_path):
    cache = make_cache()
    log = Log()
    first = cache.ensure(spec(), 5, log)
    assert not first.cached
    assert first.description == f"{cache.repository}:{cache.owner}-{first.key}"
    assert log.lines[0] == f"Building environment {first.description} (base image {DEFAULT_BASE_IMAGE})"
    config = engine.api.inspect_image(first.description)["Config"]
    assert config["WorkingDir"] == "/cast/work"
    assert (config["Labels"][LABEL_KEY], config["Labels"][LABEL_HOLDS]) == (first.key, f"base: {DEFAULT_BASE_IMAGE}")
    again = Log()
    assert cache.ensure(spec(), 6, again) == BuildResult(key=first.key, cached=True, description=first.description)
    assert again.lines == []
    # The build container is gone and so is its scratch folder.
    by_run = {"label": [f"{LABEL_WORK_DIR}={cache.work_dir}", f"{LABEL_RUN_ID}=5"]}
    assert engine.containers.list(all=True, filters=by_run) == []
    assert list((cache.work_dir / "docker-scratch").iterdir()) == []


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang: an event arrives in milliseconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


class Calls:
    """Counts the engine calls a cached environment used to make."""

    def __init__(self, engine, monkeypatch):
        self.names: list[str] = []
        for name in ("inspect_image", "tag"):
            real = getattr(engine.api, name)
            monkeypatch.setattr(engine.api, name, self._counting(name, real))

    def _counting(self, name, real):
        def call(*args, **kwargs):
            self.names.append(name)
            return real(*args, **kwargs)
        return call


def test_a_warm_environment_costs_no_engine_call_until_the_engine_says_its_images_changed(
        make_cache, engine, base_image, monkeypatch):  # noqa: F811
    base = f"cast-test-base-{uuid.uuid4().hex[:8]}:1"  # a base of this test's own, to be rebuilt under its name
    engine.api.tag(base_image, *base.split(":"))
    rebuilt, cache = None, make_cache(base=base)
    try:
        first = cache.ensure(spec(), 1, Log())
        _until(lambda: cache.known.live, "the cache hears the engine's image events")
        assert cache.ensure(spec(), 2, Log()).cached  # learns the base's id and stamps the tag
        calls = Calls(engine, monkeypatch)
        for run_id in (3, 4):
            again = cache.ensure(spec(), run_id, Log())
            assert (again.cached, again.key) == (True, first.key)
        assert calls.names == []

        # The base rebuilt under its name: the next run's environment is one of the new base.
        rebuilt, _ = engine.images.build(fileobj=io.BytesIO(f"FROM {base_image}\nLABEL cast.test={uuid.uuid4().hex}\n"
                                                             .encode()), rm=True)
        engine.api.tag(rebuilt.id, *base.split(":"))
        _until(lambda: cache.known.base_id(base) is None, "the tag event is heard")
        log = Log()
        second = cache.ensure(spec(), 5, log)
        assert not second.cached and second.key != first.key
        assert log.lines[0].startswith("Building environment")
        assert calls.names[0] == "inspect_image"

        # The environment removed behind the cache's back: built again, not assumed.
        assert cache.ensure(spec(), 6, Log()).cached
        engine.images.remove(second.description)
        _until(lambda: not cache.known.stamped(second.description), "the removal is heard")
        assert not cache.ensure(spec(), 7, Log()).cached
    finally:
        for image in engine.images.list(name=cache.repository):  # the children of `rebuilt` first
            engine.images.remove(image.id, force=True)
        engine.images.remove(base)
        if rebuilt is not None and engine.images.list(filters={"dangling": True}, all=True).count(rebuilt):
            engine.images.remove(rebuilt.id, force=True)


def test_has_base_image_says_whether_the_base_is_here(make_cache):
    assert make_cache().has_base_image()
    assert not make_cache(base=f"cast-base:missing-{uuid.uuid4().hex[:8]}").has_base_image()


def test_remove_scratch_takes_what_a_dead_build_left(make_cache):
    cache = make_cache()
    leftover = cache.work_dir / "docker-scratch" / "build-x-1" / "build.sh"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("echo half made\n")
    cache.remove_scratch()
    assert not (cache.work_dir / "docker-scratch").exists()


def test_a_failing_build_reports_the_step_and_hides_secrets(make_cache, monkeypatch, engine):  # noqa: F811
    # An extra index with a password in its URL (unreachable: port 9 in the container).
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://cast:s3cret-token@127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    cache = make_cache(installer=PIP)  # reads the host's settings now
    log = Log()
    with pytest.raises(BuildFailed) as failure:
        cache.ensure(spec(pip=["cast-no-such-package-4f1c"]), 1, log)
    message = str(failure.value)
    assert message.startswith("pip step failed (exit 1): ")
    # pip's own last error lines, bounded; the rest of its output is in the log only.
    assert message.endswith("ERROR: No matching distribution found for cast-no-such-package-4f1c")
    assert len(message) < 500 and all(part.startswith("ERROR:") for part in message.split(": ", 1)[1].split(" | "))
    assert log.lines.index(next(line for line in log.lines if line.startswith("Building environment"))) == 0
    logged = "\n".join(log.lines)
    assert "127.0.0.1:9" in logged  # the setting reached the build…
    assert "s3cret-token" not in logged + message  # …and its secret did not reach the log
    assert not [entry for entry in cache.entries() if "cast-no-such" in entry.holds]
    assert engine.containers.list(all=True, filters={"label": f"{LABEL_WORK_DIR}={cache.work_dir}"}) == []


def test_a_failing_uv_build_gives_uvs_error_lines_and_hides_secrets(make_cache, monkeypatch, engine):  # noqa: F811
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://cast:s3cret-token@127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    cache = make_cache(installer=UV)
    log = Log()
    with pytest.raises(BuildFailed) as failure:
        cache.ensure(spec(pip=["cast-no-such-package-4f1c"]), 1, log)
    message = str(failure.value)
    # uv's error, then its innermost causes.
    assert message.startswith("pip step failed (exit 2): error: ") and len(message) < 500
    assert message.endswith("Connection refused (os error 111)")
    assert log.lines[0].endswith("(base image cast-base:bookworm; pip: 1 package, with uv)")
    logged = "\n".join(log.lines)
    assert "==> pip: uv pip install cast-no-such-package-4f1c" in logged
    assert "127.0.0.1:9" in logged + message  # the setting reached uv…
    assert "s3cret-token" not in logged + message  # …and its secret did not reach the log
    assert engine.containers.list(all=True, filters={"label": f"{LABEL_WORK_DIR}={cache.work_dir}"}) == []


def test_a_uv_build_honours_the_hosts_pip_settings_and_shares_its_cache(make_cache, host_pip_config, engine):  # noqa: F811
    cache = make_cache(installer=UV)  # reads this test's pip settings
    first_log, second_log = Log(), Log()
    first = cache.ensure(spec(pip_req="cast-probe\n"), 1, first_log)
    built = cache.ensure(spec(pip_req="cast-probe\ncast-probe-index\n"), 2, second_log)  # one line added
    assert second_log.lines[0] == (f"Building environment {built.description} (base image {DEFAULT_BASE_IMAGE}; "
                                   "pip: requirements file (2 lines), with uv)")
    # Built on the first image, which it extends: its layers are the first's and one more.
    assert second_log.lines[1] == f"Starting from environment {first.description}, which holds some of it"
    layers = [engine.api.inspect_image(b.description)["RootFS"]["Layers"] for b in (first, built)]
    assert layers[1][:-1] == layers[0]
    # From the package cache alone: the indexes were not asked again.
    assert "Not all of it is in the package cache: asking the package indexes" not in second_log.lines
    # The worker's cache already held cast-probe: only the added line's package was fetched.
    assert any(line.startswith("Prepared 1 package in ") for line in second_log.lines), second_log.lines
    assert any(path.is_file() for path in (cache.work_dir / "uv-cache").rglob("*"))
    probe = engine.containers.run(built.description, ["python3", "-c", PROBE], remove=True)
    # 1.0 of cast-probe although 2.0 lies beside it: the constraint held (and the index and find-links were read).
    assert probe.decode().split() == [EXPECTED["cast_probe"], EXPECTED["cast_probe_index"]]
    # Neither the worker's uv nor its cache was committed into the image.
    left = engine.containers.run(built.description, ["sh", "-c", "ls -A /cast/host 2>/dev/null; true"], remove=True)
    assert left.decode().split() == []
    # The engine was handed uv from the worker's work dir, the one path a worker in a
    # container shares with it (docker/compose.yaml); copied once, not per build.
    copied = cache.work_dir / "bin" / "uv"
    assert filecmp.cmp(copied, UV.uv, shallow=False)
    inode = copied.stat().st_ino
    assert cache._uv_in_work_dir(UV.uv) == str(copied) and copied.stat().st_ino == inode


def test_without_uv_a_docker_build_uses_pip_and_says_so(make_cache, host_pip_config, monkeypatch, engine):  # noqa: F811
    monkeypatch.setitem(sys.modules, "uv", None)  # the worker's uv package cannot be imported…
    monkeypatch.setenv("PATH", "/nonexistent")  # …and there is none on PATH
    cache = make_cache()
    log = Log()
    built = cache.ensure(spec(pip=PACKAGES), 1, log)
    assert log.lines[0].endswith("pip: 2 packages, with pip (uv not found))")
    assert "==> pip: pip install cast-probe cast-probe-index" in log.lines
    probe = engine.containers.run(built.description, ["python3", "-c", PROBE], remove=True)
    assert probe.decode().split() == [EXPECTED["cast_probe"], EXPECTED["cast_probe_index"]]
    monkeypatch.setenv("CAST_WORKER_INSTALLER", "uv")
    with pytest.raises(InvalidExecutorOption, match="uv is not installed on this worker"):
        make_cache()


def test_a_missing_docker_image_fails_the_build_clearly(make_cache):
    with pytest.raises(BuildFailed, match="docker image cast-test-absent:1 is not on this worker and cannot be pulled"):
        make_cache().ensure(spec(docker_image="cast-test-absent:1"), 1, Log())


def test_concurrent_builds_of_a_new_environment_build_once(make_cache):
    cache = make_cache()
    barrier = threading.Barrier(2)
    results, logs = [], []

    def build() -> None:
        log = Log()
        barrier.wait()
        results.append(cache.ensure(spec(pip=["six"]), 1, log))
        logs.append(log)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(result.cached for result in results) == [False, True]
    assert len({result.key for result in results}) == 1
    assert sum(any(text.startswith("Building environment") for text in log.lines) for log in logs) == 1


def test_cache_entries_and_prune(make_cache):
    cache = make_cache()
    first = cache.ensure(spec(), 1, Log())
    assert not first.cached
    [entry] = cache.entries()
    assert entry.key == first.key and entry.holds == f"base: {DEFAULT_BASE_IMAGE}"
    assert entry.size > 0 and abs(entry.last_used - time.time()) < 120
    assert cache.prune(older_than=3600, everything=False) == []
    assert cache.prune(older_than=None, everything=True) == [entry]
    assert cache.entries() == []
    assert not cache.ensure(spec(), 1, Log()).cached


def test_two_homes_on_one_engine_see_and_prune_only_their_own_images(engine, base_image, tmp_path):  # noqa: F811
    repository = f"cast-env-shared-{uuid.uuid4().hex[:8]}"
    ours, theirs = (ImageCache(engine, tmp_path / home / "worker", base_image=base_image, repository=repository,
                               network="bridge") for home in ("ours", "theirs"))
    try:
        assert ours.owner != theirs.owner
        assert ImageCache(engine, tmp_path / "ours" / "worker", base_image=base_image, repository=repository,
                          network="bridge").owner == ours.owner  # stable: kept in the work dir
        mine = ours.ensure(spec(pip=["six"]), 1, Log())
        same_content = theirs.ensure(spec(pip=["six"]), 2, Log())
        assert not same_content.cached  # never reuses an image another home owns
        other = theirs.ensure(spec(), 3, Log())
        assert [e.key for e in ours.entries()] == [mine.key]
        assert sorted(e.key for e in theirs.entries()) == sorted([same_content.key, other.key])

        assert [e.key for e in ours.prune(older_than=None, everything=True)] == [mine.key]
        assert ours.entries() == []
        assert sorted(e.key for e in theirs.entries()) == sorted([same_content.key, other.key])
        engine.api.inspect_image(same_content.description)  # still there
    finally:
        for image in engine.images.list(name=repository):
            engine.images.remove(image.id, force=True)
