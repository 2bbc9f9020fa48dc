"""Metrics: the point a run reports, the rules a point must follow, and the bounds.

A run reports a metric by appending a JSON line `{"name": "loss", "value":
0.53, "step": 120}` to the file `$CAST_METRICS` (docs/metrics.md); the worker
reads it, checks each point with `check_point`, and sends points in batches;
the server checks each point again with the same function and keeps at most
`MAX_NAMES_PER_RUN` names and `MAX_POINTS_PER_RUN` points per run. `Problem`
names the ways a line can be refused, as the run's log reports them.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any

ENV_VAR = "CAST_METRICS"  # names the file inside a run
MAX_NAME_LENGTH = 200  # characters of a metric's name (the database column's width)
MAX_NAMES_PER_RUN = 1000
MAX_POINTS_PER_RUN = 1_000_000
MAX_LINE_BYTES = 64 * 1024  # one line of the metrics file
MAX_STEP = 2**62
MAX_BATCH = 5000  # points per request from the worker
# Control characters (C0, DEL, C1) and lone surrogates, which no JSON answer can carry.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Problem(str, enum.Enum):
    """Why a metrics line was refused; the value is how the run's log says it."""

    NOT_JSON = "not a JSON object with a name and a value"
    BAD_NAME = f"a name that is empty, longer than {MAX_NAME_LENGTH} characters or holds control characters"
    BAD_VALUE = "a value that is not a finite number"
    BAD_STEP = "a step that is not a whole number from 0 to 2**62"
    TOO_LONG = f"a line longer than {MAX_LINE_BYTES // 1024} KiB"
    TOO_MANY_NAMES = f"a name past the first {MAX_NAMES_PER_RUN} of the run"
    TOO_MANY_POINTS = f"a point past the first {MAX_POINTS_PER_RUN} of the run"

    def __str__(self) -> str:
        return self.value


class PointRefused(ValueError):
    def __init__(self, problem: Problem, message: str):
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class MetricPoint:
    """One value of one metric. `time` (ISO 8601) is set where the point arrives
    at the worker; `step` is the run's own counter, if it gave one."""

    name: str
    value: float
    step: int | None = None
    time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        point: dict[str, Any] = {"name": self.name, "value": self.value}
        if self.step is not None:
            point["step"] = self.step
        if self.time is not None:
            point["time"] = self.time
        return point


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or _FORBIDDEN.search(name):
        shown = repr(name)[:60] if isinstance(name, str) else type(name).__name__
        raise PointRefused(Problem.BAD_NAME, f"metric name {shown} is not allowed: {Problem.BAD_NAME}")
    return name


def check_value(value: Any) -> float:
    # bool is an int to Python, but `true` is no measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PointRefused(Problem.BAD_VALUE, f"metric value {repr(value)[:60]}: {Problem.BAD_VALUE}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a double's range
        number = math.inf
    if not math.isfinite(number):
        raise PointRefused(Problem.BAD_VALUE, f"metric value {repr(value)[:60]}: {Problem.BAD_VALUE}")
    return number


def check_step(step: Any) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise PointRefused(Problem.BAD_STEP, f"metric step {repr(step)[:60]}: {Problem.BAD_STEP}")
    return step


def check_point(name: Any, value: Any, step: Any = None) -> MetricPoint:
    """A valid point, or PointRefused naming the problem."""
    return MetricPoint(name=check_name(name), value=check_value(value), step=check_step(step))
