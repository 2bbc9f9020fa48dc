"""cast.client.cli_common: JSON output stays readable UTF-8, and a usage
problem is a CastError exiting with click's usage code."""

from __future__ import annotations

import json

from cast.client.cli_common import UsageProblem, print_json
from cast.client.sdk import CastError


def test_json_output_is_indented_utf8_with_a_final_newline(capsys):
    value = {"labels": ["café", "日本"], "id": 3}
    print_json(value)
    out = capsys.readouterr().out
    assert out == '{\n  "labels": [\n    "café",\n    "日本"\n  ],\n  "id": 3\n}\n'
    assert json.loads(out) == value


def test_a_usage_problem_exits_2_where_other_errors_exit_1():
    assert isinstance(UsageProblem("bad flag"), CastError)
    assert (UsageProblem.exit_code, CastError.exit_code) == (2, 1)
