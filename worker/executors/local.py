"""The local executor: a run is a process group on the worker's own host.

The environment is a cached virtualenv over the worker's interpreter
(cast.worker.envs). Mounts are symlinks to their read-only sources, placed in
O(1). File modes alone do not stop root, so when the worker runs as root the
command runs in a private mount namespace (`unshare -m`) in which every mount
source is bind-remounted read-only: a write through a mount fails with EROFS
even for root, and nothing changes outside the run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from cast.worker.envs import HOST_KEY, EnvCache
from cast.worker.executors.base import (
    BuildFailed,
    BuildResult,
    CacheEntry,
    Executor,
    ExitResult,
    Job,
    LogSink,
    PreparedMount,
    RunningProcess,
)
from cast.worker.fsops import remove_tree

MAX_LINE = 64 * 1024  # a longer line reaches the log in pieces of this size

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
    def __init__(self, popen: subprocess.Popen, log: LogSink, records: Path):
        self._popen = popen
        self._pgid = popen.pid  # start_new_session: the command leads its own group
        # Lets a later worker on this work dir end the group should this one die.
        records.mkdir(parents=True, exist_ok=True)
        self._record = records / str(self._pgid)
        self._record.write_text(_start_time(self._pgid) or "")
        self._readers = [
            threading.Thread(target=self._pump, args=(popen.stdout, "stdout", log), daemon=True),
            threading.Thread(target=self._pump, args=(popen.stderr, "stderr", log), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(pipe, stream: str, log: LogSink) -> None:
        with pipe:
            for raw in iter(lambda: pipe.readline(MAX_LINE), b""):
                log(stream, raw.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r"))

    def wait(self) -> ExitResult:
        code = self._popen.wait()
        # What the command left running in its group would hold the pipes open.
        _signal_group(self._pgid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(timeout=5)
        self._record.unlink(missing_ok=True)
        if code < 0:
            name = signal.Signals(-code).name
            return ExitResult(exit_code=128 - code, reason=f"ended by {name}")
        return ExitResult(exit_code=code)

    def terminate(self, grace: float) -> None:
        _signal_group(self._pgid, signal.SIGTERM)
        timer = threading.Timer(grace, self._kill_if_running)
        timer.daemon = True
        timer.start()

    def _kill_if_running(self) -> None:
        if self._popen.poll() is None:
            self.kill()

    def kill(self) -> None:
        _signal_group(self._pgid, signal.SIGKILL)


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, work_dir: Path, **options):
        self.work_dir = Path(work_dir)
        self.envs = EnvCache(self.work_dir / "envs")
        self._namespace_checked = threading.Lock()
        self._private_mounts: bool | None = None

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
        if self.envs.root.is_dir():
            for env in self.envs.root.iterdir():
                if env.is_dir() and not (env / ".cast-env.json").exists():
                    remove_tree(env)

    # --- running ----------------------------------------------------------

    def start(self, job: Job, build: BuildResult, log: LogSink) -> RunningProcess:
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
            argv, cwd=job.workdir, env=self._environment(job, build), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        return LocalProcess(popen, log, self.work_dir / "process-groups")

    def _environment(self, job: Job, build: BuildResult) -> dict[str, str]:
        # The worker's own settings (its token above all) are not the run's business.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        env.pop("VIRTUAL_ENV", None)
        env.update(job.env)
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
