"""What crosses HTTP when bytes go straight between a worker or the CLI and an
S3 object store (`CAST_STORAGE_URL`), the server only signing and checking.

An output push is three steps: the worker sends the manifest it hashed
(`ObjectManifest`, POST /api/v1/runs/{id}/outputs/plan); the server answers
an `ObjectPlan`: for each file not already stored whole, one presigned PUT, or
for a file over `MULTIPART_BYTES` the presigned URLs of the parts the store
does not yet hold (a retried push resumes); the worker uploads, sending the
`SHA256_HEADER` the URL was signed with; then it commits the same manifest
(POST .../outputs/commit) and the server checks every object before the
outputs become visible. A mount's files come as `ObjectFile`s with presigned
GETs (GET /api/v1/workers/objects/{resource}), fetched by sha256 into the
worker's cache.

`cast upload` goes the same three steps with an `UploadManifest` (POST
/api/v1/uploads/{name}/plan, then .../commit): an upload's objects are
content addressed (one object per sha256 within its owner's uploads), so the
plan lists one `FileUpload` per content the store lacks, named by the first
path that holds it; an upload of files already stored sends nothing, and a
re-run of an upload that was cut off sends only what is still missing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .messages import FileKind

# The object's user metadata that holds its sha256 (x-amz-meta-sha256).
SHA256_META = "sha256"
SHA256_HEADER = "x-amz-meta-" + SHA256_META
# Files larger than this go in parts of this size (S3 allows at most 10,000 parts).
MULTIPART_BYTES = 64 << 20
MAX_PARTS = 10_000


@dataclass(frozen=True)
class ObjectEntry:
    path: str  # '/'-separated, relative to the outputs' root
    size: int
    sha256: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ObjectEntry":
        return cls(path=str(data["path"]), size=int(data["size"]), sha256=str(data["sha256"]))


@dataclass
class ObjectManifest:
    lease_token: str
    files: list[ObjectEntry] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UploadManifest:
    """An upload's files as the CLI hashed them: `kind` "file" (one entry,
    named as the upload) or "dir"; `replace` as `cast upload --replace`;
    `folders` its folders (the empty ones are kept, as `empty_folders` says)."""

    kind: FileKind
    files: list[ObjectEntry] = field(default_factory=list)
    replace: bool = False
    folders: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PartUpload:
    number: int  # 1-based
    url: str


@dataclass(frozen=True)
class FileUpload:
    """How to store one file: one PUT (`url`), or the parts still missing."""

    path: str
    url: str | None = None
    part_size: int = 0
    parts: list[PartUpload] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FileUpload":
        return cls(path=data["path"], url=data.get("url"), part_size=int(data.get("part_size") or 0),
                   parts=[PartUpload(int(p["number"]), p["url"]) for p in data.get("parts") or []])


@dataclass
class ObjectPlan:
    uploads: list[FileUpload] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ObjectPlan":
        return cls(uploads=[FileUpload.from_dict(u) for u in data.get("uploads") or []])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ObjectFile:
    """One file of a mount: where it goes, what it must hash to, where to GET it."""

    path: str  # relative to the mount; '' for a mounted file itself
    size: int
    sha256: str
    url: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ObjectFile":
        return cls(path=str(data["path"]), size=int(data["size"]), sha256=str(data["sha256"]), url=str(data["url"]))


def empty_folders(files: Iterable[str], folders: Iterable[str]) -> list[str]:
    """The folders of an output with nothing inside: a file's path already
    says its parents exist, so only these are kept as entries of their own."""
    parents: set[str] = set()
    for path in [*files, *folders]:
        parent = posixpath.dirname(path)
        while parent and parent not in parents:
            parents.add(parent)
            parent = posixpath.dirname(parent)
    return sorted(set(folders) - parents)


def part_count(size: int) -> int:
    return max(1, -(-size // MULTIPART_BYTES))
