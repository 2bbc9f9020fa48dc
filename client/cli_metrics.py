"""The `cast metrics` verb: a run's metrics as a table with sparklines, one
metric's series, or either followed as points arrive.

Owns how metrics are shown; the points come from `cast.client.sdk`, the bars
from `render.sparkline`.
"""

from __future__ import annotations

import sys

import click

from .cli_common import CONTEXT, print_json
from .config import client as _client
from .sdk import CastError

PAGE = 100_000  # points per request (the server's most)
SPARK_WIDTH = 30


def _value(value: float) -> str:
    return f"{value:.6g}"


def _all_points(client, run_id: int, name: str | None) -> tuple[list[dict], bool]:
    points, offset = [], 0
    while True:
        page = client.get_metric_points(run_id, offset=offset, name=name, limit=PAGE)
        points += page["points"]
        if len(page["points"]) < PAGE:  # the server read to the end
            return points, page["finished"]
        offset = page["next_offset"]


def _summary_table(metrics: list[dict], series: dict[str, list[float]]) -> str:
    from .render import sparkline, table

    rows = [[m["name"], _value(m["last"]), _value(m["min"]), _value(m["max"]), str(m["count"]),
             "" if m["last_step"] is None else str(m["last_step"]),
             sparkline(series.get(m["name"], []), SPARK_WIDTH)] for m in metrics]
    return table(["NAME", "LAST", "MIN", "MAX", "COUNT", "STEP", ""], rows, right={1, 2, 3, 4, 5})


def _series_table(points: list[dict]) -> str:
    from .render import table

    rows = [["" if p["step"] is None else str(p["step"]), _value(p["value"])] for p in points]
    return table(["STEP", "VALUE"], rows, right={0, 1})


def _summarize(points: list[dict]) -> list[dict]:
    """The API's summary, from points (as `--follow` collects them)."""
    found: dict[str, dict] = {}
    for p in points:
        m = found.get(p["name"])
        if m is None:
            found[p["name"]] = {"name": p["name"], "count": 1, "last": p["value"], "min": p["value"],
                                "max": p["value"], "last_step": p["step"], "last_time": p["time"]}
            continue
        m.update(count=m["count"] + 1, last=p["value"], min=min(m["min"], p["value"]),
                 max=max(m["max"], p["value"]), last_step=p["step"], last_time=p["time"])
    return [found[name] for name in sorted(found)]


def _series(points: list[dict]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    for p in points:
        series.setdefault(p["name"], []).append(p["value"])
    return series


@click.command(context_settings=CONTEXT)
@click.argument("run_id", type=int, metavar="N")
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Print points as they arrive until the run ends.")
@click.option("--spark", is_flag=True, help="With NAME: the series as one sparkline, not a table.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (with -f: one point per line).")
def metrics(run_id, name, follow, spark, as_json) -> int:
    """Show a run's metrics: each one's last, min, max and count, with a
    sparkline; with NAME, that metric's (step, value) series."""
    client = _client()
    if follow:
        return _follow(client, run_id, name, as_json, spark)
    if name is None:
        summary = client.get_metrics(run_id)
        if as_json:
            print_json(summary)
        elif not summary["metrics"]:
            sys.stdout.write(f"Run {run_id} has no metrics{'' if summary['finished'] else ' yet'}\n")
        else:
            points, _ = _all_points(client, run_id, None)
            sys.stdout.write(_summary_table(summary["metrics"], _series(points)) + "\n")
        return 0
    points, finished = _all_points(client, run_id, name)
    if as_json:
        print_json({"name": name, "points": points, "finished": finished})
        return 0
    if not points:
        raise CastError(f"run {run_id} has no metric named {name!r}")
    _print_series(points, spark)
    return 0


def _print_series(points: list[dict], spark: bool) -> None:
    from .render import sparkline

    if spark:
        values = [p["value"] for p in points]
        sys.stdout.write(f"{sparkline(values, 60)}  last {_value(values[-1])}, min {_value(min(values))}, "
                         f"max {_value(max(values))}, {len(values)} points\n")
    else:
        sys.stdout.write(_series_table(points) + "\n")


def _follow(client, run_id: int, name: str | None, as_json: bool, spark: bool) -> int:
    """Each point as it arrives (`STEP NAME VALUE`), then the table of the whole."""
    import json

    points = []
    reconnect = lambda problem: sys.stderr.write(f"cast: reconnecting ({problem})\n")  # noqa: E731
    for chunk in client.follow_metrics(run_id, name=name, on_reconnect=reconnect):
        for p in chunk["points"]:
            if as_json:
                sys.stdout.write(json.dumps(p) + "\n")
            else:
                step = "-" if p["step"] is None else str(p["step"])
                value = _value(p["value"])
                sys.stdout.write(f"{step} {value}\n" if name else f"{step} {p['name']} {value}\n")
        sys.stdout.flush()
        points += chunk["points"]
    if as_json or not points:
        return 0
    sys.stdout.write("\n")
    if name:
        _print_series(points, True)
    else:
        sys.stdout.write(_summary_table(_summarize(points), _series(points)) + "\n")
    return 0


COMMANDS = (metrics,)
