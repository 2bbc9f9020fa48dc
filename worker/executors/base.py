"""The one seam between the worker's agent and the ways it can execute a run.

The agent (cast.worker.agent) owns the run's lifecycle: lease, heartbeats,
status changes, checkout, fetching mounts, collecting and pushing outputs.
An executor owns only what differs between a local process and a container:
building the run's environment, starting the command with the mounts in place,
and stopping or killing it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cast.protocol.messages import LogStream, RunSpec

# (stream, text): text is one line without its newline; LogStream.CAST is for
# build output and messages from cast itself.
LogSink = Callable[[LogStream, str], None]
# (stream, lines): a command's output, the lines of one read at a time (each
# as a LogSink's text), so a flood costs a call per read, not per line.
LinesSink = Callable[[LogStream, list[str]], None]


class BuildFailed(Exception):
    """The environment could not be built; the message is the reason shown to the user
    (the failing step's last lines)."""


class ExecutorUnavailable(Exception):
    """The executor cannot run on this host (no Docker engine, unsupported option)."""


class InvalidExecutorOption(ExecutorUnavailable):
    """An option of the executor has a value it cannot use: the worker's settings
    are wrong, whichever executor `auto` would otherwise pick."""


@dataclass(frozen=True)
class PreparedMount:
    """A mount whose data is on this host, read-only, ready to be placed."""

    source: Path  # absolute host path of the file or folder
    path: str  # relative path inside the working directory


@dataclass
class Job:
    run_id: int
    spec: RunSpec
    workdir: Path  # host folder: the checkout, then the run's own files
    mounts: list[PreparedMount] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)  # device indices given to this run
    env: dict[str, str] = field(default_factory=dict)  # CAST_RUN_ID, the user's --env, ...

    @property
    def start_dir(self) -> Path:
        """Where the command starts: the spec's workdir in the checkout (which
        placing the code checked), else the working dir itself."""
        return self.workdir / self.spec.workdir if self.spec.workdir else self.workdir
    # Host folder of the run's metrics file and helper (cast.worker.metrics),
    # beside the working dir; the executor makes it writable by the run.
    metrics_dir: Path | None = None


@dataclass(frozen=True)
class BuildResult:
    key: str  # the environment's content hash
    cached: bool  # True when nothing had to be built
    description: str = ""  # e.g. the image tag, for the log


@dataclass(frozen=True)
class ExitResult:
    exit_code: int
    reason: str | None = None  # e.g. "out of memory"


@dataclass(frozen=True)
class CacheEntry:
    key: str
    holds: str  # what the environment holds, e.g. "pip: tqdm six; apt: jq"
    size: int  # bytes
    last_used: float  # unix time


class RunningProcess(abc.ABC):
    """A started command. Its output goes to the LinesSink given to `start`."""

    @abc.abstractmethod
    def wait(self) -> ExitResult:
        """Block until the command has ended and all its output was sent to the sink."""

    @abc.abstractmethod
    def terminate(self, grace: float) -> None:
        """SIGTERM, then SIGKILL once `grace` seconds have passed. Does not block."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL at once. Does not block."""

    def release(self) -> None:
        """Free what the ended command still holds on the host (its container,
        say). The agent calls it after `wait`, once the run's final status was
        reported, so the user does not wait for it. Nothing by default."""


class Executor(abc.ABC):
    name: str  # "local" or "docker"
    sandboxed = True  # runs see nothing of the host they were not given (False: the local executor without bwrap)

    @abc.abstractmethod
    def build(self, job: Job, log: LogSink) -> BuildResult:
        """Make the run's environment exist, reusing a cached one with the same key.
        Concurrent calls needing the same new environment build it once.
        Raises BuildFailed."""

    @abc.abstractmethod
    def start(self, job: Job, build: BuildResult, log: LinesSink) -> RunningProcess:
        """Run `job.spec.command` with bash in the working directory, the mounts
        placed read-only, `job.env` set and only `job.gpus` visible."""

    @abc.abstractmethod
    def describe_limits(self, job: Job) -> str:
        """The isolation and limits `start` gives `job`, as the run records
        them (`cast info`'s Limits row)."""

    def cleanup_stale(self) -> None:
        """Remove what runs of an earlier, crashed worker left behind."""

    @abc.abstractmethod
    def cache_entries(self) -> list[CacheEntry]:
        """The cached environments."""

    @abc.abstractmethod
    def prune_cache(self, *, older_than: float | None, everything: bool) -> list[CacheEntry]:
        """Remove environments unused for `older_than` seconds (or all); return them."""
