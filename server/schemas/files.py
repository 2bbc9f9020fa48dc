"""Files a run or a user stores: a worker's staged outputs, the manifests
and mounts of the S3 object store (a push's plan is answered as
`cast.protocol.objects.ObjectPlan`, a mount's files as its `ObjectFile`), an
upload, the listing of a run's outputs or an upload, a deletion, and the key
of a code bundle."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from cast.protocol.messages import FileKind
from cast.protocol.objects import ObjectEntry, ObjectFile, ObjectManifest, UploadManifest
from cast.protocol.outputs import StagedOutputs
from cast.protocol.validate import MAX_PATH_LENGTH
from cast.server.schemas._base import LeaseToken, _In

CODE_KEY_PATTERN = r"^[0-9a-f]{64}$"
# The folders of a manifest, kept even when empty ('/'-separated, relative).
Folders = list[Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH)]]


class StagedFileIn(_In):
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=CODE_KEY_PATTERN)


class StagedOutputsIn(_In):
    lease_token: LeaseToken
    staging: str = Field(min_length=1, max_length=128)
    files: list[StagedFileIn]
    folders: Folders = []

    def to_staged(self) -> StagedOutputs:
        return StagedOutputs.from_dict(self.model_dump())


class ObjectManifestIn(_In):
    """An output push to the object store (cast.protocol.objects.ObjectManifest)."""

    lease_token: LeaseToken
    files: list[StagedFileIn]
    folders: Folders = []

    def to_manifest(self) -> ObjectManifest:
        return ObjectManifest(lease_token=self.lease_token, files=_entries(self.files), folders=list(self.folders))


class UploadManifestIn(_In):
    """`cast upload` to the object store (cast.protocol.objects.UploadManifest)."""

    kind: FileKind
    files: list[StagedFileIn]
    replace: bool = False
    folders: Folders = []

    def to_manifest(self) -> UploadManifest:
        return UploadManifest(kind=self.kind, files=_entries(self.files), replace=self.replace,
                              folders=list(self.folders))


def _entries(files: list[StagedFileIn]) -> list[ObjectEntry]:
    return [ObjectEntry(f.path, f.size, f.sha256) for f in files]


class ObjectMountOut(BaseModel):
    files: list[ObjectFile]
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
    kind: FileKind
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
