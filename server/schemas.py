"""Pydantic shapes of the HTTP API (see docs/api.md); ORM tables live in models.py.

Input models validate with the validators of `cast.protocol.validate`, so the CLI,
the server and the worker refuse the same things with the same messages. What
crosses HTTP as a `cast.protocol.messages` type (the run spec, the lease, the
heartbeat's answer, a worker's status report, log stream names) is declared
there once: answers embed those dataclasses, and the input models that check a
body (`RunCreate`, `StatusIn`) hand the services that type.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cast.protocol import hyper
from cast.protocol import metrics as metric_rules
from cast.protocol import validate as wire
from cast.protocol.hyper import Goal, MetricAgg, SearchKind, SearchStatus
from cast.protocol.logs import MAX_BATCH_LINES
from cast.protocol.messages import SUBMIT_KEY_PATTERN
from cast.protocol.messages import (MAX_HEARTBEAT_LEASES, MAX_REASON_LENGTH, MAX_STATUS_BATCH, HeldLease, LogStream,
                                    MountSpec, RunSpec, StatusReport)
from cast.protocol.outputs import StagedOutputs
from cast.protocol.status import RunStatus
from cast.server.models import MAX_INTEGER

_NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f]*$")
CODE_KEY_PATTERN = r"^[0-9a-f]{64}$"
LeaseToken = Annotated[str, Field(min_length=1, max_length=64)]


class _In(BaseModel):
    # A length cap on every string also makes pydantic check that it is valid
    # Unicode: a JSON body may escape a lone surrogate ("\udcff"), which
    # neither SQLite nor a JSON answer can encode. Bodies are capped anyway.
    model_config = ConfigDict(extra="forbid", str_max_length=16 * 1024 * 1024)
    # Fields whose text may hold NUL: stored as JSON, which escapes it. Any
    # other text is refused with it, since PostgreSQL's text cannot hold one
    # (SQLite's can: the same request must be bad input on both).
    NUL_ALLOWED: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_nul(self):
        for name, value in self:
            if name not in self.NUL_ALLOWED and _holds_nul(value):
                raise ValueError(f"{name} must not contain a NUL character")
        return self


def _holds_nul(value: Any) -> bool:
    """Whether text in `value` (a string, or a list or dict of them) holds NUL; nested models check themselves."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_holds_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    return False


