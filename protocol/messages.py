"""The typed messages that cross HTTP between the CLI, the control plane and the worker.

Owns: `RunSpec` (what a run asks for, as stored and as leased), `Lease` (what
a worker is handed with a run), the worker's reports (`StatusReport`,
`StatusBatchReply`, the worker's heartbeat for all its runs: `WorkerHeartbeat`,
`WorkerHeartbeatReply` and its interval; one run's `HeartbeatReply`) and the log stream names (a log's
batches and pages: `logs.py`). Plain dataclasses so the
CLI imports them without pydantic; the server's pydantic schemas embed these
same classes (pydantic validates stdlib dataclasses), so a field is declared
once. `from_dict` reads a JSON object and ignores keys it does not know, so an
older worker keeps working against a newer server.
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from .status import RunStatus


class LogStream(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    # Lines cast itself writes: stage lines, build steps, what was not saved.
    CAST = "cast"

    def __str__(self) -> str:
        return self.value


# A header on a 5xx answer that retrying the same request cannot fix (the
# server's disk is full, say): the worker fails the run with the answer's
# detail instead of retrying it.
PERMANENT_HEADER = "X-Cast-Permanent"


def _known(cls, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class MountSpec:
    """A mount as the run asked for it: the resource and where it appears."""

    resource: str
    path: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MountSpec":
        return cls(**_known(cls, data))


@dataclass
class RunSpec:
    """Everything a run asks for; the server fills in the commit and bundle digest."""

    command: str
    git_url: str | None = None
    commit_ref: str | None = None
    commit_sha: str | None = None
    code_bundle: str | None = None
    # sha256 of the bundle's tar as the server received it; workers fetch by it.
    code_digest: str | None = None
    pip: list[str] = field(default_factory=list)
    pip_req: str | None = None
    # The requirements file's name as the user gave it (its base name), shown by `cast info`.
    pip_req_name: str | None = None
    apt: list[str] = field(default_factory=list)
    docker_image: str | None = None
    mounts: list[MountSpec] = field(default_factory=list)
    machine_type: str = "cpu"
    gpus: int = 0
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    retries: int = 0
    # The folder the command starts in, relative to the code's root (None: the root).
    workdir: str | None = None
    # For a code bundle, what the client's repository was on: its branch (None
    # when detached) and whether tracked files differed from `commit_sha`.
    branch: str | None = None
    dirty: bool | None = None
    # Lines a Hugging Face Trainer prints become metrics (docs/metrics.md).
    log_metrics: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        known = _known(cls, data)
        known["mounts"] = [m if isinstance(m, MountSpec) else MountSpec.from_dict(m) for m in known.get("mounts") or []]
        for name in ("pip", "apt"):
            known[name] = list(known.get(name) or [])
        known["env"] = dict(known.get("env") or {})
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def request_body(self, *, labels: list[str] | None = None, idempotent: bool = False,
                     submit_key: str | None = None) -> dict[str, Any]:
        """The body of `POST /api/v1/runs` for this spec: what a user may set,
        plus labels, whether an earlier run that did the same may answer, and
        the submit key that makes a retried submit answer the run it made."""
        body = {k: v for k, v in self.to_dict().items() if k not in SERVER_FILLED and v is not None}
        if self.git_url:  # the server resolves the commit of a git URL itself
            body.pop("commit_sha", None)
        if labels:
            body["labels"] = list(labels)
        if idempotent:
            body["idempotent"] = True
        if submit_key is not None:
            body["submit_key"] = submit_key
        return body


# A submit key: the client's random name for one submit, the same on each of
# its tries (a balancer may cut a submit its replica carried out).
SUBMIT_KEY_PATTERN = r"^[0-9a-f]{32}$"


def new_submit_key() -> str:
    # secrets.token_hex(16) is this; importing secrets (hmac, hashlib) adds a millisecond to the CLI's start-up.
    return os.urandom(16).hex()


# Fields of a RunSpec that the server fills in; a request that sets them is
# refused. `commit_sha` is the client's HEAD for a code bundle, and resolved
# by the server (never taken from a request) for a git URL.
SERVER_FILLED = frozenset({"code_digest", "gpus"})


# What an upload or a mounted resource is: one file, or a folder of them.
FileKind = Literal["file", "dir"]


@dataclass
class LeaseMount:
    """A mount as the worker places it: what it is and where the server keeps it."""

    resource: str
    path: str
    kind: FileKind
    # The source's path on the server's filesystem; a worker that shares it
    # (the embedded mode) binds it instead of downloading.
    local_path: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LeaseMount":
        return cls(**_known(cls, data))


@dataclass
class Lease:
    """A run handed to a worker: the token that every later report presents."""

    run_id: int
    lease_token: str
    lease_seconds: float
    attempt: int
    spec: RunSpec
    mounts: list[LeaseMount]
    storage_root: str
    # Names the server's storage, so a worker can tell whether it shares it.
    storage_id: str
    # Whether the server's operator allows git sources on the host's own
    # filesystem; a worker clones a file:// URL or a path only when it says so.
    allow_local_git: bool = False
    # The server's cap on one run's outputs (CAST_MAX_OUTPUT_BYTES): a worker
    # whose files add up to more fails the run instead of sending them.
    max_output_bytes: int | None = None
    # The server keeps files in an S3 object store: the worker pushes outputs
    # and fetches mounts by presigned URL (cast.protocol.objects).
    object_store: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Lease":
        known = _known(cls, data)
        known["spec"] = RunSpec.from_dict(known["spec"])
        known["mounts"] = [LeaseMount.from_dict(m) for m in known.get("mounts") or []]
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Leases one heartbeat may carry (a worker's slots are bounded the same).
MAX_HEARTBEAT_LEASES = 10_000


def heartbeat_interval(lease_seconds: float) -> float:
    """How often a worker heartbeats: a third of the lease, so two heartbeats
    may be lost before it ends, and at most a second apart, since the answer is
    how a stop or a kill reaches the worker."""
    return max(0.05, min(lease_seconds / 3, 1.0))


@dataclass
class HeldLease:
    """One run a worker holds, as its heartbeat names it."""

    run_id: int
    lease_token: str


@dataclass
class WorkerHeartbeat:
    """A worker's one heartbeat for every run it holds (`POST /workers/{id}/heartbeat`)."""

    leases: list[HeldLease] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LeaseState:
    """What the server says of one held lease: `lost` (the run was taken back,
    or is gone: abandon it), else the run's status, which carries stop and kill
    (a final one: the worker's own last report got in first)."""

    run_id: int
    lost: bool
    status: RunStatus | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LeaseState":
        status = data.get("status")
        return cls(run_id=int(data["run_id"]), lost=bool(data["lost"]),
                   status=RunStatus(status) if status is not None else None)


