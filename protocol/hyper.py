"""Hyperparameter searches: their vocabulary and the parsing of what they ask for.

Owns: `SearchStatus`, `SearchKind`, `Goal`, `MetricAgg`; a parameter's text
(`0.1,0.01`, `uniform:0:1`, `loguniform:1e-5:1e-2`, `int:2:8`) read as a
`Choice` or a range; the `:name:` placeholders of a command template, checked
against the parameters and substituted with shell-quoted plain values; grid
expansion and seeded random sampling. The CLI checks a search with these
before sending it and the server checks it again and drives it with them, so
both refuse the same things with the same messages. Standard library only.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import re
import shlex
from dataclasses import dataclass

from . import metrics
from .validate import SpecError, SpecTooLarge

# Bounds: far above a real search, far below what costs the server time.
MAX_SEARCH_RUNS = 1000
MAX_PARALLEL = 100
MAX_PARAMS = 32
MAX_CHOICES = 1000
MAX_PARAM_TEXT = 16 * 1024
MAX_VALUE_LENGTH = 256
MAX_METRIC_NAME_LENGTH = metrics.MAX_NAME_LENGTH
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# `:lr:` — a name between colons. `http://h:8080/` has none (a digit follows ':').
_PLACEHOLDER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*):")
_INT = re.compile(r"^[+-]?[0-9]{1,18}$")
Value = int | float | str


class SearchStatus(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"  # no new runs; its running ones finish
    KILLED = "killed"  # no new runs; its active runs killed
    COMPLETE = "complete"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class SearchKind(str, enum.Enum):
    GRID = "grid"
    RANDOM = "random"
    BAYES = "bayes"

    def __str__(self) -> str:
        return self.value


class Goal(str, enum.Enum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    def __str__(self) -> str:
        return self.value


class MetricAgg(str, enum.Enum):
    """Which value of a run's metric is the trial's: its last (by order written), least or greatest."""

    LAST = "last"
    MIN = "min"
    MAX = "max"

    def __str__(self) -> str:
        return self.value


# --- parameters -----------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


Distribution = Choice | Uniform | IntRange


def parse_value(text: str) -> Value:
    """A listed value as it is meant: an int, a float, else the text itself."""
    text = text.strip()
    if _INT.match(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _number(text: str, name: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise SpecError(f"param {name}: {text!r} is not a number") from None
    if not math.isfinite(number):
        raise SpecError(f"param {name}: {text!r} is not a finite number")
    return number


def parse_param(name: str, text: str) -> Distribution:
    """One parameter's text: `a,b,c`, `uniform:LOW:HIGH`, `loguniform:LOW:HIGH` or `int:LOW:HIGH`."""
    if not _NAME.match(name):
        raise SpecError(f"param name {name[:80]!r} must be a letter or '_' then up to 63 letters, digits or '_'")
    if len(text) > MAX_PARAM_TEXT:
        raise SpecTooLarge(f"param {name}: its values exceed {MAX_PARAM_TEXT} characters")
    kind, _, rest = text.partition(":")
    if kind in ("uniform", "loguniform", "int"):
        bounds = rest.split(":")
        if len(bounds) != 2:
            raise SpecError(f"param {name}: {text!r} must be {kind}:LOW:HIGH")
        if kind == "int":
            if not all(_INT.match(b.strip()) for b in bounds):
                raise SpecError(f"param {name}: {text!r} needs whole numbers, as int:1:8")
            low, high = (int(b) for b in bounds)
            if low > high:
                raise SpecError(f"param {name}: {text!r} has LOW above HIGH")
            return IntRange(low, high)
        low, high = (_number(b, name) for b in bounds)
        if low >= high:
            raise SpecError(f"param {name}: {text!r} needs LOW below HIGH")
        if kind == "loguniform" and low <= 0:
            raise SpecError(f"param {name}: {text!r} needs LOW above 0 (it is sampled on a log scale)")
        return Uniform(low, high, log=kind == "loguniform")
    if ":" in text:  # a value may not hold ':', so a misspelt range is no value list
        raise SpecError(f"param {name}: {text[:80]!r} is not uniform:, loguniform: or int:LOW:HIGH "
                        "(a listed value may not hold ':')")
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise SpecError(f"param {name}: {text!r} must list values (a,b,c) or be uniform:, loguniform: or int:LOW:HIGH")
    if len(items) > MAX_CHOICES:
        raise SpecTooLarge(f"param {name}: more than {MAX_CHOICES} values")
    for item in items:
        if len(item) > MAX_VALUE_LENGTH or not item.isprintable():
            raise SpecError(f"param {name}: value {item[:40]!r} must be printable and at most "
                            f"{MAX_VALUE_LENGTH} characters")
    values = tuple(dict.fromkeys(parse_value(item) for item in items))
    return Choice(values)


def parse_params(params: dict[str, str]) -> dict[str, Distribution]:
    if not params:
        raise SpecError("a search needs at least one param (--param NAME=VALUES)")
    if len(params) > MAX_PARAMS:
        raise SpecTooLarge(f"a search takes at most {MAX_PARAMS} params")
    return {name: parse_param(name, text) for name, text in params.items()}