def _one_line(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not _NO_CONTROL.match(value):
        raise ValueError(f"{what} must not contain control characters")
    if value.startswith("-"):
        raise ValueError(f"{what} {value!r} must not start with '-'")
    return value


# --- runs ------------------------------------------------------------------

class MountIn(_In):
    resource: str = Field(max_length=4096)
    path: str | None = Field(default=None, max_length=4096)

    def to_mount(self) -> wire.Mount:
        # Resource and path come apart, so a stored name holding ':' mounts too.
        return wire.make_mount(self.resource, self.path)

    @model_validator(mode="after")
    def _valid(self) -> "MountIn":
        mount = self.to_mount()
        self.resource, self.path = mount.resource, mount.path
        return self


class RunCreate(_In):
    """The body of `POST /runs`: the fields of `RunSpec.request_body()`, checked."""

    command: str = Field(min_length=1, max_length=wire.MAX_COMMAND_LENGTH)
    git_url: str | None = Field(default=None, min_length=1, max_length=4096)
    commit_ref: str | None = Field(default=None, min_length=1, max_length=256)
    code_bundle: str | None = Field(default=None, pattern=CODE_KEY_PATTERN)
    pip: list[str] = Field(default_factory=list, max_length=500)
    pip_req: str | None = Field(default=None, max_length=1024 * 1024)
    pip_req_name: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[^/\x00-\x1f\x7f]+$")
    apt: list[Annotated[str, Field(max_length=wire.MAX_APT_PACKAGE_LENGTH)]] = Field(default_factory=list,
                                                                                      max_length=500)
    docker_image: str | None = Field(default=None, min_length=1, max_length=512)
    mounts: list[MountIn] = Field(default_factory=list, max_length=200)
    machine_type: str = Field(default="cpu", max_length=16)
    env: dict[str, str] = Field(default_factory=dict, max_length=500)
    labels: list[Annotated[str, Field(max_length=wire.MAX_LABEL_LENGTH)]] = Field(default_factory=list,
                                                                                 max_length=100)
    timeout: float | None = Field(default=None, gt=0, le=366 * 24 * 3600)
    retries: int = Field(default=0, ge=0, le=10)
    workdir: str | None = Field(default=None, max_length=wire.MAX_PATH_LENGTH)
    # What the client's repository was on, for a code bundle only: a git
    # URL's commit is resolved by the server, never taken from the request.
    commit_sha: str | None = Field(default=None, pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})$")
    branch: str | None = Field(default=None, min_length=1, max_length=256)
    dirty: bool | None = None
    # Lines a Hugging Face Trainer prints become metrics (docs/metrics.md).
    log_metrics: bool = True
    # Answer with the newest complete run that did exactly this, if there is one.
    idempotent: bool = False
    # Queue it even when no present worker could run it (it waits for one that can).
    queue_anyway: bool = False
    # The client's name for this submit, the same on each try: a retry whose
    # first try made a run answers that run (messages.SUBMIT_KEY_PATTERN).
    submit_key: str | None = Field(default=None, pattern=SUBMIT_KEY_PATTERN)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("command must not contain a NUL byte")
        return value

    @field_validator("git_url")
    @classmethod
    def _git_url(cls, value: str | None) -> str | None:
        return _one_line(value, "git_url")

    @field_validator("commit_ref")
    @classmethod
    def _commit_ref(cls, value: str | None) -> str | None:
        value = _one_line(value, "commit_ref")
        if value is not None and (" " in value or ".." in value):
            raise ValueError(f"commit_ref {value!r} is not a git ref")
        return value

    @field_validator("docker_image")
    @classmethod
    def _docker_image(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", value):
            raise ValueError(f"docker_image {value!r} is not an image reference")
        return value

    @field_validator("pip")
    @classmethod
    def _pip(cls, value: list[str]) -> list[str]:
        return [wire.validate_pip_spec(item) for item in value]

    @field_validator("pip_req")
    @classmethod
    def _pip_req(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for line in value.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                wire.validate_pip_spec(line)
        return value

    @field_validator("apt")
    @classmethod
    def _apt(cls, value: list[str]) -> list[str]:
        return [wire.validate_apt_package(item) for item in value]

    @field_validator("machine_type")
    @classmethod
    def _machine_type(cls, value: str) -> str:
        wire.parse_machine_type(value)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if "\x00" in text:
                raise ValueError(f"environment variable {name[:256]} must not contain a NUL byte")
        return wire.validate_env(value)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(wire.validate_label(label) for label in value))

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        return None if value is None else wire.validate_workdir(value)

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        return _one_line(value, "branch")

    @model_validator(mode="after")
    def _whole(self) -> "RunCreate":
        if self.git_url and self.code_bundle:
            raise ValueError("give git_url or code_bundle, not both")
        if self.commit_ref and not self.git_url:
            raise ValueError("commit_ref needs git_url")
        if not self.code_bundle and (self.commit_sha or self.branch or self.dirty is not None):
            raise ValueError("commit_sha, branch and dirty describe a code_bundle; a git_url's commit is "
                             "resolved by the server (give commit_ref)")
        wire.validate_mounts([m.to_mount() for m in self.mounts])
        return self

    def to_spec(self, *, commit_sha: str | None, code_digest: str | None) -> RunSpec:
        """The spec to store, with what the server resolved (a git URL's commit, the
        bundle's digest); a bundle's commit is the client's HEAD, as given."""
        given = self.model_dump(exclude={"labels", "mounts", "idempotent", "queue_anyway", "commit_sha",
                                              "submit_key"})
        if self.git_url:  # no ref: the remote's HEAD, recorded as such
            given["commit_ref"] = self.commit_ref or "HEAD"
        return RunSpec(
            **given, commit_sha=commit_sha or self.commit_sha, code_digest=code_digest,
            gpus=wire.parse_machine_type(self.machine_type),
            mounts=[MountSpec(resource=m.resource, path=m.path) for m in self.mounts],
        )


class TransitionOut(BaseModel):
    status: RunStatus
    at: datetime
    note: str | None


class RunSummary(BaseModel):
    id: int
    status: RunStatus
    owner: str
    spec: RunSpec
    labels: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    reason: str | None
    attempt: int
    worker: str | None
    executor: str | None
    limits: str | None  # the isolation and limits of its command, once running
    mounted_by: list[int]
    # The hyperparameter search that made it, its trial number and parameters.
    search_id: int | None = None
    trial: int | None = None
    search_params: dict[str, Any] | None = None
    deleted_at: datetime | None  # when its stored outputs were freed (`cast rm`, prune)


class RunOut(RunSummary):
    transitions: list[TransitionOut]


class RunCreated(RunOut):
    # True when `idempotent` found an earlier complete run that did the same (HTTP 200, not 201).
    reused: bool


class RunList(BaseModel):
    runs: list[RunSummary]
    next_before: int | None
    total: int  # runs matching the filters, over every page


class LabelIn(_In):
    label: str = Field(max_length=wire.MAX_LABEL_LENGTH)

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return wire.validate_label(value)


# --- logs ------------------------------------------------------------------

class LogRunIn(_In):
    NUL_ALLOWED = frozenset({"lines"})  # a run may print any bytes
    stream: LogStream
    # The server splits a line longer than CAST_MAX_LOG_LINE_CHARS (the worker already does).
    lines: list[Annotated[str, Field(max_length=1024 * 1024)]] = Field(min_length=1, max_length=MAX_BATCH_LINES)
    time: datetime | None = None


class LogAppend(_In):
    """A worker's batch: `cast.protocol.logs.LogBatch`."""

    lease_token: LeaseToken
    seq: int = Field(ge=0, le=MAX_INTEGER)
    runs: list[LogRunIn] = Field(max_length=MAX_BATCH_LINES)

    @model_validator(mode="after")
    def _bounded(self) -> "LogAppend":
        if sum(len(run.lines) for run in self.runs) > MAX_BATCH_LINES:
            raise ValueError(f"a log batch holds at most {MAX_BATCH_LINES} lines")
        return self


class LogAppended(BaseModel):
    next_offset: int
    # True once the run's log reached its cap: later stdout/stderr lines are dropped.
    truncated: bool


class LogChunkOut(BaseModel):
    """`cast.protocol.logs.LogChunk`: lines `offset ..` of one stream."""

    offset: int
    stream: LogStream
    time: datetime
    lines: list[str]


class LogPage(BaseModel):
    """`cast.protocol.logs.LogPage` (the read route answers it without pydantic; this documents it)."""

    chunks: list[LogChunkOut]
    next_offset: int
    finished: bool


# --- metrics ---------------------------------------------------------------

class MetricPointIn(_In):
    """A point as the worker sends it, checked again with cast.protocol.metrics."""

    name: str = Field(max_length=metric_rules.MAX_NAME_LENGTH)
    # Strict: `true` and "0.5" are no measurements, "5" no step.
    value: float = Field(strict=True)
    step: int | None = Field(default=None, strict=True)
    time: datetime | None = None

    @model_validator(mode="after")
    def _point(self) -> "MetricPointIn":
        try:
            metric_rules.check_point(self.name, self.value, self.step)
        except metric_rules.PointRefused as exc:
            raise ValueError(str(exc)) from None
        return self


class MetricAppend(_In):
    lease_token: LeaseToken
    seq: int = Field(ge=0, le=MAX_INTEGER)
    points: list[MetricPointIn] = Field(max_length=metric_rules.MAX_BATCH)


class MetricAppended(BaseModel):
    next_offset: int


class MetricSummary(BaseModel):
    name: str
    count: int
    last: float
    min: float
    max: float
    last_step: int | None
    last_time: datetime


class MetricSummaries(BaseModel):
    metrics: list[MetricSummary]
    next_offset: int
    finished: bool


class MetricPointOut(BaseModel):
    offset: int
    name: str
    step: int | None
    value: float
    time: datetime


class MetricChunk(BaseModel):
    points: list[MetricPointOut]
    next_offset: int
    finished: bool


# --- workers and leases -----------------------------------------------------

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


class WorkerStatus(BaseModel):
    name: str
    id: str
    executor: str
    sandboxed: bool
    cpus: int
    memory: int  # bytes
    gpus: int
    max_runs: int
    last_seen_at: datetime
    # The runs it holds now that the caller may see, and how many it holds in all.
    runs: list[int]
    busy: int


class QueueStatus(BaseModel):
    total: int
    by_machine_type: dict[str, int]


class ServerInfo(BaseModel):
    url: str
    version: str
    # Where its records and files are; shown to admins only.
    database: str | None
    storage: str | None
    lease_seconds: float
    # A worker counts as present if seen within this long (docs/deployment.md).
    presence_seconds: float


class ServerStatus(BaseModel):
    server: ServerInfo
    workers: list[WorkerStatus]
    queue: QueueStatus


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


class StatusBatchIn(_In):
    """Consecutive status reports on one run, applied in order (StatusBatchReply)."""

    lease_token: LeaseToken
    reports: list[StatusChangeIn] = Field(min_length=1, max_length=MAX_STATUS_BATCH)

    def to_reports(self) -> list[StatusReport]:
        return [StatusReport(lease_token=self.lease_token, **report.model_dump()) for report in self.reports]


# --- outputs, uploads, code -----------------------------------------------------

class StagedFileIn(_In):
    path: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=CODE_KEY_PATTERN)


