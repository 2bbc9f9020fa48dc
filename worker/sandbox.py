"""The local executor's sandbox: each run inside bubblewrap (`bwrap`).

A sandboxed run has its own mount, PID and IPC namespaces and sees only its
working dir (read-write, at its host path), its mounts (read-only bind mounts
at their paths in it, so every tool sees real files), its environment (the
venv and the worker's interpreter, read-only), the system (/usr, /etc, /opt,
/sys, read-only, with the password hashes masked), a private HOME and /tmp
kept beside the working dir, a minimal /dev and its own /proc. CAST_HOME, the
server's storage, the worker's files and other runs are not there at all.
The network is the host's: runs install packages and fetch data.

Under a root worker bwrap sets the view up as root and the command runs as a
uid of its own with every capability dropped (`setpriv`); under any other
user bwrap makes a user namespace and the command keeps the worker's uid. A
run's uid is no other run's on the host while it runs (`take_uid`: one pool
for every root worker, whichever control plane it serves), so its processes
are counted apart.

Limits are the kernel's rlimits, set by `prlimit` before the command starts:
data size per process (memory), tasks of the run's uid (processes; the
executor kills a run that stays at it), CPU time per process where the run has
a timeout. Every process of the run dies with it: when the command ends, the
namespace's init ends and the kernel kills what is left, `setsid` or not; when
the worker dies, `--die-with-parent` does the same.

Where bwrap is missing or the kernel refuses its namespaces, `Sandbox.probe`
raises SandboxUnavailable with the reason, and the worker runs unsandboxed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cast.protocol.units import format_duration, human_size
from cast.worker.fsops import remove_tree

BWRAP = "bwrap"
# Far from login users, systemd's dynamic users (61184-65519) and container
# ranges (524288-1879048191), below 2**31 for tools that sign a uid.
RUN_UID_BASE = 1_900_000_000
RUN_UID_SPAN = 200_000_000
# The host's pool of run uids: a uid is a run's while a lock on its file here
# is held (flock, so a worker that dies frees its runs' uids with its
# descriptors). Run ids alone repeat across control planes sharing a host.
UID_LOCKS = Path("/run/cast/uids")
SANDBOX_HOME = "/home/cast"
SANDBOX_USER = "cast"
DEFAULT_PROCESSES = 4096  # the Docker executor's pids limit

_SYSTEM_TREES = ("/usr", "/etc", "/opt", "/sys")
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # links into /usr on merged systems
_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
_DEVICES = Path("/dev")


class SandboxUnavailable(Exception):
    """No sandbox can be made on this host; the message says why."""


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes of data per process (RLIMIT_DATA)
    processes: int  # tasks of the run's uid (RLIMIT_NPROC)
    cpu_seconds: int | None = None  # CPU time per process (RLIMIT_CPU)

    def describe(self) -> str:
        cpu = (f"{format_duration(self.cpu_seconds)} CPU time per process" if self.cpu_seconds
               else "CPU time unlimited")
        return f"memory {human_size(self.memory)} per process, {self.processes} processes, {cpu}"

    def prlimit(self) -> list[str]:
        argv = ["prlimit", f"--data={self.memory}", f"--nproc={self.processes}"]
        if self.cpu_seconds:
            argv.append(f"--cpu={self.cpu_seconds}")
        return [*argv, "--"]


class RunUid:
    """Who a run's command runs as, held until `release` (see `take_uid`)."""

    def __init__(self, uid: int, lock: int | None = None, path: Path | None = None):
        self.uid, self._lock, self._path = uid, lock, path

    def release(self) -> None:
        """Give the uid back to the pool; once only, later calls do nothing."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        # Removed while still locked: whoever opened the file meanwhile finds,
        # once it holds the lock, that the path names another file or none.
        try:
            os.unlink(self._path)
        finally:
            os.close(lock)


def take_uid(run_id: int, locks: Path = UID_LOCKS) -> RunUid:
    """A uid for run `run_id` that no other run on this host holds: the root
    worker's first choice is RUN_UID_BASE + the run id, else the next free one;
    any other worker's runs keep its own uid (a user namespace each)."""
    if os.geteuid() != 0:
        return RunUid(os.geteuid())
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    for step in range(RUN_UID_SPAN):  # ends within the number of runs on the host
        uid = RUN_UID_BASE + (run_id + step) % RUN_UID_SPAN
        path = locks / str(uid)
        lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(lock).st_ino:
                return RunUid(uid, lock, path)
        except (BlockingIOError, FileNotFoundError):  # held, or released and removed as we opened it
            pass
        os.close(lock)
    raise SandboxUnavailable("every run uid of this host is taken")


