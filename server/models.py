"""ORM tables of the control plane (the database schema; API shapes live in schemas/).

Runs use INTEGER PRIMARY KEY AUTOINCREMENT so a run number is never reused,
even after the newest run is deleted. Times are stored as naive UTC and come
back timezone-aware.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


# The largest value of an Integer column (ids, seq high-water marks): 32-bit
# on PostgreSQL, where a bigger number in a request would fail in the database
# (SQLite's are 64-bit); requests naming one are bounded by it.
MAX_INTEGER = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "user", "worker" or "sign-in"
    # Worker tokens belong to no user.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Only sign-in links expire; they are also revoked at their first use.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    executor: Mapped[str] = mapped_column(String(32))
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    gpus: Mapped[list] = mapped_column(JSON, default=list)
    max_runs: Mapped[int] = mapped_column(Integer, default=1)
    # Whether its runs cannot see the host (a container, or the local executor's
    # sandbox); a multi-user server leases to an unsandboxed worker only if allowed.
    sandboxed: Mapped[bool] = mapped_column(Boolean, default=False)
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_gpus_id", "status", "gpus", "id"),
        Index("ix_runs_owner_id", "owner_id", "id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(32))
    # The run spec as the API shows it (command, code, packages, mounts, ...).
    spec: Mapped[dict] = mapped_column(JSON)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))
    worker_name: Mapped[str | None] = mapped_column(String(200))
    executor: Mapped[str | None] = mapped_column(String(32))
    # The isolation and limits the command ran under, as its worker reported them.
    limits: Mapped[str | None] = mapped_column(Text)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    # Number of log entries stored (the next offset), and how many entries of
    # the current attempt the worker has delivered (its `seq` high-water mark).
    log_size: Mapped[int] = mapped_column(Integer, default=0)
    worker_log_seq: Mapped[int] = mapped_column(Integer, default=0)
    worker_log_lines: Mapped[int] = mapped_column(Integer, default=0)
    log_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bytes of the run's own output stored (the per-run log cap counts these),
    # and the object store key of its log once archived there (migration 0007).
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    log_archive: Mapped[str | None] = mapped_column(Text)
    outputs_size: Mapped[int | None] = mapped_column(BigInteger)
    # When its stored outputs were freed (`cast rm`, prune); the record stays.
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The hash of what decides the result (command, environment, code, mounted
    # contents), by which `--idempotent` finds an earlier run that did the same.
    reuse_key: Mapped[str | None] = mapped_column(String(64), index=True)
    # Number of metric points stored (the next offset), and the worker's
    # metric `seq` high-water mark for the current attempt, as for logs.
    metrics_size: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_metric_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RunTransition(Base):
    __tablename__ = "run_transitions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)


class RunLabel(Base):
    __tablename__ = "run_labels"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class RunMount(Base):
    __tablename__ = "run_mounts"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    # The run whose outputs are mounted (None for uploads): answers "mounted_by".
    source_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)


class LogChunk(Base):
    """Consecutive log lines of one stream, offsets first_offset.. first_offset+count-1,
    stored as one JSON array of strings with one time (see services/logs.py)."""

    __tablename__ = "log_chunks"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    first_offset: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    stream: Mapped[str] = mapped_column(String(8))
    lines: Mapped[str] = mapped_column(Text)


class OutputFile(Base):
    __tablename__ = "output_files"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Upload(Base):
    __tablename__ = "uploads"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(8))  # "file" or "dir"
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # When its stored files were freed; the record stays for the runs that mounted it.
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class UploadFile(Base):
    __tablename__ = "upload_files"
    upload_name: Mapped[str] = mapped_column(ForeignKey("uploads.name", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class CodeBundle(Base):
    """A user's code bundle. The key is the client's (it hashes the HEAD sha and
    the uncommitted diff, not the tar), so it only names a bundle within its
    owner's; the file is stored by `digest`, the sha256 of the tar the server
    received, which is what runs and workers refer to."""

    __tablename__ = "code_bundles"
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class MetricPoint(Base):
    """One metric value a run reported, numbered per run like its log entries."""

    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_run_name", "run_id", "name", "offset"),)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    step: Mapped[int | None] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(UtcDateTime)


class Search(Base):
    """A hyperparameter search: its kind (grid, random, bayes), what it asks
    for (`spec`: the command template, parameters, run options, metric, goal,
    budget) and where it stands."""

    __tablename__ = "searches"
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(Text)


class SearchTrial(Base):
    """One point of a search: its parameters, its run once submitted, and the
    metric value read from that run once it ended."""

    __tablename__ = "search_trials"
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[dict] = mapped_column(JSON)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