class StagedOutputsIn(_In):
    lease_token: LeaseToken
    staging: str = Field(min_length=1, max_length=128)
    files: list[StagedFileIn]
    folders: list[Annotated[str, Field(min_length=1, max_length=4096)]] = []

    def to_staged(self) -> StagedOutputs:
        return StagedOutputs.from_dict(self.model_dump())


class ObjectManifestIn(_In):
    """An output push to the object store (cast.protocol.objects.ObjectManifest)."""

    lease_token: LeaseToken
    files: list[StagedFileIn]
    folders: list[Annotated[str, Field(min_length=1, max_length=4096)]] = []


class UploadManifestIn(_In):
    """`cast upload` to the object store (cast.protocol.objects.UploadManifest)."""

    kind: Literal["file", "dir"]
    files: list[StagedFileIn]
    replace: bool = False
    folders: list[Annotated[str, Field(min_length=1, max_length=4096)]] = []


class PartUploadOut(BaseModel):
    number: int
    url: str


class FileUploadOut(BaseModel):
    path: str
    url: str | None = None
    part_size: int = 0
    parts: list[PartUploadOut] = []


class ObjectPlanOut(BaseModel):
    uploads: list[FileUploadOut]


class ObjectFileOut(BaseModel):
    path: str
    size: int
    sha256: str
    url: str


