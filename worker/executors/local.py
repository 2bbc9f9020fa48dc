"""The local executor: a run is a process on the worker's own host, in a
sandbox wherever one can be made.

The environment is a cached virtualenv over the worker's interpreter, built
with uv (else pip) from one package cache per worker (cast.worker.envs).

Sandboxed (cast.worker.sandbox: bubblewrap): the run sees its working dir, its
environment, the system and its mounts (read-only bind mounts) and nothing else
of the host, runs as its own uid under a root worker, within the limits set by
`CAST_WORKER_MEMORY` (per process; default 90% of the host's memory) and
`CAST_WORKER_PIDS_LIMIT` (default 4096, as the Docker executor), and every
process of it ends with it. `CAST_WORKER_BWRAP` names the bwrap binary.

Unsandboxed (no bwrap, or the kernel refuses namespaces; the worker warns at
start and registers as unsandboxed, so each run's machine line says so): a
process group under the worker's own user. Mounts are then symlinks to their
read-only sources; file modes alone do not stop root, so a root worker runs the
command in a private mount namespace (`unshare -m`) in which every mount source
is bind-remounted read-only.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from cast.protocol.messages import LogStream
from cast.protocol.units import parse_size
from cast.worker.envs import HOST_KEY, EnvCache
from cast.worker.installer import choose_installer
from cast.worker.lines import LineReader
from cast.worker.executors.base import (
    BuildFailed,
    BuildResult,
    CacheEntry,
    Executor,
    ExitResult,
    InvalidExecutorOption,
    Job,
    LinesSink,
    LogSink,
    PreparedMount,
    RunningProcess,
)
from cast.worker.fsops import remove_tree
from cast.worker.metrics import run_env
from cast.worker.resources import cpu_count, memory_bytes
from cast.worker.sandbox import (
    BWRAP,
    DEFAULT_PROCESSES,
    Limits,
    Sandbox,
    SandboxedRun,
    SandboxUnavailable,
    interpreter_dirs,
    namespace_tasks,
    read_info,
)

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16  # bytes of a run's output read at once
PIDS_CHECK_INTERVAL = 1.0  # seconds between looks at a sandboxed run's process count
PIDS_CHECKS_AT_LIMIT = 2  # looks in a row at the limit before the run is killed

# Runs in its own mount namespace: makes each source ($2…) read-only there,
# then becomes the user's command ($1).
_READ_ONLY_WRAPPER = (
    'command=$1; shift\n'
    'for source; do\n'
    '  mount --bind -- "$source" "$source" && mount -o remount,bind,ro -- "$source" || exit 125\n'
    'done\n'
    'exec bash -c "$command"\n'
)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a pid's reuse apart)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class LocalProcess(RunningProcess):
    def __init__(self, popen: subprocess.Popen, log: LinesSink, records: Path):
        self._popen = popen
        self._pgid = popen.pid  # start_new_session: the command leads its own group
        # Lets a later worker on this work dir end the group should this one die.
        records.mkdir(parents=True, exist_ok=True)
        self._record = records / str(self._pgid)
        self._record.write_text(_start_time(self._pgid) or "")
        self._readers = [
            threading.Thread(target=self._pump, args=(popen.stdout, LogStream.STDOUT, log), daemon=True),
            threading.Thread(target=self._pump, args=(popen.stderr, LogStream.STDERR, log), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(pipe, stream: LogStream, log: LinesSink) -> None:
        reader = LineReader(lambda lines: log(stream, lines))
        with pipe:
            # Whatever the pipe holds, up to READ_SIZE at once: lines are split in C, not read one by one.
            for data in iter(lambda: os.read(pipe.fileno(), READ_SIZE), b""):
                reader.feed(data)
        reader.close()

    def wait(self) -> ExitResult:
        code = self._popen.wait()
        # What the command left running in its group would hold the pipes open.
        _signal_group(self._pgid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(timeout=5)
        self._record.unlink(missing_ok=True)
        return self._result(code)

    def _result(self, code: int) -> ExitResult:
        if code < 0:
            name = signal.Signals(-code).name
            return ExitResult(exit_code=128 - code, reason=f"ended by {name}")
        return ExitResult(exit_code=code)

    def terminate(self, grace: float) -> None:
        self._signal(signal.SIGTERM)
        timer = threading.Timer(grace, self._kill_if_running)
        timer.daemon = True
        timer.start()

    def _kill_if_running(self) -> None:
        if self._popen.poll() is None:
            self.kill()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        _signal_group(self._pgid, sig)


class SandboxProcess(LocalProcess):
    """A command in its sandbox (bwrap, started with --info-fd `info`): signals
    reach every process in its PID namespace, `setsid` or not; SIGKILL goes to
    the namespace's init, whose end makes the kernel kill all the rest."""

    def __init__(self, popen: subprocess.Popen, log: LinesSink, records: Path, info: int, run: SandboxedRun):
        super().__init__(popen, log, records)
        self._run = run
        self._sent: set[int] = set()
        self._processes_reason: str | None = None
        self._ended = threading.Event()
        self._init_lock = threading.Lock()  # the init's pidfd is closed once, never while in use
        details = read_info(info)  # once bwrap has made the namespaces; None if it failed first
        self._init = self._namespace = self._init_fd = None
        if details:
            self._init, self._namespace = details["child-pid"], details["pid-namespace"]
            try:
                self._init_fd = os.pidfd_open(self._init)  # signals can never reach a reused pid
            except OSError:  # the sandbox already ended
                pass
            threading.Thread(target=self._watch_processes, name=f"pids-{popen.pid}", daemon=True).start()

    def wait(self) -> ExitResult:
        try:
            return super().wait()
        finally:
            self._ended.set()
            with self._init_lock:
                if self._init_fd is not None:
                    os.close(self._init_fd)
                    self._init_fd = None

    def release(self) -> None:
        # The run's HOME and /tmp, after its final status: what it left there can take long to remove.
        self._run.end()

    def _result(self, code: int) -> ExitResult:
        if self._processes_reason:
            return ExitResult(exit_code=code, reason=self._processes_reason)
        if code > 128 and code - 128 in self._sent:  # bwrap reports a signal's end as 128 + its number
            return ExitResult(exit_code=code, reason=f"ended by {signal.Signals(code - 128).name}")
        return ExitResult(exit_code=code)

    def _signal(self, sig: int) -> None:
        self._sent.add(sig)
        if self._namespace is None:
            super()._signal(sig)
        elif sig == signal.SIGKILL:
            with self._init_lock:
                if self._init_fd is not None:
                    try:
                        signal.pidfd_send_signal(self._init_fd, sig)
                    except ProcessLookupError:
                        pass
        else:
            for pid, _ in namespace_tasks(self._namespace, self._init):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def _watch_processes(self) -> None:
        """Kill a run that stays at its process limit: its forks are failing
        (a fork bomb), and the limit holds it there forever."""
        limit, at_limit = self._run.limits.processes, 0
        while not self._ended.wait(PIDS_CHECK_INTERVAL):
            count = sum(threads for _, threads in namespace_tasks(self._namespace, self._init))
            at_limit = at_limit + 1 if count >= limit else 0
            if at_limit >= PIDS_CHECKS_AT_LIMIT:
                self._processes_reason = f"reached its limit of {limit} processes (pids limit)"
                self.kill()
                return


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, work_dir: Path, **options):
        self.work_dir = Path(work_dir)
        try:
            self.envs = EnvCache(self.work_dir / "envs", installer=choose_installer())
        except ValueError as exc:
            raise InvalidExecutorOption(str(exc)) from None
        self._namespace_checked = threading.Lock()
        self._private_mounts: bool | None = None
        self.bwrap = os.environ.get("CAST_WORKER_BWRAP") or BWRAP
        self.memory, self.processes = _limit_settings()
        self._sandbox_checked = threading.Lock()
        self._sandbox: Sandbox | None = None
        self.unsandboxed_reason: str | None = None  # set when no sandbox can be made here

    @property
    def sandbox(self) -> Sandbox | None:
        """bwrap, tried once; None, with a loud warning, where no sandbox can be made."""
        with self._sandbox_checked:
            if self._sandbox is None and self.unsandboxed_reason is None:
                try:
                    cast_home = Path(os.environ.get("CAST_HOME") or Path.home() / ".cast")
                    self._sandbox = Sandbox.probe(self.bwrap, self.work_dir / "sandbox-probe",
                                                  hidden=[self.work_dir, cast_home])
                except SandboxUnavailable as exc:
                    self.unsandboxed_reason = str(exc)
                    log.warning("RUNS ON THIS WORKER ARE NOT SANDBOXED: %s. Each run can read and write "
                                "whatever the worker's user can (CAST_HOME and its tokens included) and "
                                "leave processes behind; install bubblewrap, or use the docker executor.", exc)
            return self._sandbox

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None

    # --- environments -----------------------------------------------------

    def build(self, job: Job, log: LogSink) -> BuildResult:
        if job.spec.apt:
            raise BuildFailed("the local executor cannot install apt packages; use the docker executor")
        if job.spec.docker_image:
            raise BuildFailed("the local executor cannot use a Docker image; use the docker executor")
        return self.envs.ensure(job.spec.pip, job.spec.pip_req, log)

    def cache_entries(self) -> list[CacheEntry]:
        return self.envs.entries()

    def prune_cache(self, *, older_than: float | None, everything: bool) -> list[CacheEntry]:
        return self.envs.prune(older_than=older_than, everything=everything)

    def cleanup_stale(self) -> None:
        """The process groups and half-built environments of a worker that died."""
        groups = self.work_dir / "process-groups"
        if groups.is_dir():
            for record in groups.iterdir():
                pgid = int(record.name)
                started = _start_time(pgid)
                # Linux never gives out a pid still naming a live group, so while
                # the group exists it is the run's: unless its leader is alive and
                # was started at another time than recorded, it is ours to end.
                if started is None or started == record.read_text():
                    _signal_group(pgid, signal.SIGKILL)
                record.unlink()
        remove_tree(self.work_dir / "sandboxes")  # the HOME and /tmp of runs that ended with their worker
        if self.envs.root.is_dir():
            for env in self.envs.root.iterdir():
                if env.is_dir() and not (env / ".cast-env.json").exists():
                    remove_tree(env)

    # --- running ----------------------------------------------------------

    def start(self, job: Job, build: BuildResult, log: LinesSink) -> RunningProcess:
        sandbox = self.sandbox
        if sandbox is None:
            return self._start_unsandboxed(job, build, log)
        area = self.work_dir / "sandboxes" / f"{job.run_id}-{secrets.token_hex(4)}"
        environment = [self.envs.path(build.key)] if build.key != HOST_KEY else []
        try:
            run = sandbox.prepare(
                run_id=job.run_id, workdir=job.workdir, area=area, read_only=environment + interpreter_dirs(),
                mounts=[(m.source.resolve(), job.workdir / m.path) for m in job.mounts], gpus=bool(job.gpus),
                limits=self._limits(job), metrics=job.metrics_dir,
            )
        except ValueError as exc:
            remove_tree(area)
            raise BuildFailed(str(exc)) from None
        log(LogStream.CAST, [sandbox.describe(run)])
        env = self._environment(job, build)
        if build.key == HOST_KEY:  # the worker's interpreter, which a PATH of shims may not reach inside
            interpreter = os.path.dirname(os.path.realpath(sys.executable))
            env["PATH"] = f"{interpreter}{os.pathsep}{env.get('PATH', os.defpath)}"
        info_read, info_write = os.pipe()
        try:
            popen = subprocess.Popen(
                sandbox.argv(run, job.spec.command, info_fd=info_write, start_dir=job.start_dir),
                cwd=job.workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                pass_fds=(info_write,),
            )
        except OSError:
            os.close(info_read)
            run.end()
            raise
        finally:
            os.close(info_write)
        return SandboxProcess(popen, log, self.work_dir / "process-groups", info_read, run)

    def describe_limits(self, job: Job) -> str:
        if not self.sandboxed:
            return "NOT sandboxed, no limits"
        return f"sandboxed (bubblewrap), {self._limits(job).describe()}"

    def _limits(self, job: Job) -> Limits:
        # No process of a run with a timeout can need more CPU time than all
        # the host's CPUs give in that time.
        cpu = math.ceil(job.spec.timeout * cpu_count()) if job.spec.timeout else None
        return Limits(memory=self.memory, processes=self.processes, cpu_seconds=cpu)

    def _start_unsandboxed(self, job: Job, build: BuildResult, log: LinesSink) -> RunningProcess:
        sources = [str(mount.source.resolve()) for mount in job.mounts]
        for mount in job.mounts:
            self._place(job.workdir, mount)
        command = job.spec.command
        if sources and self.private_mounts_available():
            argv = ["unshare", "--mount", "--propagation", "private", "--",
                    "bash", "-c", _READ_ONLY_WRAPPER, "cast-mounts", command, *sources]
        else:
            argv = ["bash", "-c", command]
        popen = subprocess.Popen(
            argv, cwd=job.start_dir, env=self._environment(job, build), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        return LocalProcess(popen, log, self.work_dir / "process-groups")

    def _environment(self, job: Job, build: BuildResult) -> dict[str, str]:
        # The worker's own settings (its token above all) are not the run's business.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        env.pop("VIRTUAL_ENV", None)
        env.update(job.env)
        if job.metrics_dir is not None:
            env.update(run_env(str(job.metrics_dir), env))
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in job.gpus)
        if build.key != HOST_KEY:
            venv = self.envs.path(build.key)
            env["VIRTUAL_ENV"] = str(venv)
            env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    @staticmethod
    def _place(workdir: Path, mount: PreparedMount) -> None:
        """A symlink at the mount's path to its read-only source."""
        target = workdir / mount.path
        target.parent.mkdir(parents=True, exist_ok=True)
        root = os.path.realpath(workdir)
        if os.path.commonpath([root, os.path.realpath(target.parent)]) != root:
            raise BuildFailed(f"mount path {mount.path!r} leads outside the working directory")
        if target.is_symlink() or target.exists():
            remove_tree(target)  # the mount replaces a checkout file of that name
        target.symlink_to(mount.source.resolve())

    def private_mounts_available(self) -> bool:
        """Whether mounts can be made read-only for root (checked once: the worker
        may itself run in a container that forbids mount namespaces)."""
        if os.geteuid() != 0:
            return False  # file modes 0444/0555 protect the sources
        with self._namespace_checked:
            if self._private_mounts is None:
                self._private_mounts = self._probe_private_mounts()
            return self._private_mounts

    def _probe_private_mounts(self) -> bool:
        if not shutil.which("unshare"):
            return False
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="probe-") as probe:
            attempt = f"! touch {shlex.quote(probe)}/written 2>/dev/null && echo read-only"
            result = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", _READ_ONLY_WRAPPER,
                 "cast-mounts", attempt, probe],
                capture_output=True, text=True, stdin=subprocess.DEVNULL,
            )
            return result.stdout.strip() == "read-only"


def _limit_settings() -> tuple[int, int]:
    """Memory per process and processes per run, from CAST_WORKER_MEMORY and
    CAST_WORKER_PIDS_LIMIT (the Docker executor's settings of the same names)."""
    memory_text = os.environ.get("CAST_WORKER_MEMORY") or ""
    processes_text = os.environ.get("CAST_WORKER_PIDS_LIMIT") or ""
    try:
        memory = parse_size(memory_text) if memory_text else int(memory_bytes() * 0.9) or 1 << 40
        processes = int(processes_text) if processes_text else DEFAULT_PROCESSES
        if memory < 1 or processes < 1:
            raise ValueError
    except ValueError:
        raise InvalidExecutorOption(
            f"local executor limits CAST_WORKER_MEMORY={memory_text!r} and CAST_WORKER_PIDS_LIMIT="
            f"{processes_text!r}: memory is bytes or a number with k, m, g or t, processes a whole number, "
            f"both above zero") from None
    return memory, processes
