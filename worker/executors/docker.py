"""The Docker executor: each run in its own container, from an environment
image built for the run's packages and cached by content hash.

Owns:
- environment images: a base image (the worker's, or the run's
  `docker_image`) plus the run's `apt` packages, `pip` specs and `pip_req`
  file, tagged `<repository>:<key>` where the key hashes all of them (and the
  base image's id, and this file's build recipe). An image is built by running
  a container from the base that executes a generated script, then committing
  it; the script and the host's package settings (cast.worker.dockerenv)
  reach the container as read-only mounts under a tmpfs, so no secret and no
  host folder ends up in the image. An existing tag is reused and re-tagged,
  which stamps its last use (`LastTagTime`); one build per key at a time;
- run containers: `/cast/work` is the run's host working directory, the
  mounts are read-only bind mounts inside it, the command runs with bash under
  docker-init as a non-root user, with memory, CPU and pids limits, no
  capabilities, no new privileges, and only the run's GPUs;
- their lifecycle: output streamed live as lines, the exit code and an
  out-of-memory end as soon as the engine reports them, stop (SIGTERM to the
  command's process group, SIGKILL after the grace), kill, removal (after
  the run's final status is reported: `release`), and
  removal of what a crashed earlier worker of the same work dir left behind;
  a run that stays at its pids limit (a fork bomb) is killed with that reason;
- the image cache listing and pruning.

Every option is a keyword argument of DockerExecutor and a `CAST_WORKER_*`
variable (see DockerOptions).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, LogConfig, Mount
from requests.exceptions import RequestException

from cast.protocol.units import parse_size
from cast.protocol.messages import RunSpec
from cast.protocol.validate import SpecError, parse_machine_type, validate_apt_package, validate_pip_spec
from cast.worker.dockerenv import HOST_INPUTS, HostPackageSettings
from cast.worker.executors.base import (
    BuildFailed,
    BuildResult,
    CacheEntry,
    Executor,
    ExecutorUnavailable,
    ExitResult,
    InvalidExecutorOption,
    Job,
    LogSink,
    RunningProcess,
)
from cast.worker.locking import file_lock
from cast.worker.resources import detect_gpus

DEFAULT_BASE_IMAGE = "cast-base:bookworm"
CONTAINER_WORKDIR = "/cast/work"
CONTAINER_HOME = "/cast/home"
RUN_UID = 1000  # the user commands run as when the worker itself is root
# Bump when the build script changes what an image holds, so old keys miss.
BUILD_RECIPE = "1"

LABEL_KEY = "cast.env.key"
LABEL_HOLDS = "cast.env.holds"
LABEL_WORK_DIR = "cast.work_dir"
LABEL_RUN_ID = "cast.run_id"
LABEL_ROLE = "cast.role"

_SIGNAL_NAMES = {sig.value: sig.name for sig in signal.Signals}
_STEP_MARK = "==> "  # lines of the build script that start a step
_FAILURE_LINES = 3
_MAX_PARTIAL_LINE = 64 * 1024
PIDS_CHECK_INTERVAL = 1.0  # seconds between looks at a run's process count
PIDS_CHECKS_AT_LIMIT = 2  # looks in a row at the limit before the run is killed


@dataclass(frozen=True)
class DockerOptions:
    """The worker's settings for its containers. Each is a keyword argument of
    DockerExecutor or, when that is None, the variable `CAST_WORKER_<NAME>`."""

    base_image: str = DEFAULT_BASE_IMAGE  # base of runs without --docker-image
    memory: str | None = None  # per-run limit, e.g. "8g"; default: from the machine type
    cpus: float | None = None  # per-run limit; default: from the machine type
    pids_limit: int = 4096
    network: str = "bridge"  # for runs and builds; "host" only if set explicitly
    image_repository: str = "cast-env"  # environment images are <repository>:<key>

    @classmethod
    def resolve(cls, **given) -> "DockerOptions":
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidExecutorOption(f"unknown docker executor option(s): {', '.join(sorted(unknown))}")
        values = {}
        for option in fields(cls):
            value = given.get(option.name)
            if value is None:
                value = os.environ.get(f"CAST_WORKER_{option.name.upper()}") or None
            if value is None:
                continue
            given_as = value
            try:
                if option.name == "cpus":
                    value = float(value)
                    if not 0 < value < float("inf"):
                        raise ValueError
                elif option.name == "pids_limit":
                    value = int(value)
                    if value < 1:
                        raise ValueError
                elif option.name == "memory" and parse_size(value) < 1:  # refused when the worker starts
                    raise ValueError
            except ValueError:
                name = option.name.replace("_", "-")
                raise InvalidExecutorOption(
                    f"docker executor option {name} (--{name} or CAST_WORKER_{option.name.upper()}) "
                    f"cannot be {given_as!r}") from None
            values[option.name] = value
        return cls(**values)


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment image holds."""

    base_image: str
    apt: tuple[str, ...]
    pip: tuple[str, ...]
    pip_req: str

    @classmethod
    def of(cls, spec: RunSpec, default_base: str) -> "EnvironmentSpec":
        try:
            apt = tuple(sorted({validate_apt_package(p) for p in spec.apt}))
            pip = tuple(sorted({validate_pip_spec(p) for p in spec.pip}))
        except SpecError as exc:
            raise BuildFailed(str(exc)) from None
        return cls(spec.docker_image or default_base, apt, pip, spec.pip_req or "")

    def key(self, base_image_id: str) -> str:
        content = json.dumps(
            {"recipe": BUILD_RECIPE, "base": base_image_id, "apt": self.apt, "pip": self.pip,
             "pip_req": self.pip_req},
            sort_keys=True,
        )
        return hashlib.sha256(content.encode()).hexdigest()[:24]

    def holds(self) -> str:
        parts = [f"base: {self.base_image}"]
        if self.apt:
            parts.append("apt: " + " ".join(self.apt))
        if self.pip:
            parts.append("pip: " + " ".join(self.pip))
        if self.pip_req:
            count = sum(1 for line in self.pip_req.splitlines() if line.strip() and not line.lstrip().startswith("#"))
            parts.append(f"pip-req: {count} line{'s' if count != 1 else ''}")
        return "; ".join(parts)

    def build_script(self, *, preamble: str) -> str:
        """The shell script a build container runs; each step announces itself."""
        uid, gid = RUN_UID, RUN_UID
        lines = [
            "set -eu",
            preamble,
            f'echo "{_STEP_MARK}setup: user {uid} and {CONTAINER_WORKDIR}"',
            f"mkdir -p {CONTAINER_WORKDIR} {CONTAINER_HOME} && chmod 1777 {CONTAINER_HOME}",
            f"if ! grep -q '^[^:]*:[^:]*:{uid}:' /etc/passwd; then",
            f"  if command -v useradd >/dev/null; then useradd -u {uid} -U -M -d {CONTAINER_HOME} -s /bin/bash cast;",
            f"  else echo 'cast:x:{uid}:{gid}::{CONTAINER_HOME}:/bin/sh' >> /etc/passwd;"
            f" echo 'cast:x:{gid}:' >> /etc/group; fi",
            "fi",
            "command -v bash >/dev/null || { echo 'this image has no bash, which cast runs commands with'; exit 1; }",
        ]
        if self.apt:
            packages = " ".join(shlex.quote(p) for p in self.apt)
            lines += [
                f'echo "{_STEP_MARK}apt: apt-get install {packages}"',
                "command -v apt-get >/dev/null || { echo 'this image has no apt-get for --apt packages'; exit 1; }",
                "export DEBIAN_FRONTEND=noninteractive APT_CONFIG=" + f"{HOST_INPUTS}/build/apt.conf",
                "apt-get update -q",
                f"apt-get install -y -q --no-install-recommends {packages}",
                "apt-get clean && rm -rf /var/lib/apt/lists/*",
            ]
        if self.pip or self.pip_req:
            specs = " ".join(shlex.quote(p) for p in self.pip)
            requirements = f" -r {HOST_INPUTS}/build/requirements.txt" if self.pip_req else ""
            lines += [
                f'echo "{_STEP_MARK}pip: pip install {specs}{requirements.replace(HOST_INPUTS + "/build/", "")}"',
                f"export PIP_CONFIG_FILE={HOST_INPUTS}/build/pip.conf PIP_BREAK_SYSTEM_PACKAGES=1"
                " PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1 PIP_PROGRESS_BAR=off"
                " PIP_DISABLE_PIP_VERSION_CHECK=1",
                f"python3 -m pip install {specs}{requirements}",
            ]
        return "\n".join(lines) + "\n"