class ObjectMountOut(BaseModel):
    files: list[ObjectFileOut]
    folders: list[str] = []  # empty folders to make, relative to the mount


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str


class FileList(BaseModel):
    files: list[FileOut]
    folders: list[str] = []  # empty folders of a run's outputs or an upload in the object store ('/'-separated)


class OutputsPushed(BaseModel):
    files: int
    size: int


class UploadOut(BaseModel):
    name: str
    kind: Literal["file", "dir"]
    size: int
    files: int
    created_at: datetime
    deleted_at: datetime | None = None  # when its files were freed; the record stays


class UploadList(BaseModel):
    uploads: list[UploadOut]


class Deleted(BaseModel):
    resource: str
    deleted_at: datetime
    freed: int  # bytes
    # True when it had been deleted before: nothing more was freed.
    already: bool


class PruneIn(_In):
    older_than: float = Field(gt=0, le=100 * 366 * 24 * 3600)  # seconds since the run finished
    keep_labeled: bool = False
    user: str | None = Field(default=None, max_length=64)
    dry_run: bool = False


class Pruned(BaseModel):
    runs: list[int]
    freed: int  # bytes, or what would be freed on a dry run
    dry_run: bool


class RunUsage(BaseModel):
    id: int
    status: RunStatus
    size: int


class UploadUsage(BaseModel):
    name: str
    kind: Literal["file", "dir"]
    size: int


