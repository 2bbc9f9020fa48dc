"""The control plane's one settings object.

Owns every tunable of the server and every filesystem path it uses; all paths
derive from `data_dir`. Read from the environment with the `CAST_` prefix
(`CAST_LEASE_SECONDS=2`, `CAST_DATA_DIR=...`); command-line flags override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAST_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".cast" / "server")
    # Empty means SQLite in data_dir; any SQLAlchemy URL otherwise.
    database_url: str = ""
    # s3://bucket[/prefix]: outputs and uploads in that S3 bucket (endpoint,
    # region and credentials the usual AWS way); empty: under data_dir.
    storage_url: str = Field(default="", pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?)?$")
    # How long a presigned URL of the object store stays valid.
    presign_seconds: int = Field(default=3600, ge=60, le=7 * 86400)
    host: str = "127.0.0.1"
    port: int = 8470
    lease_seconds: float = Field(default=15.0, gt=0)
    # A run's stdout/stderr beyond this many bytes (a newline counted per line)
    # is dropped after one visible truncation marker, so a chatty run cannot
    # fill the disk.
    max_log_bytes_per_run: int = Field(default=1024**3, gt=0)
    max_log_line_chars: int = Field(default=64 * 1024, gt=0)
    max_output_bytes: int = Field(default=20 * 1024**3, gt=0)
    max_upload_bytes: int = Field(default=20 * 1024**3, gt=0)
    max_code_bytes: int = Field(default=512 * 1024**2, gt=0)
    # JSON request bodies (run specs, log batches); streamed bodies have their own caps.
    max_json_body_bytes: int = Field(default=16 * 1024**2, gt=0)
    git_timeout_seconds: float = Field(default=30.0, gt=0)
    # Git sources on the server's and the workers' own filesystems (file://
    # URLs, paths): a run would read whatever the worker can, another user's
    # repositories included. Off unless the operator allows them; the
    # embedded single-user mode (`up`) allows them unless this says otherwise.
    allow_local_git: bool = False
    # No run stays in one of these stages longer: the reaper ends it with the
    # bound as its reason (a worker stuck building, saving or pushing, or one
    # that never carries out a stop or kill, still heartbeats).
    stage_timeout_seconds: float = Field(default=1800.0, gt=0)
    halt_timeout_seconds: float = Field(default=300.0, gt=0)  # stopping, killing
    # Lease runs to workers whose runs are not sandboxed (local executor without
    # bubblewrap) even when more than one user exists: they could read each
    # other's runs and the server's files. A one-user server always does.
    allow_unsandboxed_workers: bool = False
    # How often the control plane's search driver records finished trials and
    # starts the next ones of each running hyperparameter search.
    search_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Automatic retention: the outputs of finished runs that ended more than
    # this many days ago are freed (their records stay), as `cast prune` does;
    # unset, nothing is freed unasked. Labeled runs are kept if asked.
    retention_days: float | None = Field(default=None, gt=0)
    retention_keep_labeled: bool = False
    # A final run's log moves out of the database into the store (the object
    # store, or files under data_dir) this many seconds after the run ended,
    # and is read back from there alike; unset or 0, logs stay in the database.
    log_archive_after_seconds: float | None = Field(default=None, ge=0)
    # With an S3 store: upload objects that no upload names (a plan never
    # committed, a crash before a deletion's removal) are deleted once written
    # this many seconds ago; longer than any upload takes from plan to commit.
    blob_grace_seconds: float = Field(default=86400.0, gt=0)
    # The embedded mode's worker (`up`): auto = docker when a Docker engine answers and has the base image, else local.
    executor: Literal["auto", "local", "docker"] = "auto"

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def database_file(self) -> Path:
        return self.resolved_data_dir / "cast.db"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_file}"

    @property
    def runs_dir(self) -> Path:
        return self.resolved_data_dir / "runs"

    @property
    def uploads_dir(self) -> Path:
        return self.resolved_data_dir / "uploads"

    @property
    def code_dir(self) -> Path:
        return self.resolved_data_dir / "code"

    @property
    def tmp_dir(self) -> Path:
        """Where streamed bodies land before they are complete (same filesystem, so rename is atomic)."""
        return self.resolved_data_dir / "tmp"

    @property
    def storage_id_file(self) -> Path:
        return self.resolved_data_dir / "storage-id"

    @property
    def admin_token_file(self) -> Path:
        return self.resolved_data_dir / "admin-token"

    @property
    def worker_token_file(self) -> Path:
        return self.resolved_data_dir / "worker-token"

    @property
    def reaper_interval(self) -> float:
        # Four checks per lease period (and per stage bound): an expired lease
        # is noticed well within two periods, an overdue stage soon after its bound.
        return max(0.05, min(self.lease_seconds, self.stage_timeout_seconds, self.halt_timeout_seconds) / 4)

    @property
    def retention_interval(self) -> float:
        # Four passes per retention period, at most one an hour: a run is freed
        # soon after it falls due without the pass costing anything meanwhile.
        return max(0.5, min(3600.0, (self.retention_days or 1.0) * 86400 / 4))

    @property
    def log_archive_dir(self) -> Path:
        """Archived logs without an object store (services/log_archive.py)."""
        return self.resolved_data_dir / "logs"

    @property
    def log_archive_interval(self) -> float:
        # Four passes per delay, at least one every ten minutes: a log moves
        # soon after it falls due, and an idle pass is one query of the runs.
        return max(0.5, min(600.0, (self.log_archive_after_seconds or 1.0) / 4))

    @property
    def blob_collect_interval(self) -> float:
        # Four passes per grace period, at least one an hour: each lists the blobs.
        return max(0.5, min(3600.0, self.blob_grace_seconds / 4))

    def make_dirs(self) -> None:
        for path in (self.resolved_data_dir, self.runs_dir, self.uploads_dir, self.code_dir, self.tmp_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.resolved_data_dir.chmod(0o700)
