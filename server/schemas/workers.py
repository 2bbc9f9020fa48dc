"""What a worker sends and is answered: registering, the claim of a run,
heartbeats, status reports (one or a batch), checked and handed on as the
`cast.protocol.messages` types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from cast.protocol.logs import MAX_BATCH_LINES
from cast.protocol.messages import SUBMIT_KEY_PATTERN
from cast.protocol.worker_messages import (MAX_HEARTBEAT_LEASES, MAX_REASON_LENGTH, MAX_STATUS_BATCH, HeldLease,
                                           StatusReport)
from cast.protocol.status import RunStatus
from cast.server.models import MAX_INTEGER
from cast.server.schemas._base import LeaseToken, _In
from cast.server.schemas.logs import LogLinesIn


class WorkerRegister(_In):
    name: str = Field(min_length=1, max_length=200)
    executor: str = Field(min_length=1, max_length=32)
    cpus: int = Field(default=0, ge=0, le=1_000_000)
    memory: int = Field(default=0, ge=0, le=2**62)
    gpus: list[Annotated[int, Field(ge=0, le=1024)]] = Field(default_factory=list, max_length=1024)
    max_runs: int = Field(default=1, ge=1, le=10_000)
    sandboxed: bool = False  # a worker that does not say so is taken as unsandboxed


class WorkerRegistered(BaseModel):
    id: str
    lease_seconds: float


class LeaseRequest(_In):
    free_gpus: int = Field(default=0, ge=0, le=1024)
    wait: float = Field(default=0, ge=0, le=30)
    # The worker's name for this claim, the same on each try and the lease's
    # token if it leases a run: a try whose earlier try leased one gets it again.
    claim: str | None = Field(default=None, pattern=SUBMIT_KEY_PATTERN)


class HeartbeatIn(_In):
    lease_token: LeaseToken


class HeldLeaseIn(_In):
    run_id: int = Field(ge=1, le=MAX_INTEGER)
    lease_token: LeaseToken


class WorkerHeartbeatIn(_In):
    """Every run a worker holds, in one heartbeat (cast.protocol.messages.WorkerHeartbeat)."""

    leases: list[HeldLeaseIn] = Field(max_length=MAX_HEARTBEAT_LEASES)

    def to_leases(self) -> list[HeldLease]:
        return [HeldLease(run_id=lease.run_id, lease_token=lease.lease_token) for lease in self.leases]


class StatusChangeIn(_In):
    """One status report of a batch: its run's lease token is the batch's."""

    status: RunStatus
    note: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)
    exit_code: int | None = Field(default=None, ge=-(2**31), le=MAX_INTEGER)
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)
    limits: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)


class StatusIn(StatusChangeIn):
    lease_token: LeaseToken

    def to_report(self) -> StatusReport:
        return StatusReport(**self.model_dump())


class BatchedStatusIn(StatusChangeIn):
    # Lines the run printed before this report, stored ahead of it in the same
    # transaction: a short run's statuses, its lines and its outcome go in one
    # request.
    logs: LogLinesIn | None = None


class StatusBatchIn(_In):
    """Consecutive status reports on one run, applied in order (StatusBatchReply)."""

    lease_token: LeaseToken
    reports: list[BatchedStatusIn] = Field(min_length=1, max_length=MAX_STATUS_BATCH)

    @model_validator(mode="after")
    def _bounded(self) -> "StatusBatchIn":
        if sum(len(run.lines) for logs in self.lines_before() if logs for run in logs.runs) > MAX_BATCH_LINES:
            raise ValueError(f"a batch of status reports carries at most {MAX_BATCH_LINES} log lines")
        return self

    def to_reports(self) -> list[StatusReport]:
        return [StatusReport(lease_token=self.lease_token, **report.model_dump(exclude={"logs"}))
                for report in self.reports]

    def lines_before(self) -> list[LogLinesIn | None]:
        """Each report's lines, None for one that carries none."""
        return [report.logs for report in self.reports]
