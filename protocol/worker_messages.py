"""The messages only a worker and the control plane exchange: `Lease` (what
a worker is handed with a run) and its mounts, the worker's reports
(`StatusReport`, `StatusBatchReply`), its heartbeat for all its runs
(`WorkerHeartbeat`, `WorkerHeartbeatReply` and its interval) and one run's
`HeartbeatReply`. Kept apart from `messages`, which the CLI imports on every
call, so the CLI does not build these classes. Plain dataclasses read with
`from_dict` as in `messages`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .messages import FileKind, RunSpec, _known
from .status import RunStatus


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
    or kill overtook). When its reports carried log lines (each
    report the lines printed before it), whether the run's log reached its
    cap, as a log append answers (`truncated`); None, and left out of the
    answer, when they carried none."""

    status: RunStatus
    refused: list[int] = field(default_factory=list)
    log_truncated: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StatusBatchReply":
        return cls(status=RunStatus(data["status"]), refused=[int(index) for index in data.get("refused", [])],
                   log_truncated=data.get("log_truncated"))
