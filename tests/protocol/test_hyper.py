"""cast.protocol.hyper: params, placeholders, substitution, grids, seeded sampling, bounds."""

from __future__ import annotations

import math
import shlex

import pytest

from cast.protocol import hyper
from cast.protocol.hyper import Choice, IntRange, SearchKind, Uniform
from cast.protocol.validate import SpecError, SpecTooLarge


@pytest.mark.parametrize(("text", "expected"), [
    ("0.1,0.01,1e-3", Choice((0.1, 0.01, 0.001))),
    ("8, 16 ,32", Choice((8, 16, 32))),
    ("adam,sgd,adam", Choice(("adam", "sgd"))),
    ("1,1.0,2", Choice((1, 2))),  # equal values once
    ("nan,inf", Choice(("nan", "inf"))),  # no number a command could not print back
    ("uniform:0:1", Uniform(0.0, 1.0)),
    ("loguniform:1e-5:1e-2", Uniform(1e-5, 1e-2, log=True)),
    ("int:-2:8", IntRange(-2, 8)),
    ("int:3:3", IntRange(3, 3)),
])
def test_a_param_is_a_list_or_a_range(text, expected):
    assert hyper.parse_param("p", text) == expected


@pytest.mark.parametrize(("name", "text", "message"), [
    ("lr", "", "must list values"),
    ("lr", "0.1,,0.2", "must list values"),
    ("lr", "uniform:1", "must be uniform:LOW:HIGH"),
    ("lr", "uniform:1:0", "needs LOW below HIGH"),
    ("lr", "uniform:a:1", "'a' is not a number"),
    ("lr", "uniform:0:inf", "not a finite number"),
    ("lr", "loguniform:0:1", "needs LOW above 0"),
    ("lr", "int:1.5:3", "needs whole numbers"),
    ("lr", "int:5:1", "LOW above HIGH"),
    ("lr", "normal:0:1", "is not uniform:, loguniform: or int:LOW:HIGH"),
    ("lr", "a\tb", "must be printable"),
    ("1lr", "1", "param name '1lr'"),
    ("l-r", "1", "param name 'l-r'"),
])
def test_bad_params_are_refused_with_their_reason(name, text, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hyper.parse_param(name, text)


def test_param_bounds():
    with pytest.raises(SpecTooLarge):
        hyper.parse_param("p", ",".join(str(i) for i in range(hyper.MAX_CHOICES + 1)))
    with pytest.raises(SpecTooLarge):
        hyper.parse_param("p", "x" * (hyper.MAX_PARAM_TEXT + 1))
    with pytest.raises(SpecError, match="at most 256 characters"):
        hyper.parse_param("p", "x" * 257)
    with pytest.raises(SpecTooLarge):
        hyper.parse_params({f"p{i}": "1" for i in range(hyper.MAX_PARAMS + 1)})
    with pytest.raises(SpecError, match="at least one param"):
        hyper.parse_params({})


def test_param_option_splits_at_the_first_equals():
    assert hyper.parse_param_option("lr=0.1,0.01") == ("lr", "0.1,0.01")
    assert hyper.parse_param_option(" x = a=b ") == ("x", "a=b")
    with pytest.raises(SpecError, match="must be NAME=VALUES"):
        hyper.parse_param_option("lr")


def test_placeholders_are_names_between_colons():
    assert hyper.placeholders("python t.py --lr :lr: --bs :bs: --again :lr:") == ["lr", "bs"]
    assert hyper.placeholders("curl http://host:8080/x && echo 12:30:00") == []
    hyper.check_template("t :a: :b:", ["a", "b"])
    with pytest.raises(SpecError, match="uses :c: but no --param c"):
        hyper.check_template("t :a: :c:", ["a"])
    with pytest.raises(SpecError, match="param b is not used in the command"):
        hyper.check_template("t :a:", ["a", "b"])


@pytest.mark.parametrize(("value", "text"), [
    (0.001, "0.001"), (1e-05, "1e-05"), (1.0, "1.0"), (8, "8"), (-3, "-3"), ("adam", "adam"),
    (0.1 + 0.2, "0.30000000000000004"),
])
def test_values_are_written_plainly(value, text):
    assert hyper.format_value(value) == text


def test_substitution_shell_quotes_each_value():
    command = hyper.substitute("python t.py --lr :lr: --name :name: --lr2 :lr:", {"lr": 1e-05, "name": "a b; rm -rf /"})
    assert command == "python t.py --lr 1e-05 --name 'a b; rm -rf /' --lr2 1e-05"
    assert shlex.split(command)[5] == "a b; rm -rf /"


def test_display_rounds_floats_but_not_the_command():
    assert hyper.describe_params({"lr": 0.0017056899943583893, "bs": 8}) == "lr=0.00170569, bs=8"
    assert hyper.substitute(":lr:", {"lr": 0.0017056899943583893}) == "0.0017056899943583893"


def test_a_grid_is_every_combination_in_order():
    params = hyper.parse_params({"lr": "0.1,0.01", "bs": "int:1:3"})
    assert hyper.grid_size(params) == 6
    assert [hyper.grid_point(params, n) for n in range(6)] == [
        {"lr": 0.1, "bs": 1}, {"lr": 0.1, "bs": 2}, {"lr": 0.1, "bs": 3},
        {"lr": 0.01, "bs": 1}, {"lr": 0.01, "bs": 2}, {"lr": 0.01, "bs": 3},
    ]


def test_a_grid_refuses_continuous_ranges_and_too_many_combinations():
    with pytest.raises(SpecError, match="not a continuous range"):
        hyper.grid_size(hyper.parse_params({"lr": "uniform:0:1"}))
    with pytest.raises(SpecTooLarge, match="more than 1000 combinations"):
        hyper.grid_size(hyper.parse_params({"a": "int:1:1000", "b": "1,2"}))
    # The bound is met before the product is large: a billion-point grid costs nothing to refuse.
    with pytest.raises(SpecTooLarge):
        hyper.grid_size(hyper.parse_params({"a": "int:0:999999999", "b": "int:0:999999999"}))


def test_sampling_is_a_function_of_seed_and_number_and_stays_in_bounds():
    params = hyper.parse_params({"lr": "loguniform:1e-5:1e-2", "u": "uniform:-1:1", "n": "int:2:8", "c": "a,b,c"})
    points = [hyper.sample(params, seed=42, number=n) for n in range(200)]
    assert points == [hyper.sample(params, seed=42, number=n) for n in range(200)]
    assert points != [hyper.sample(params, seed=43, number=n) for n in range(200)]
    for point in points:
        assert 1e-5 <= point["lr"] <= 1e-2 and -1 <= point["u"] <= 1
        assert isinstance(point["n"], int) and 2 <= point["n"] <= 8 and point["c"] in ("a", "b", "c")
    # Log scale: about half the draws below the geometric middle, not 0.1% as on a linear scale.
    below = sum(point["lr"] < math.sqrt(1e-5 * 1e-2) for point in points)
    assert 60 < below < 140
    assert {point["n"] for point in points} == set(range(2, 9))


def test_check_search_per_kind():
    plan = hyper.check_search(kind=SearchKind.GRID, command="t :a: :b:", params={"a": "1,2", "b": "x,y,z"},
                              num_runs=None, metric=None)
    assert plan.num_runs == 6
    assert hyper.check_search(kind=SearchKind.GRID, command="t :a:", params={"a": "1,2"}, num_runs=2,
                              metric=None).num_runs == 2
    with pytest.raises(SpecError, match="one run per combination"):
        hyper.check_search(kind=SearchKind.GRID, command="t :a:", params={"a": "1,2"}, num_runs=3, metric=None)
    with pytest.raises(SpecError, match="a random search needs --num-runs"):
        hyper.check_search(kind=SearchKind.RANDOM, command="t :a:", params={"a": "1,2"}, num_runs=None, metric=None)
    with pytest.raises(SpecError, match="between 1 and 1000"):
        hyper.check_search(kind=SearchKind.RANDOM, command="t :a:", params={"a": "1,2"}, num_runs=0, metric=None)
    with pytest.raises(SpecError, match="a bayes search needs --metric"):
        hyper.check_search(kind=SearchKind.BAYES, command="t :a:", params={"a": "uniform:0:1"}, num_runs=5,
                           metric=None)
    with pytest.raises(SpecError, match="metric name"):
        hyper.check_search(kind=SearchKind.BAYES, command="t :a:", params={"a": "uniform:0:1"}, num_runs=5,
                           metric="loss\n")
    assert hyper.check_search(kind=SearchKind.BAYES, command="t :a:", params={"a": "uniform:0:1"}, num_runs=5,
                              metric="loss").num_runs == 5


def test_the_search_label_is_a_valid_label():
    from cast.protocol.validate import validate_label

    assert validate_label(hyper.search_label(2**62)) == f"hyper:{2**62}"