def parse_param_option(text: str) -> tuple[str, str]:
    """`NAME=VALUES` as given to `--param`."""
    name, sep, values = text.partition("=")
    if not sep:
        raise SpecError(f"--param {text[:80]!r} must be NAME=VALUES, as lr=0.1,0.01 or lr=loguniform:1e-5:1e-2")
    return name.strip(), values.strip()


# --- the command template -----------------------------------------------------------


def placeholders(command: str) -> list[str]:
    return list(dict.fromkeys(_PLACEHOLDER.findall(command)))


def check_template(command: str, names: list[str]) -> None:
    """Every `:name:` in the command has a param, and every param is used."""
    used = placeholders(command)
    unknown = [n for n in used if n not in names]
    if unknown:
        raise SpecError(f"the command uses :{unknown[0]}: but no --param {unknown[0]}=... is given")
    unused = [n for n in names if n not in used]
    if unused:
        raise SpecError(f"param {unused[0]} is not used in the command (write :{unused[0]}: where it goes)")


def format_value(value: Value) -> str:
    """A value as the command sees it: ints as ints, floats by repr (0.001, 1e-05)."""
    # A float keeps its point (1.0, not 1): the param was given as a float.
    return repr(value) if isinstance(value, float) else str(value)


def substitute(command: str, values: dict[str, Value]) -> str:
    """The command with each `:name:` replaced by its shell-quoted value."""
    return _PLACEHOLDER.sub(
        lambda m: shlex.quote(format_value(values[m.group(1)])) if m.group(1) in values else m.group(0), command
    )


def display_value(value: Value) -> str:
    """A value as a person reads it in a table: floats to 6 significant digits."""
    return f"{value:.6g}" if isinstance(value, float) else format_value(value)


def describe_params(values: dict[str, Value]) -> str:
    """`lr=0.01, bs=8`, as `cast info` and `cast hyper info` show a trial."""
    return ", ".join(f"{name}={display_value(value)}" for name, value in values.items())


# --- making trials --------------------------------------------------------------------


def grid_size(params: dict[str, Distribution]) -> int:
    size = 1
    for name, dist in params.items():
        if isinstance(dist, Uniform):
            raise SpecError(f"param {name}: a grid needs values or int:LOW:HIGH, not a continuous range")
        size *= len(dist.values) if isinstance(dist, Choice) else dist.high - dist.low + 1
        if size > MAX_SEARCH_RUNS:
            raise SpecTooLarge(f"the grid has more than {MAX_SEARCH_RUNS} combinations; list fewer values")
    return size


def grid_point(params: dict[str, Distribution], number: int) -> dict[str, Value]:
    """The `number`th combination of the grid (the last param varies fastest)."""
    axes = [d.values if isinstance(d, Choice) else range(d.low, d.high + 1) for d in params.values()]
    point = next(itertools.islice(itertools.product(*axes), number, None))
    return dict(zip(params, point))


def sample(params: dict[str, Distribution], *, seed: int, number: int) -> dict[str, Value]:
    """Trial `number`'s random point: the same seed and number give the same point."""
    rng = random.Random(f"{seed}:{number}")
    point: dict[str, Value] = {}
    for name, dist in params.items():
        if isinstance(dist, Choice):
            point[name] = rng.choice(dist.values)
        elif isinstance(dist, IntRange):
            point[name] = rng.randint(dist.low, dist.high)
        elif dist.log:
            point[name] = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        else:
            point[name] = rng.uniform(dist.low, dist.high)
    return point


@dataclass(frozen=True)
class SearchPlan:
    """A checked search: its parsed params and how many runs it makes."""

    params: dict[str, Distribution]
    num_runs: int


def check_search(*, kind: SearchKind, command: str, params: dict[str, str], num_runs: int | None,
                 metric: str | None) -> SearchPlan:
    """Everything about a search that can be refused before it starts."""
    parsed = parse_params(params)
    check_template(command, list(parsed))
    if metric is not None:
        try:
            metrics.check_name(metric)  # a name no run could report scores nothing
        except metrics.PointRefused as error:
            raise SpecError(str(error)) from None
    if kind is SearchKind.GRID:
        size = grid_size(parsed)
        if num_runs is not None and num_runs != size:
            raise SpecError(f"a grid makes one run per combination ({size}); leave out --num-runs")
        return SearchPlan(parsed, size)
    if num_runs is None:
        raise SpecError(f"a {kind.value} search needs --num-runs")
    if not 1 <= num_runs <= MAX_SEARCH_RUNS:
        raise SpecError(f"--num-runs {num_runs} must be between 1 and {MAX_SEARCH_RUNS}")
    if kind is SearchKind.BAYES and metric is None:
        raise SpecError("a bayes search needs --metric (the value it minimizes or maximizes)")
    return SearchPlan(parsed, num_runs)


def search_label(search_id: int) -> str:
    """The label every run of search `search_id` carries (`cast ps --label hyper:3`)."""
    return f"hyper:{search_id}"
