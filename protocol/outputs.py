"""A run's outputs placed by a worker that shares the server's storage.

Such a worker does not stream a tar: it moves (or, for a file it may not
move, copies) each saved file into a staging folder inside the server's
temporary folder, hashing its bytes once as it goes, and then asks the server
to adopt that folder with this manifest (`POST /api/v1/runs/{id}/outputs/staged`).
The staging folder's name is `staged-<run id>-<32 hex digits>`, so the server
takes no other path from the request than one it can check.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

STAGING_FOLDER = "tmp"  # under the lease's storage_root


def staging_name(run_id: int) -> str:
    return f"staged-{run_id}-{uuid.uuid4().hex}"


def is_staging_name(name: str, run_id: int) -> bool:
    return re.fullmatch(rf"staged-{run_id}-[0-9a-f]{{32}}", name) is not None


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the staging folder, '/'-separated
    size: int
    sha256: str


@dataclass
class StagedOutputs:
    lease_token: str
    staging: str  # the staging folder's name, see staging_name
    files: list[StagedFile] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # folders kept even when empty

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StagedOutputs":
        return cls(lease_token=data["lease_token"], staging=data["staging"],
                   files=[StagedFile(**f) for f in data.get("files") or []], folders=list(data.get("folders") or []))
