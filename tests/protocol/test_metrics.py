"""cast.protocol.metrics: the point rules both the worker and the server apply,
and the standalone helper's source (stdlib only, so a run imports it bare)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from cast.protocol import cast_metrics
from cast.protocol.metrics import (MAX_NAME_LENGTH, MAX_STEP, MetricPoint, PointRefused, Problem, check_point)


def test_a_valid_point():
    assert check_point("loss/train", 0.5, 3) == MetricPoint("loss/train", 0.5, 3)
    assert check_point("accuracy é", 1, None).value == 1.0
    assert check_point("n" * MAX_NAME_LENGTH, -1e300, MAX_STEP).step == MAX_STEP
    assert MetricPoint("a", 1.0).to_dict() == {"name": "a", "value": 1.0}
    assert MetricPoint("a", 1.0, 2, "t").to_dict() == {"name": "a", "value": 1.0, "step": 2, "time": "t"}


@pytest.mark.parametrize("name, value, step, problem", [
    ("", 1, None, Problem.BAD_NAME),
    ("n" * (MAX_NAME_LENGTH + 1), 1, None, Problem.BAD_NAME),
    ("a\tb", 1, None, Problem.BAD_NAME),
    ("a\x85", 1, None, Problem.BAD_NAME),
    ("\ud800", 1, None, Problem.BAD_NAME),
    (None, 1, None, Problem.BAD_NAME),
    ("x", math.nan, None, Problem.BAD_VALUE),
    ("x", -math.inf, None, Problem.BAD_VALUE),
    ("x", 10**400, None, Problem.BAD_VALUE),
    ("x", True, None, Problem.BAD_VALUE),
    ("x", "1", None, Problem.BAD_VALUE),
    ("x", 1, -1, Problem.BAD_STEP),
    ("x", 1, MAX_STEP + 1, Problem.BAD_STEP),
    ("x", 1, 2.0, Problem.BAD_STEP),
    ("x", 1, False, Problem.BAD_STEP),
])
def test_what_is_refused_and_why(name, value, step, problem):
    with pytest.raises(PointRefused) as refused:
        check_point(name, value, step)
    assert refused.value.problem is problem
    assert str(problem) in str(refused.value)


def test_the_helper_imports_only_the_standard_library():
    tree = ast.parse(Path(cast_metrics.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"json", "os", "threading"}
