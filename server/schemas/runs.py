"""Runs: the body of a submit (`RunCreate`, which makes the `RunSpec` to
store), a run as reads answer it, a page of runs, a label."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from cast.protocol import validate as wire
from cast.protocol.messages import SUBMIT_KEY_PATTERN, MountSpec, RunSpec
from cast.protocol.status import RunStatus
from cast.server.schemas._base import Label, Labels, _In
from cast.server.schemas.files import CODE_KEY_PATTERN

_NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f]*$")


def _one_line(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not _NO_CONTROL.match(value):
        raise ValueError(f"{what} must not contain control characters")
    if value.startswith("-"):
        raise ValueError(f"{what} {value!r} must not start with '-'")
    return value


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
    pip: list[Annotated[str, AfterValidator(wire.validate_pip_spec)]] = Field(default_factory=list, max_length=500)
    pip_req: str | None = Field(default=None, max_length=1024 * 1024)
    pip_req_name: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[^/\x00-\x1f\x7f]+$")
    apt: list[Annotated[str, Field(max_length=wire.MAX_APT_PACKAGE_LENGTH),
                        AfterValidator(wire.validate_apt_package)]] = Field(default_factory=list, max_length=500)
    docker_image: str | None = Field(default=None, min_length=1, max_length=512)
    mounts: list[MountIn] = Field(default_factory=list, max_length=200)
    machine_type: str = Field(default="cpu", max_length=16)
    env: dict[str, str] = Field(default_factory=dict, max_length=500)
    labels: Labels = Field(default_factory=list, max_length=100)
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
    label: Label
