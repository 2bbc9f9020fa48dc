"""The Docker executor: each run in its own container, from the environment
image cast.worker.docker_images built for its packages.

Owns:
- run containers: `/cast/work` is the run's host working directory, the
  mounts are read-only bind mounts inside it, the command runs with bash under
  docker-init as a non-root user, with memory, CPU and pids limits, no
  capabilities, no new privileges, and only the run's GPUs;
- their lifecycle: output streamed live as lines, the exit code and an
  out-of-memory end as soon as the engine reports them, stop (SIGTERM to the
  command's process group, SIGKILL after the grace), kill, removal (after
  the run's final status is reported: `release`), and
  removal of what a crashed earlier worker of the same work dir left behind;
  a run that stays at its pids limit (a fork bomb) is killed with that reason.

Every option is a keyword argument of DockerExecutor and a `CAST_WORKER_*`
variable (see DockerOptions).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount
from requests.exceptions import RequestException

from cast.protocol.messages import LogStream
from cast.protocol.units import human_size, parse_size
from cast.protocol.validate import parse_machine_type
from cast.worker.docker_images import (
    CONTAINER_HOME,
    CONTAINER_WORKDIR,
    DEFAULT_BASE_IMAGE,
    LABEL_WORK_DIR,
    LOG_CONFIG,
    RUN_UID,
    ImageCache,
    explain,
    labels,
    pump_output,
)
from cast.worker.executors.base import (
    BuildFailed,
    BuildResult,
    CacheEntry,
    Executor,
    ExecutorUnavailable,
    ExitResult,
    InvalidExecutorOption,
    Job,
    LinesSink,
    LogSink,
    RunningProcess,
)
from cast.worker.metrics import run_env
from cast.worker.resources import detect_gpus

_SIGNAL_NAMES = {sig.value: sig.name for sig in signal.Signals}
PIDS_CHECK_INTERVAL = 1.0  # seconds between looks at a run's process count
PIDS_CHECKS_AT_LIMIT = 2  # looks in a row at the limit before the run is killed
OOM_EVENT_GRACE = 2.0  # seconds a SIGKILLed container's OOM flag may come late
CONTAINER_METRICS = "/cast/metrics"  # where a run's metrics folder appears
# The settings of `container_settings` that are the container's own; the rest
# are its host config.
_CONTAINER_KEYS = ("image", "entrypoint", "command", "user", "environment", "working_dir", "labels", "name")


@dataclass(frozen=True)
class DockerOptions:
    """The worker's settings for its containers. Each is a keyword argument of
    DockerExecutor or, when that is None, the variable `CAST_WORKER_<NAME>`."""

    base_image: str = DEFAULT_BASE_IMAGE  # base of runs without --docker-image
    memory: str | None = None  # per-run limit, e.g. "8g"; default: from the machine type
    cpus: float | None = None  # per-run limit; default: from the machine type
    pids_limit: int = 4096
    network: str = "bridge"  # for runs and builds; "host" only if set explicitly
    image_repository: str = "cast-env"  # environment images are <repository>:<owner>-<key>

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


def container_user() -> tuple[int, int]:
    """Who commands run as: uid 1000 under a root worker (which hands it the
    working directory), else the worker's own user, who owns it already."""
    if os.geteuid() == 0:
        return RUN_UID, RUN_UID
    return os.geteuid(), os.getegid()


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
        self.images = ImageCache(self.client, self.work_dir, base_image=self.options.base_image,
                                 repository=self.options.image_repository, network=self.options.network)

    # --- environments: cast.worker.docker_images -------------------------

    def build(self, job: Job, log: LogSink) -> BuildResult:
        return self.images.ensure(job.spec, job.run_id, log)

    def has_base_image(self) -> bool:
        return self.images.has_base_image()

    def cache_entries(self) -> list[CacheEntry]:
        return self.images.entries()

    def prune_cache(self, *, older_than: float | None, everything: bool) -> list[CacheEntry]:
        return self.images.prune(older_than=older_than, everything=everything)

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

    def describe_limits(self, job: Job) -> str:
        limits = self.limits(job.spec.machine_type or "cpu")
        memory = f"memory {human_size(limits['memory'])}" if limits["memory"] else "memory unlimited"
        return f"container, {memory}, {limits['cpus']:g} CPUs, {limits['pids']} processes"

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
        if job.metrics_dir is not None:
            mounts.append(Mount(CONTAINER_METRICS, str(job.metrics_dir), type="bind"))
            env.update(run_env(CONTAINER_METRICS, env))
        settings = dict(
            image=image, entrypoint=["bash", "-c"], command=[job.spec.command],
            user=f"{uid}:{gid}", environment=env, mounts=mounts,
            working_dir=f"{CONTAINER_WORKDIR}/{job.spec.workdir}" if job.spec.workdir else CONTAINER_WORKDIR,
            init=True, labels=labels(self.work_dir, job.run_id, "run"), name=f"cast-run-{job.run_id}-{uuid.uuid4().hex[:8]}",
            network_mode=self.options.network, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            mem_limit=limits["memory"], memswap_limit=limits["memory"],
            nano_cpus=int(limits["cpus"] * 1e9), pids_limit=limits["pids"],
            log_config=LOG_CONFIG,
        )
        if job.gpus:
            settings["device_requests"] = [
                DeviceRequest(device_ids=[str(index) for index in job.gpus], capabilities=[["gpu"]])
            ]
        return settings

    def start(self, job: Job, build: BuildResult, log: LinesSink) -> RunningProcess:
        uid, gid = container_user()
        if os.geteuid() == 0:
            _chown_tree(job.workdir, uid, gid)
            if job.metrics_dir is not None:  # its files, not the folder: the run writes the file, never replaces it
                for entry in job.metrics_dir.iterdir():
                    os.lchown(entry, uid, gid)
        stubs = _make_mount_points(job, uid, gid)
        container = events = None
        try:
            container = self._create_for(job, build, log)
            # Subscribed before the start, so the container's end cannot be missed.
            events = self.client.api.events(filters={"container": container.id, "event": ["oom", "die"]},
                                            decode=True)
            stream = container.attach(stdout=True, stderr=True, stream=True, demux=True, logs=True)
            container.start()
        except (APIError, BuildFailed) as exc:
            if events is not None:
                events.close()
            if container is not None:
                container.remove(force=True)
            _remove_mount_points(stubs)
            reason = explain(exc) if isinstance(exc, APIError) else str(exc)
            raise ExecutorUnavailable(f"cannot start the run's container: {reason}") from None
        return ContainerProcess(container, stream, events, log, stubs)

    def _create_for(self, job: Job, build: BuildResult, log: LinesSink):
        """The run's container, on its environment image; an image gone since
        the build found it (a prune, a `docker rmi` its image events had not yet
        told of) is made again."""
        try:
            return self._create(self.container_settings(job, build.description))
        except ImageNotFound:
            self.images.known.forget()
            build = self.images.ensure(job.spec, job.run_id, lambda stream, text: log(stream, [text]))
            return self._create(self.container_settings(job, build.description))

    def _create(self, settings: dict):
        """The container, created with one engine call: docker-py's
        `containers.create` inspects what it made, a second call on the way to
        every run's start that tells nothing the settings do not."""
        container_keys = {key: settings.pop(key) for key in _CONTAINER_KEYS if key in settings}
        created = self.client.api.create_container(
            **container_keys, host_config=self.client.api.create_host_config(**settings))
        return self.client.containers.prepare_model({"Id": created["Id"], "Name": container_keys["name"]})

    def cleanup_stale(self) -> None:
        stale = self.client.containers.list(all=True, filters={"label": f"{LABEL_WORK_DIR}={self.work_dir}"})
        for container in stale:
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
        self.images.remove_scratch()

