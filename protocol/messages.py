"""The typed messages that cross HTTP between the CLI, the control plane and the worker.

Owns: `RunSpec` (what a run asks for, as stored and as leased), its mounts,
the submit key and the log stream names (a log's batches and pages:
`logs.py`). The messages only a worker and the control plane exchange
(`Lease`, the worker's reports and heartbeats) are in `worker_messages`, so
the CLI, which imports this module on every call, does not build them.
Plain dataclasses so the CLI imports them without pydantic; the server's
pydantic schemas embed these same classes (pydantic validates stdlib
dataclasses), so a field is declared once. `from_dict` reads a JSON object
and ignores keys it does not know, so an older worker keeps working against
a newer server.
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal


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