def container_user() -> tuple[int, int]:
    """Who commands run as: uid 1000 under a root worker (which hands it the
    working directory), else the worker's own user, who owns it already."""
    if os.geteuid() == 0:
        return RUN_UID, RUN_UID
    return os.geteuid(), os.getegid()


class LineSplitter:
    """Bytes in, complete lines out, for one stream; invalid UTF-8 replaced."""

    def __init__(self, emit):
        self._emit = emit
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> None:
        text = self._partial + self._decoder.decode(data)
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._emit(line.removesuffix("\r"))
        if len(self._partial) > _MAX_PARTIAL_LINE:
            self._emit(self._partial)
            self._partial = ""

    def close(self) -> None:
        text = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if text:
            self._emit(text.removesuffix("\r"))


def pump_output(attach_stream, on_stdout, on_stderr) -> None:
    """Split a demultiplexed attach stream into lines until it ends."""
    out, err = LineSplitter(on_stdout), LineSplitter(on_stderr)
    for stdout, stderr in attach_stream:
        if stdout:
            out.feed(stdout)
        if stderr:
            err.feed(stderr)
    out.close()
    err.close()


class DockerExecutor(Executor):
    name = "docker"

    def __init__(self, work_dir: Path, **options):
        self.work_dir = Path(work_dir).resolve()
        self.options = DockerOptions.resolve(**options)
        try:
            # Streams (attach) do not time out; the limit is for single calls
            # such as a commit of a large image.
            self.client = docker.from_env(timeout=600)
            engine = self.client.info()
        except DockerException as exc:
            raise ExecutorUnavailable(f"no Docker engine answers: {exc}") from None
        self.engine_cpus = int(engine.get("NCPU") or os.cpu_count() or 1)
        self.engine_memory = int(engine.get("MemTotal") or 0)
        self.host_gpu_count = len(detect_gpus())
        self.host_settings = HostPackageSettings.from_host()
        self._building: set[str] = set()
        self._building_lock = threading.Lock()

    # --- environments ---------------------------------------------------

    def build(self, job: Job, log: LogSink) -> BuildResult:
        env = EnvironmentSpec.of(job.spec, self.options.base_image)
        base_id = self._base_image_id(env.base_image, log)
        key = env.key(base_id)
        tag = f"{self.options.image_repository}:{key}"
        if self._touch(tag):
            return BuildResult(key=key, cached=True, description=tag)
        with self._building_lock:
            waiting = key in self._building
            self._building.add(key)
        try:
            if waiting:
                log("cast", f"Waiting for another run building the same environment {tag}…")
            with file_lock(self.work_dir / "locks" / f"env-{key}.lock"):
                if self._touch(tag):
                    return BuildResult(key=key, cached=True, description=tag)
                self._build_image(job, env, base_id, key, log)
        finally:
            with self._building_lock:
                self._building.discard(key)
        return BuildResult(key=key, cached=False, description=tag)

    def has_base_image(self) -> bool:
        """Whether the configured base image is on this host already."""
        try:
            self.client.api.inspect_image(self.options.base_image)
            return True
        except ImageNotFound:
            return False

    def _base_image_id(self, name: str, log: LogSink) -> str:
        try:
            return self.client.api.inspect_image(name)["Id"]
        except ImageNotFound:
            pass
        log("cast", f"Pulling {name}…")
        try:
            return self.client.images.pull(name).id
        except DockerException as exc:
            hint = " (build it with docker/build-base-image.sh)" if name == DEFAULT_BASE_IMAGE else ""
            raise BuildFailed(f"docker image {name} is not on this worker and cannot be pulled{hint}: "
                              f"{_explain(exc)}") from None

    def _touch(self, tag: str) -> bool:
        """Whether `tag` exists; if so, stamp its last use by tagging it again."""
        repository, _, key = tag.partition(":")
        try:
            self.client.api.tag(tag, repository, key)
            return True
        except NotFound:
            return False

    def _build_image(self, job: Job, env: EnvironmentSpec, base_id: str, key: str, log: LogSink) -> None:
        settings = self.host_settings
        inputs = settings.build_inputs()
        log("cast", f"Building environment {self.options.image_repository}:{key} ({env.holds()})")
        staging = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=self._scratch_dir()))
        try:
            (staging / "build.sh").write_text(env.build_script(preamble=inputs.shell_preamble))
            (staging / "pip.conf").write_text(inputs.pip_conf)
            (staging / "apt.conf").write_text(inputs.apt_conf)
            if env.pip_req:
                (staging / "requirements.txt").write_text(env.pip_req)
            for child in staging.iterdir():  # read by root in the container, whatever our umask
                child.chmod(0o644)
            staging.chmod(0o755)
            mounts = [Mount(HOST_INPUTS, None, type="tmpfs"),
                      Mount(f"{HOST_INPUTS}/build", str(staging), type="bind", read_only=True)]
            mounts += [Mount(target, source, type="bind", read_only=True) for source, target in inputs.mounts]
            container = self.client.containers.create(
                base_id, ["/bin/sh", f"{HOST_INPUTS}/build/build.sh"], entrypoint=[], user="0:0",
                mounts=mounts, network_mode=self.options.network, labels=self._labels(job, "build"),
                log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
            )
            try:
                step, tail = self._stream_build(container, log)
                code = container.wait()["StatusCode"]
                if code != 0:
                    detail = " | ".join(tail) or "no output"
                    raise BuildFailed(f"{step} step failed (exit {code}): {detail}")
                base = self.client.api.inspect_image(base_id)["Config"] or {}
                container.commit(
                    repository=self.options.image_repository, tag=key,
                    conf={"Cmd": base.get("Cmd") or ["bash"], "Entrypoint": base.get("Entrypoint") or [],
                          "Env": base.get("Env") or [], "WorkingDir": CONTAINER_WORKDIR, "User": "",
                          "Labels": {**(base.get("Labels") or {}), LABEL_KEY: key, LABEL_HOLDS: env.holds(),
                                     LABEL_ROLE: "env"}},
                )
            finally:
                container.remove(force=True)
        except APIError as exc:
            raise BuildFailed(f"the Docker engine refused the build: {settings.redact(_explain(exc))}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stream_build(self, container, log: LogSink) -> tuple[str, list[str]]:
        """Send the build's output to the log; return the last step's name and last lines."""
        state = {"step": "setup"}
        tail: deque[str] = deque(maxlen=_FAILURE_LINES)

        def line(text: str) -> None:
            text = self.host_settings.redact(text)
            if text.startswith(_STEP_MARK):
                state["step"] = text[len(_STEP_MARK):].partition(":")[0]
                tail.clear()
            elif text.strip():
                tail.append(text.strip()[:300])
            log("cast", text)

        stream = container.attach(stdout=True, stderr=True, stream=True, demux=True, logs=True)
        container.start()
        pump_output(stream, line, line)
        return state["step"], list(tail)

    def _scratch_dir(self) -> Path:
        path = self.work_dir / "docker-scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _labels(self, job: Job, role: str) -> dict[str, str]:
        return {LABEL_WORK_DIR: str(self.work_dir), LABEL_RUN_ID: str(job.run_id), LABEL_ROLE: role}

    # --- runs -------------------------------------------------------------

    def limits(self, machine_type: str) -> dict:
        """Memory (bytes), CPUs and pids for a run: the worker's settings, or by
        default the engine host's share for the machine type (a cpu run may use
        the whole host; a gpu:N run N/G of it on a host with G GPUs)."""
        gpus = parse_machine_type(machine_type or "cpu")
        share = min(1.0, gpus / self.host_gpu_count) if gpus and self.host_gpu_count else 1.0
        memory = (parse_size(self.options.memory) if self.options.memory
                  else int(self.engine_memory * 0.9 * share))
        cpus = self.options.cpus or max(1.0, round(self.engine_cpus * share, 2))
        return {"memory": memory, "cpus": cpus, "pids": self.options.pids_limit}

    def container_settings(self, job: Job, image: str) -> dict:
        """The keyword arguments of `containers.create` for a run."""
        uid, gid = container_user()
        limits = self.limits(job.spec.machine_type or "cpu")
        env = {key: value for key, value in job.env.items() if key != "CUDA_VISIBLE_DEVICES"}
        env.setdefault("CAST_RUN_ID", str(job.run_id))
        # A run sees only its own devices, numbered from 0 inside the container.
        env.update(PYTHONUNBUFFERED="1", HOME=CONTAINER_HOME, TINI_KILL_PROCESS_GROUP="1")
        mounts = [Mount(CONTAINER_WORKDIR, str(job.workdir), type="bind")]
        mounts += [Mount(f"{CONTAINER_WORKDIR}/{m.path}", str(m.source), type="bind", read_only=True)
                   for m in job.mounts]
        settings = dict(
            image=image, entrypoint=["bash", "-c"], command=[job.spec.command],
            user=f"{uid}:{gid}", working_dir=CONTAINER_WORKDIR, environment=env, mounts=mounts,
            init=True, labels=self._labels(job, "run"), name=f"cast-run-{job.run_id}-{uuid.uuid4().hex[:8]}",
            network_mode=self.options.network, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            mem_limit=limits["memory"], memswap_limit=limits["memory"],
            nano_cpus=int(limits["cpus"] * 1e9), pids_limit=limits["pids"],
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
        )
        if job.gpus:
            settings["device_requests"] = [
                DeviceRequest(device_ids=[str(index) for index in job.gpus], capabilities=[["gpu"]])
            ]
        return settings

    def start(self, job: Job, build: BuildResult, log: LogSink) -> RunningProcess:
        uid, gid = container_user()
        if os.geteuid() == 0:
            _chown_tree(job.workdir, uid, gid)
        stubs = _make_mount_points(job, uid, gid)
        container = events = None
        try:
            container = self.client.containers.create(**self.container_settings(job, build.description))
            # Subscribed before the start, so the container's end cannot be missed.
            events = self.client.api.events(filters={"container": container.id, "event": ["oom", "die"]},
                                            decode=True)
            stream = container.attach(stdout=True, stderr=True, stream=True, demux=True, logs=True)
            container.start()
        except APIError as exc:
            if events is not None:
                events.close()
            if container is not None:
                container.remove(force=True)
            _remove_mount_points(stubs)
            raise ExecutorUnavailable(f"cannot start the run's container: {_explain(exc)}") from None
        return ContainerProcess(container, stream, events, log, stubs)

    def cleanup_stale(self) -> None:
        stale = self.client.containers.list(all=True, filters={"label": f"{LABEL_WORK_DIR}={self.work_dir}"})
        for container in stale:
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
        shutil.rmtree(self.work_dir / "docker-scratch", ignore_errors=True)

    # --- the image cache ------------------------------------------------------

    def cache_entries(self) -> list[CacheEntry]:
        entries = []
        prefix = f"{self.options.image_repository}:"
        for image in self.client.images.list(filters={"label": LABEL_KEY}):
            if not any(tag.startswith(prefix) for tag in image.tags):
                continue
            details = self.client.api.inspect_image(image.id)
            labels = details["Config"].get("Labels") or {}
            entries.append(CacheEntry(
                key=labels[LABEL_KEY], holds=labels.get(LABEL_HOLDS, ""), size=int(details.get("Size") or 0),
                last_used=_timestamp((details.get("Metadata") or {}).get("LastTagTime") or details["Created"]),
            ))
        return sorted(entries, key=lambda entry: entry.last_used, reverse=True)

    def prune_cache(self, *, older_than: float | None, everything: bool) -> list[CacheEntry]:
        now = time.time()
        removed = []
        for entry in self.cache_entries():
            if not everything and (older_than is None or now - entry.last_used < older_than):
                continue
            try:
                self.client.images.remove(f"{self.options.image_repository}:{entry.key}")
            except APIError:  # in use by a running container: kept
                continue
            removed.append(entry)
        return removed


class ContainerProcess(RunningProcess):
    def __init__(self, container, stream, events, log: LogSink, stubs: list[Path]):
        self.container = container
        self._events = events  # the engine's `oom` and `die` events of this container
        self._stubs = stubs
        self._kill_timer: threading.Timer | None = None
        self._signalled = False
        self._pids_reason: str | None = None
        self._ended = threading.Event()
        self._pump = threading.Thread(
            target=pump_output, args=(stream, lambda t: log("stdout", t), lambda t: log("stderr", t)),
            name=f"logs-{container.name}", daemon=True,
        )
        self._pump.start()
        threading.Thread(target=self._watch_pids, name=f"pids-{container.name}", daemon=True).start()

    def _watch_pids(self) -> None:
        """Kill a run that stays at its process limit: its forks are being
        refused, which only a runaway (a fork bomb) keeps doing, and it would
        otherwise hold its worker slot until its timeout, if any."""
        at_limit = 0
        while not self._ended.wait(PIDS_CHECK_INTERVAL):
            try:
                pids = self.container.client.api.stats(self.container.id, stream=False, one_shot=True)
                pids = pids.get("pids_stats") or {}
            except NotFound:
                return
            except DockerException:  # the engine is busy: look again later
                continue
            limit = pids.get("limit") or 0
            at_limit = at_limit + 1 if limit and pids.get("current", 0) >= limit else 0
            if at_limit >= PIDS_CHECKS_AT_LIMIT:
                self._pids_reason = f"reached its limit of {limit} processes (pids limit)"
                self.kill()
                return

    def wait(self) -> ExitResult:
        self._pump.join()  # the output ends when the container does
        self._ended.set()
        code, out_of_memory = self._exit_status()
        if self._kill_timer:
            self._kill_timer.cancel()
        # The container's bind mounts ended with it; the stubs go before the
        # outputs are read, the container itself only in `release`.
        _remove_mount_points(self._stubs)
        if out_of_memory:
            return ExitResult(exit_code=code, reason="out of memory")
        if self._pids_reason:
            return ExitResult(exit_code=code, reason=self._pids_reason)
        if self._signalled and code > 128 and code - 128 in _SIGNAL_NAMES:
            return ExitResult(exit_code=code, reason=f"ended by {_SIGNAL_NAMES[code - 128]}")
        return ExitResult(exit_code=code)

    def _exit_status(self) -> tuple[int, bool]:
        """The command's exit code, and whether the container ran out of memory.

        The engine's `die` event tells as soon as the command has ended, while
        its `wait` answers only once the container's network and filesystem
        are torn down, some 50 ms later. `wait` and the container's state
        still decide when the events cannot: a stream that broke off, or a
        SIGKILL with no `oom` event before it (an OOM kill whose event is late)."""
        out_of_memory = False
        try:
            for event in self._events:
                if event.get("status") == "oom":
                    out_of_memory = True
                elif event.get("status") == "die":
                    code = int(event["Actor"]["Attributes"]["exitCode"])
                    if out_of_memory or code != 128 + signal.SIGKILL:
                        return code, out_of_memory
                    break
        except (DockerException, RequestException, KeyError, ValueError):
            pass
        finally:
            self._events.close()
        code = self.container.wait()["StatusCode"]
        state = self.container.client.api.inspect_container(self.container.id)["State"]
        return code, bool(state.get("OOMKilled"))

    def release(self) -> None:
        try:
            self.container.remove(force=True, v=True)
        except NotFound:
            pass

    def terminate(self, grace: float) -> None:
        self._signal("SIGTERM")
        if self._kill_timer:
            self._kill_timer.cancel()
        self._kill_timer = threading.Timer(grace, self.kill)
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def kill(self) -> None:
        self._signal("SIGKILL")

    def _signal(self, name: str) -> None:
        self._signalled = True
        try:
            self.container.kill(signal=name)
        except APIError:  # it has exited already
            pass


def _make_mount_points(job: Job, uid: int, gid: int) -> list[Path]:
    """Create the files and folders the mounts cover, as a bind mount needs;
    return what was created, deepest last, to be removed after the run.
    Parent folders made here belong to the run's user so it can write beside a mount."""
    created: list[Path] = []
    root = os.path.realpath(job.workdir)
    for mount in job.mounts:
        target = job.workdir / mount.path
        if os.path.commonpath([root, os.path.realpath(target)]) != root:
            _remove_mount_points(created)
            raise BuildFailed(f"mount path {mount.path!r} leads outside the working directory")
        missing = [p for p in reversed(target.parents) if p.is_relative_to(job.workdir) and not p.exists()]
        for folder in missing:
            folder.mkdir()
            if os.geteuid() == 0:
                os.chown(folder, uid, gid)
            created.append(folder)
        if not target.exists():
            if Path(mount.source).is_dir():
                target.mkdir()
            else:
                target.touch()
            created.append(target)
    return created


def _remove_mount_points(created: list[Path]) -> None:
    """Remove the mount points made for a run if they are still empty."""
    for path in reversed(created):
        try:
            if path.is_dir():
                path.rmdir()
            elif path.stat().st_size == 0:
                path.unlink()
        except OSError:  # the run put something there: it is an output now
            pass


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for folder, dirs, files in os.walk(root):
        os.lchown(folder, uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, gid)


def _timestamp(text: str) -> float:
    """Unix time from Docker's RFC 3339 times with nanoseconds."""
    head, _, rest = text.rstrip("Z").partition(".")
    fraction = float("0." + rest[:6]) if rest else 0.0
    return datetime.fromisoformat(head + "+00:00").timestamp() + fraction


def _explain(exc: DockerException) -> str:
    return getattr(exc, "explanation", None) or str(exc)
