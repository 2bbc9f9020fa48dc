"""A run's log: a worker's batch of lines, checked, and its answer; a read's
page is `cast.protocol.logs.LogPage`, which the route writes without pydantic."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from cast.protocol.logs import MAX_BATCH_LINES
from cast.protocol.messages import LogStream
from cast.server.models import MAX_INTEGER
from cast.server.schemas._base import LeaseToken, _In


class LogRunIn(_In):
    NUL_ALLOWED = frozenset({"lines"})  # a run may print any bytes
    stream: LogStream
    # The server splits a line longer than CAST_MAX_LOG_LINE_CHARS (the worker already does).
    lines: list[Annotated[str, Field(max_length=1024 * 1024)]] = Field(min_length=1, max_length=MAX_BATCH_LINES)
    time: datetime | None = None


class LogLinesIn(_In):
    """A worker's lines and their `seq` (lines it sent before), on their own
    (`LogAppend`) or ahead of the status reports that follow them."""

    seq: int = Field(ge=0, le=MAX_INTEGER)
    runs: list[LogRunIn] = Field(max_length=MAX_BATCH_LINES)

    @model_validator(mode="after")
    def _bounded(self) -> "LogLinesIn":
        if sum(len(run.lines) for run in self.runs) > MAX_BATCH_LINES:
            raise ValueError(f"a log batch holds at most {MAX_BATCH_LINES} lines")
        return self


class LogAppend(LogLinesIn):
    """A worker's batch: `cast.protocol.logs.LogBatch`."""

    lease_token: LeaseToken


class LogAppended(BaseModel):
    next_offset: int
    # True once the run's log reached its cap: later stdout/stderr lines are dropped.
    truncated: bool