@dataclass(frozen=True)
class SandboxedRun:
    """What one run's sandbox is made of (see `Sandbox.prepare`); `end` frees
    what it holds on the host once its command is over."""

    workdir: Path
    area: Path  # the run's HOME, /tmp and account files, beside its working dir
    held_uid: RunUid  # who the command runs as (the worker's own uid when not root)
    read_only: tuple[Path, ...]  # the run's environment: venv and interpreter
    mounts: tuple[tuple[Path, Path], ...]  # (source, target in the working dir)
    gpus: bool
    limits: Limits
    metrics: Path | None = None  # the metrics folder, bound read-write at its host path

    @property
    def home(self) -> Path:
        return self.area / "home"

    @property
    def tmp(self) -> Path:
        return self.area / "tmp"

    @property
    def uid(self) -> int:
        return self.held_uid.uid

    def end(self) -> None:
        """Remove the run's HOME and /tmp and give its uid back. A later run
        given the uid sees none of this run's files: a sandbox shows its own."""
        try:
            remove_tree(self.area)
        finally:
            self.held_uid.release()


def interpreter_dirs() -> list[Path]:
    """The worker's interpreter, which every venv is layered over."""
    dirs = {Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return sorted(dirs)


def _inside_system(path: Path) -> bool:
    return any(path == Path(tree) or Path(tree) in path.parents for tree in _SYSTEM_TREES)


def _lchown_tree(root: Path, uid: int) -> None:
    """Hand a tree to `uid`; links are changed themselves, never followed."""
    for folder, dirs, files in os.walk(root):  # os.walk does not descend into linked folders
        os.lchown(folder, uid, uid)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, uid)


def make_mount_point(workdir: Path, target: Path, source: Path) -> None:
    """An empty file or folder at `target` for a bind mount of `source`; a
    checkout entry of that name is replaced. Refused where the path leads out
    of the working dir (through a link of the checkout)."""
    root = os.path.realpath(workdir)
    if os.path.commonpath([root, os.path.realpath(target.parent)]) != root:
        raise ValueError(f"mount path {os.path.relpath(target, workdir)!r} leads outside the working directory")
    if target.is_symlink() or target.exists():
        remove_tree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target.mkdir()
    else:
        target.touch()