@dataclass
class WorkerHeartbeatReply:
    """The answer to a worker's heartbeat: each lease it named, in its order,
    and when the extended leases now end, by the server's clock."""

    leases: list[LeaseState] = field(default_factory=list)
    lease_expires_at: datetime | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorkerHeartbeatReply":
        expires = data.get("lease_expires_at")
        return cls(leases=[LeaseState.from_dict(item) for item in data.get("leases") or []],
                   lease_expires_at=datetime.fromisoformat(expires) if expires else None)


@dataclass
class HeartbeatReply:
    """The answer to one run's own heartbeat (`POST /runs/{id}/heartbeat`):
    the run's status, which carries stop and kill."""

    status: RunStatus
    # When the lease now ends, by the server's clock.
    lease_expires_at: datetime | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeartbeatReply":
        expires = data.get("lease_expires_at")
        return cls(status=RunStatus(data["status"]),
                   lease_expires_at=datetime.fromisoformat(expires) if expires else None)


# Characters of a status report's note and reason the server keeps.
MAX_REASON_LENGTH = 4096


@dataclass
class StatusReport:
    """A worker's report that its run moved to `status`. `limits` (with
    `running`) says what isolation and limits the command runs under, e.g.
    "container, memory 8.0 GB, 4.0 CPUs, 4096 processes"; older workers omit it."""

    lease_token: str
    status: RunStatus
    note: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    limits: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, RunStatus) else v) for k, v in asdict(self).items() if v is not None}


# Status reports one request may carry.
MAX_STATUS_BATCH = 16


@dataclass
class StatusBatchReply:
    """The server's answer to consecutive status reports on one run, sent as
    one request (`POST /runs/{id}/statuses`) and applied in order in one
    transaction: the run's status after them, and the indexes of the reports
    the transition table refused (each skipped as a lone report's 409 would be:
    one already applied by an earlier try of the same batch, or one that a stop
    or kill overtook)."""

    status: RunStatus
    refused: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StatusBatchReply":
        return cls(status=RunStatus(data["status"]), refused=[int(index) for index in data.get("refused", [])])