class ContainerProcess(RunningProcess):
    def __init__(self, container, stream, events, log: LinesSink, stubs: list[Path]):
        self.container = container
        self._events = events  # the engine's `oom` and `die` events of this container
        self._stubs = stubs
        self._kill_timer: threading.Timer | None = None
        self._signalled = False
        self._pids_reason: str | None = None
        self._ended = threading.Event()
        self._pump = threading.Thread(
            target=pump_output, args=(stream, lambda t: log(LogStream.STDOUT, t), lambda t: log(LogStream.STDERR, t)),
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
            except (DockerException, RequestException):  # the engine is busy, or removing it: look again later
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
        return code, self._oom_killed(late=code == 128 + signal.SIGKILL and not self._signalled)

    def _oom_killed(self, *, late: bool) -> bool:
        """The container's `OOMKilled`; with `late` (a SIGKILL that came from
        no one here), asked again for up to `OOM_EVENT_GRACE` seconds: the
        engine sets it when the kernel's OOM event reaches it, which on cgroup
        v1 may be after the container's exit (CI met exit 137 and no reason)."""
        deadline = time.monotonic() + (OOM_EVENT_GRACE if late else 0.0)
        while True:
            state = self.container.client.api.inspect_container(self.container.id)["State"]
            if state.get("OOMKilled") or time.monotonic() >= deadline:
                return bool(state.get("OOMKilled"))
            time.sleep(0.05)

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
