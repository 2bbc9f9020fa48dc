"""The server's overview (`GET /status`: the server, its workers, the queue) and its health check."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


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


class Health(BaseModel):
    status: Literal["ok"]
    version: str
