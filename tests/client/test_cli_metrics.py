"""`cast metrics`: the table with sparklines, one metric's series and its
sparkline, --json, --follow to the run's end, and the refusals."""

from __future__ import annotations

import json
import shlex
import subprocess

from tests.client.helpers import assert_one_line_error
from tests.factories import get_run, submit, wait_final, wait_for_line

SCRIPT = ("import cast_metrics, time\n"
          "for i in range(8):\n"
          "    cast_metrics.log('loss', 8 - i, step=i)\n"
          "    cast_metrics.log('lr', 0.5, step=i)\n"
          "print('half way', flush=True)\n"
          "while {gated} and not os.path.exists('go'):\n"
          "    time.sleep(0.05)\n"
          "cast_metrics.log('loss', 0.5, step=8)\n")


def _run(server, *, gated: bool = False) -> int:
    """The run; a gated one waits, half way, for a file `go` in its working dir."""
    return submit(server, f"python3 -c {shlex.quote('import os; ' + SCRIPT.format(gated=gated))}")


def test_the_table_the_series_and_json(cli, server, worker):
    run_id = _run(server)
    assert wait_final(server, run_id)["status"] == "complete"
    table = cli("metrics", str(run_id))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "LAST", "MIN", "MAX", "COUNT", "STEP"]
    assert lines[1].split() == ["loss", "0.5", "0.5", "8", "9", "8", "█▇▆▅▄▃▂▁▁"]
    assert lines[2].split() == ["lr", "0.5", "0.5", "0.5", "8", "7", "▁▁▁▁▁▁▁▁"]

    series = cli("metrics", str(run_id), "loss")
    assert series.stdout.splitlines()[0].split() == ["STEP", "VALUE"]
    assert [line.split() for line in series.stdout.splitlines()[1:]] == [
        [str(i), str(8 - i)] for i in range(8)] + [["8", "0.5"]]
    spark = cli("metrics", str(run_id), "loss", "--spark")
    assert spark.stdout == "█▇▆▅▄▃▂▁▁  last 0.5, min 0.5, max 8, 9 points\n"

    summary = cli("metrics", str(run_id), "--json").json()
    assert summary["finished"] is True and summary["next_offset"] == 17
    assert [(m["name"], m["count"], m["last"], m["last_step"]) for m in summary["metrics"]] == [
        ("loss", 9, 0.5, 8), ("lr", 8, 0.5, 7)]
    points = cli("metrics", str(run_id), "lr", "--json").json()
    assert points["name"] == "lr" and [p["step"] for p in points["points"]] == list(range(8))


def test_follow_prints_points_as_they_arrive_until_the_run_ends(cli, server, worker, base_env, tmp_path):
    run_id = _run(server, gated=True)
    wait_for_line(server, run_id, "half way")
    env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token}
    follower = subprocess.Popen(["cast", "metrics", str(run_id), "loss", "-f"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = follower.stdout.readline()
    assert first == "0 8\n"
    assert get_run(server, run_id)["status"] == "running"  # printed while the run goes on
    (workdir,) = [p for p in (worker.work_dir / "runs").glob(f"{run_id}-*") if not p.name.endswith(".metrics")]
    (workdir / "go").touch()
    # Read on through the same buffered pipe: readline above may have buffered later lines.
    out, err = follower.stdout.read(), follower.stderr.read()
    assert follower.wait(timeout=120) == 0, err
    lines = (first + out).splitlines()
    assert lines[:9] == [f"{i} {8 - i}" for i in range(8)] + ["8 0.5"]
    assert lines[-1] == "█▇▆▅▄▃▂▁▁  last 0.5, min 0.5, max 8, 9 points"
    as_json = cli("metrics", str(run_id), "-f", "--json")
    assert [json.loads(line)["name"] for line in as_json.stdout.splitlines()].count("loss") == 9


def test_refusals_are_one_line(cli, server, worker):
    assert_one_line_error(cli("metrics", "424242"), "not found")
    run_id = submit(server, "true")
    assert wait_final(server, run_id)["status"] == "complete"
    assert cli("metrics", str(run_id)).stdout == f"Run {run_id} has no metrics\n"
    assert_one_line_error(cli("metrics", str(run_id), "loss"), f"run {run_id} has no metric named 'loss'")