class Sandbox:
    """bwrap on this host, known to work (see `probe`). `hidden`: the worker's
    own folders (its work dir, CAST_HOME), covered by an empty tmpfs where they
    lie inside a system tree that runs see (CAST_HOME under /opt, say)."""

    def __init__(self, bwrap: str, hidden: list[Path]):
        self.bwrap = bwrap
        self.hidden = [Path(os.path.realpath(path)) for path in hidden]
        self.as_root = os.geteuid() == 0

    @classmethod
    def probe(cls, binary: str, scratch: Path, *, hidden: list[Path]) -> "Sandbox":
        """A sandbox made with `binary` once, in `scratch`, the way runs are;
        SandboxUnavailable with the reason when that fails."""
        found = shutil.which(binary)
        if not found:
            raise SandboxUnavailable(f"bubblewrap ({binary}) is not installed (Debian: apt-get install bubblewrap)")
        sandbox = cls(found, hidden)
        workdir, area, hidden = scratch / "work", scratch / "area", scratch / "hidden"
        shutil.rmtree(scratch, ignore_errors=True)
        workdir.mkdir(parents=True)
        hidden.touch()
        run = None
        try:
            run = sandbox.prepare(run_id=0, workdir=workdir, area=area, read_only=interpreter_dirs(), mounts=[],
                                  gpus=False, limits=Limits(memory=1 << 30, processes=64))
            # Inside, the worker's files must not exist and the working dir must be writable.
            check = f"test ! -e {shlex.quote(str(hidden))} && touch probe"
            try:
                result = subprocess.run(sandbox.argv(run, check), cwd=workdir, capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxUnavailable(f"{found} could not run: {exc}") from None
            if result.returncode != 0 or not (workdir / "probe").exists():
                said = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
                raise SandboxUnavailable(f"{found} cannot make a sandbox here: {said}")
        finally:
            if run is not None:
                run.end()
            shutil.rmtree(scratch, ignore_errors=True)
        return sandbox

    def prepare(self, *, run_id: int, workdir: Path, area: Path, read_only: list[Path],
                mounts: list[tuple[Path, Path]], gpus: bool, limits: Limits,
                metrics: Path | None = None) -> SandboxedRun:
        """Make the run's area (HOME, /tmp), its mount points, and under root
        hand the working dir and the files of the metrics folder (not the
        folder: the run may write its metrics file, never replace it) to the
        run's uid (taken here; `SandboxedRun.end` gives it back). ValueError
        for a mount path that leads out of the working dir."""
        for source, target in mounts:
            make_mount_point(workdir, target, source)
        run = SandboxedRun(workdir=workdir, area=area, held_uid=take_uid(run_id), read_only=tuple(read_only),
                           mounts=tuple(mounts), gpus=gpus, limits=limits, metrics=metrics)
        try:
            self._make_area(run)
        except BaseException:
            run.end()
            raise
        return run

    def _make_area(self, run: SandboxedRun) -> None:
        area, uid, workdir, metrics = run.area, run.uid, run.workdir, run.metrics
        area.mkdir(mode=0o700, parents=True)
        for private in (run.home, run.tmp):
            private.mkdir(mode=0o700)
        if self.as_root:
            # The account files a root worker's run user needs (whoami, getpass, ssh, git).
            (area / "passwd").write_text(Path("/etc/passwd").read_text()
                                         + f"{SANDBOX_USER}:x:{uid}:{uid}:cast run:{SANDBOX_HOME}:/bin/bash\n")
            (area / "group").write_text(Path("/etc/group").read_text() + f"{SANDBOX_USER}:x:{uid}:\n")
            for private in (run.home, run.tmp):
                os.lchown(private, uid, uid)
            _lchown_tree(workdir, uid)
            if metrics is not None:
                for entry in metrics.iterdir():
                    os.lchown(entry, uid, uid)

    def argv(self, run: SandboxedRun, command: str, *, info_fd: int | None = None,
             start_dir: Path | None = None) -> list[str]:
        """The bwrap command line that runs `command` with bash in `run`'s
        sandbox, in `start_dir` (a folder of its working dir; default the working dir)."""
        argv = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session"]
        if not self.as_root:
            argv.append("--unshare-user")
        if info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        argv += _system_view()
        for path in self.hidden:
            if _inside_system(path) and path.is_dir():
                argv += ["--tmpfs", str(path)]
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
        if run.gpus:
            for device in sorted(_DEVICES.glob("nvidia*")):
                argv += ["--dev-bind", str(device), str(device)]
        argv += ["--bind", str(run.tmp), "/tmp", *_folders_above(Path(SANDBOX_HOME)),
                 "--bind", str(run.home), SANDBOX_HOME]
        if self.as_root:
            argv += ["--ro-bind", str(run.area / "passwd"), "/etc/passwd",
                     "--ro-bind", str(run.area / "group"), "/etc/group"]
        # After /tmp and HOME: the environment and the working dir may lie below either on the host.
        for path in run.read_only:
            if path.exists() and not _inside_system(path):
                argv += [*_folders_above(path), "--ro-bind", str(path), str(path)]
        argv += [*_folders_above(run.workdir), "--bind", str(run.workdir), str(run.workdir)]
        for source, target in run.mounts:
            argv += ["--ro-bind", str(source), str(target)]
        if run.metrics is not None:
            argv += [*_folders_above(run.metrics), "--bind", str(run.metrics), str(run.metrics)]
        argv += ["--chdir", str(start_dir or run.workdir), "--setenv", "HOME", SANDBOX_HOME, "--setenv", "TMPDIR", "/tmp"]
        if self.as_root:
            argv += ["--setenv", "USER", SANDBOX_USER, "--setenv", "LOGNAME", SANDBOX_USER]
        argv += ["--", *run.limits.prlimit()]
        if self.as_root:
            argv += ["setpriv", f"--reuid={run.uid}", f"--regid={run.uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        return [*argv, "bash", "-c", command]

    def describe(self, run: SandboxedRun) -> str:
        """The line a run's log gets: what holds it and its limits."""
        who = f"uid {run.uid}" if self.as_root else "a user namespace"
        return f"Sandbox: bubblewrap, {who}; limits: {run.limits.describe()}"


def _system_view() -> list[str]:
    argv = []
    for tree in _SYSTEM_TREES:
        if os.path.isdir(tree):
            argv += ["--ro-bind", tree, tree]
    for top in _TOP_LEVEL:
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for secret in _SECRETS:
        if os.path.exists(secret):
            argv += ["--ro-bind", "/dev/null", secret]
    # DNS where /etc/resolv.conf points into /run (systemd-resolved).
    resolv = os.path.realpath("/etc/resolv.conf")
    if os.path.exists(resolv) and not _inside_system(Path(resolv)):
        argv += ["--ro-bind", resolv, resolv]
    return argv


def _folders_above(path: Path) -> list[str]:
    """The folders leading to a bind mount, traversable by the run (bwrap would
    make the missing ones 0700, root's); those that exist stay as they are."""
    argv = []
    for folder in reversed(path.parents[:-1]):
        argv += ["--perms", "0755", "--dir", str(folder)]
    return argv


def read_info(fd: int) -> dict | None:
    """bwrap's --info-fd JSON (the sandbox's init pid and namespaces) once the
    sandbox exists; None when bwrap failed before."""
    with os.fdopen(fd, "rb") as info:
        text = info.read()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def namespace_tasks(namespace: int, init: int) -> list[tuple[int, int]]:
    """(pid, thread count) of every process in the pid namespace `namespace`
    but its init, as the host sees them."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == init:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino == namespace:
                found.append((int(entry), len(os.listdir(f"/proc/{entry}/task"))))
        except OSError:  # ended meanwhile, or not ours to look at
            continue
    return found
