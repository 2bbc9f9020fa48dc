"""A run's metrics: a worker's batch of points and its answer, the summary
per name, a read's points."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, model_validator

from cast.protocol import metrics as metric_rules
from cast.server.models import MAX_INTEGER
from cast.server.schemas._base import LeaseToken, _In


class MetricPointIn(_In):
    """A point as the worker sends it, checked again with cast.protocol.metrics."""

    name: str = Field(max_length=metric_rules.MAX_NAME_LENGTH)
    # Strict: `true` and "0.5" are no measurements, "5" no step.
    value: float = Field(strict=True)
    step: int | None = Field(default=None, strict=True)
    time: datetime | None = None

    @model_validator(mode="after")
    def _point(self) -> "MetricPointIn":
        try:
            metric_rules.check_point(self.name, self.value, self.step)
        except metric_rules.PointRefused as exc:
            raise ValueError(str(exc)) from None
        return self


class MetricAppend(_In):
    lease_token: LeaseToken
    seq: int = Field(ge=0, le=MAX_INTEGER)
    points: list[MetricPointIn] = Field(max_length=metric_rules.MAX_BATCH)


class MetricAppended(BaseModel):
    next_offset: int


class MetricSummary(BaseModel):
    name: str
    count: int
    last: float
    min: float
    max: float
    last_step: int | None
    last_time: datetime


class MetricSummaries(BaseModel):
    metrics: list[MetricSummary]
    next_offset: int
    finished: bool


class MetricPointOut(BaseModel):
    offset: int
    name: str
    step: int | None
    value: float
    time: datetime


class MetricChunk(BaseModel):
    points: list[MetricPointOut]
    next_offset: int
    finished: bool