class UserUsage(BaseModel):
    user: str
    runs: list[RunUsage]
    uploads: list[UploadUsage]
    runs_size: int
    uploads_size: int
    total: int


class Usage(BaseModel):
    users: list[UserUsage]


class CodeStored(BaseModel):
    key: str
    size: int


# --- hyperparameter searches ---------------------------------------------------

class SearchCreate(_In):
    """The body of `POST /searches`; `run` holds the other fields of a run's body
    (as `RunCreate` takes them, without command and labels), checked per run."""

    kind: SearchKind
    command: str = Field(min_length=1, max_length=wire.MAX_COMMAND_LENGTH)
    params: dict[str, Annotated[str, Field(max_length=hyper.MAX_PARAM_TEXT)]] = Field(max_length=hyper.MAX_PARAMS)
    run: dict[str, Any] = Field(default_factory=dict, max_length=100)
    # One label fewer than a run may carry: each run also gets `hyper:ID`.
    labels: list[Annotated[str, Field(max_length=wire.MAX_LABEL_LENGTH)]] = Field(default_factory=list,
                                                                                 max_length=99)
    num_runs: int | None = Field(default=None, ge=1, le=hyper.MAX_SEARCH_RUNS)
    parallel: int = Field(default=1, ge=1, le=hyper.MAX_PARALLEL)
    metric: str | None = Field(default=None, max_length=hyper.MAX_METRIC_NAME_LENGTH)
    goal: Goal = Goal.MINIMIZE
    metric_agg: MetricAgg = MetricAgg.LAST
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(wire.validate_label(label) for label in value))

    @field_validator("run")
    @classmethod
    def _run(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("command", "labels"):
            if key in value:
                raise ValueError(f"give the search's {key} outside run")
        return value

    @model_validator(mode="after")
    def _whole(self) -> "SearchCreate":
        self.plan()
        return self

    def plan(self) -> hyper.SearchPlan:
        return hyper.check_search(kind=self.kind, command=self.command, params=self.params,
                                  num_runs=self.num_runs, metric=self.metric)


class TrialOut(BaseModel):
    number: int
    params: dict[str, Any]
    run_id: int | None
    status: RunStatus | None  # its run's; None once the run is gone
    value: float | None


class SearchSummary(BaseModel):
    id: int
    kind: SearchKind
    status: SearchStatus
    command: str
    params: dict[str, str]
    labels: list[str]
    metric: str | None
    goal: Goal
    metric_agg: MetricAgg
    num_runs: int
    parallel: int
    seed: int
    created_at: datetime
    finished_at: datetime | None
    reason: str | None
    owner: str
    trials_started: int
    best: TrialOut | None


class SearchOut(SearchSummary):
    trials: list[TrialOut]


class SearchList(BaseModel):
    searches: list[SearchSummary]


# --- users and tokens ---------------------------------------------------------

class UserOut(BaseModel):
    name: str
    admin: bool
    created_at: datetime


class UserList(BaseModel):
    users: list[UserOut]


_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UserCreate(_In):
    name: str = Field(max_length=64)
    admin: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _USER_NAME.match(value):
            raise ValueError(f"user name {value!r} must be 1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return value


class TokenCreate(_In):
    kind: Literal["user", "worker"] = "user"
    name: str = Field(default="", max_length=200)
    # Admins may make a token for another user; defaults to the caller.
    user: str | None = Field(default=None, max_length=64)


class TokenOut(BaseModel):
    id: int
    kind: Literal["user", "worker"]
    user: str | None
    name: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str


class TokenList(BaseModel):
    tokens: list[TokenOut]


class UserCreated(UserOut):
    token: TokenCreated


class SignInLink(BaseModel):
    # The one-time secret; the viewer takes it at `path` (a fragment, kept out of server logs).
    token: str
    path: str
    expires_at: datetime


class SignInIn(_In):
    token: str = Field(min_length=1, max_length=256)


class SignedIn(BaseModel):
    # A new user token (named "web sign-in") for the browser to keep.
    token: str
    user: UserOut


class Health(BaseModel):
    status: Literal["ok"]
    version: str
