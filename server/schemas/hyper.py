"""Hyperparameter searches: the body that starts one (checked with
`cast.protocol.hyper.check_search`), a search with its trials, a list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from cast.protocol import hyper
from cast.protocol import validate as wire
from cast.protocol.hyper import Goal, MetricAgg, SearchKind, SearchStatus
from cast.protocol.status import RunStatus
from cast.server.schemas._base import Labels, _In


class SearchCreate(_In):
    """The body of `POST /searches`; `run` holds the other fields of a run's body
    (as `RunCreate` takes them, without command and labels), checked per run."""

    kind: SearchKind
    command: str = Field(min_length=1, max_length=wire.MAX_COMMAND_LENGTH)
    params: dict[str, Annotated[str, Field(max_length=hyper.MAX_PARAM_TEXT)]] = Field(max_length=hyper.MAX_PARAMS)
    run: dict[str, Any] = Field(default_factory=dict, max_length=100)
    # One label fewer than a run may carry: each run also gets `hyper:ID`.
    labels: Labels = Field(default_factory=list, max_length=99)
    num_runs: int | None = Field(default=None, ge=1, le=hyper.MAX_SEARCH_RUNS)
    parallel: int = Field(default=1, ge=1, le=hyper.MAX_PARALLEL)
    metric: str | None = Field(default=None, max_length=hyper.MAX_METRIC_NAME_LENGTH)
    goal: Goal = Goal.MINIMIZE
    metric_agg: MetricAgg = MetricAgg.LAST
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("run")
    @classmethod
    def _run(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("command", "labels"):
            if key in value:
                raise ValueError(f"give the search's {key} outside run")
        return value

    @model_validator(mode="after")
    def _whole(self) -> "SearchCreate":
        self.plan()
        return self

    def plan(self) -> hyper.SearchPlan:
        return hyper.check_search(kind=self.kind, command=self.command, params=self.params,
                                  num_runs=self.num_runs, metric=self.metric)


class TrialOut(BaseModel):
    number: int
    params: dict[str, Any]
    run_id: int | None
    status: RunStatus | None  # its run's; None once the run is gone
    value: float | None


class SearchSummary(BaseModel):
    id: int
    kind: SearchKind
    status: SearchStatus
    command: str
    params: dict[str, str]
    labels: list[str]
    metric: str | None
    goal: Goal
    metric_agg: MetricAgg
    num_runs: int
    parallel: int
    seed: int
    created_at: datetime
    finished_at: datetime | None
    reason: str | None
    owner: str
    trials_started: int
    best: TrialOut | None


class SearchOut(SearchSummary):
    trials: list[TrialOut]


class SearchList(BaseModel):
    searches: list[SearchSummary]
