"""Retention: a prune's body and answer, and what each user's data holds (`GET /usage`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cast.protocol.messages import FileKind
from cast.protocol.status import RunStatus
from cast.server.schemas._base import _In


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
    kind: FileKind
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
