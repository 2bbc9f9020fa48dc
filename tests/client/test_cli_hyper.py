"""`cast hyper`: searches submitted with the real CLI, driven by a real control
plane and run by a real worker; the toy script reports `(x-3)**2` as `loss`
to $CAST_METRICS."""

from __future__ import annotations

import statistics
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from cast.protocol import hyper
from tests.client.helpers import assert_one_line_error
from tests.conftest import wait_until

TOY = """\
import json, os, sys, time
x = float(sys.argv[1])
time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
with open(os.environ["CAST_METRICS"], "a") as metrics:
    metrics.write(json.dumps({"name": "loss", "value": (x - 3) ** 2, "step": 1}) + "\\n")
print("x", x, "rest", sys.argv[2:])
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "toy.py").write_text(TOY)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "toy"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


def submit(cli, repo: Path, kind: str, *args: str) -> dict:
    result = cli("hyper", kind, "--json", *args, cwd=repo)
    assert result.returncode == 0, result
    return result.json()


def wait_search(cli, search_id: int, timeout: float = 240) -> dict:
    def ended():
        search = cli("hyper", "info", str(search_id), "--json").json()
        return search if search["status"] != "running" else None

    return wait_until(ended, timeout=timeout, interval=0.5, what=f"search {search_id} to end")


def run_of(cli, run_id: int) -> dict:
    return cli("info", str(run_id), "--json").json()


def test_a_grid_runs_each_combination_once_with_its_command_and_shows_it(cli, worker, repo):
    search = submit(cli, repo, "grid", "-p", "x=1,2.5", "-p", "opt=adam,sgd", "--parallel", "2",
                    "--metric", "loss", "python toy.py :x: --opt :opt:")
    assert search["kind"] == "grid" and search["num_runs"] == 4
    done = wait_search(cli, search["id"])
    assert done["status"] == "complete"
    trials = done["trials"]
    assert sorted((t["params"]["x"], t["params"]["opt"]) for t in trials) == [
        (1, "adam"), (1, "sgd"), (2.5, "adam"), (2.5, "sgd")]
    assert all(t["status"] == "complete" for t in trials)
    for trial in trials:
        run = run_of(cli, trial["run_id"])
        assert run["spec"]["command"] == f"python toy.py {trial['params']['x']} --opt {trial['params']['opt']}"
        assert f"hyper:{search['id']}" in run["labels"]
        assert trial["value"] == (trial["params"]["x"] - 3) ** 2
    assert done["best"]["params"]["x"] == 2.5

    text = cli("hyper", "info", str(search["id"])).stdout
    lines = text.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("TRIAL")):]
    assert table[0].split() == ["TRIAL", "RUN", "STATUS", "x", "opt", "loss"]
    assert [row.split()[3] for row in table[1:]] == ["2.5", "2.5", "1", "1"]  # best first
    assert table[1].split()[-1] == "0.25"

    shown = cli("info", str(trials[1]["run_id"])).stdout
    expected = hyper.describe_params(trials[1]["params"])
    assert f"Search:" in shown and f"{search['id']}, trial 1 ({expected})" in shown
    listed = cli("ps", "--label", f"hyper:{search['id']}", "--json").json()
    assert sorted(r["id"] for r in listed) == sorted(t["run_id"] for t in trials)
    ls = cli("hyper", "ls").stdout
    assert f"loss=0.25 (x=2.5, opt=" in ls and "complete" in ls


def test_a_random_search_draws_the_seeded_points_within_bounds(cli, worker, repo):
    search = submit(cli, repo, "random", "-n", "3", "--seed", "5", "-p", "x=uniform:0:6", "-p", "n=int:2:8",
                    "--parallel", "3", "python toy.py :x: :n:")
    done = wait_search(cli, search["id"])
    assert done["status"] == "complete" and done["seed"] == 5
    params = hyper.parse_params({"x": "uniform:0:6", "n": "int:2:8"})
    assert [t["params"] for t in done["trials"]] == [hyper.sample(params, seed=5, number=i) for i in range(3)]
    for trial in done["trials"]:
        assert 0 <= trial["params"]["x"] <= 6 and 2 <= trial["params"]["n"] <= 8
        assert run_of(cli, trial["run_id"])["spec"]["command"] == hyper.substitute("python toy.py :x: :n:",
                                                                                  trial["params"])


def test_parallel_one_never_has_two_runs_queued_or_active(cli, worker, repo):
    search = submit(cli, repo, "grid", "-p", "x=1,2,3", "--parallel", "1", "-e", "TOY_SLEEP=0.5",
                    "python toy.py :x:")
    done = wait_search(cli, search["id"])
    spans = []
    for trial in done["trials"]:
        transitions = run_of(cli, trial["run_id"])["transitions"]
        spans.append((datetime.fromisoformat(transitions[0]["at"]), datetime.fromisoformat(transitions[-1]["at"])))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans


def test_bayes_finds_a_better_point_than_the_median_of_random(cli, worker, repo):
    values = {}
    for kind in ("bayes", "random"):
        search = submit(cli, repo, kind, "-n", "8", "--parallel", "2", "--seed", "21", "-p", "x=uniform:-10:10",
                        "--metric", "loss", "--goal", "minimize", "python toy.py :x:")
        done = wait_search(cli, search["id"], timeout=400)
        assert done["status"] == "complete" and len(done["trials"]) == 8
        values[kind] = [t["value"] for t in done["trials"]]
    assert min(values["bayes"]) < statistics.median(values["random"]), values


def test_a_failed_trial_is_shown_failed(cli, worker, repo):
    search = submit(cli, repo, "grid", "-p", "x=1,oops", "--metric", "loss", "python toy.py :x:")
    done = wait_search(cli, search["id"])
    assert done["status"] == "complete"
    by_x = {t["params"]["x"]: t for t in done["trials"]}
    assert by_x["oops"]["status"] == "failed" and by_x["oops"]["value"] is None
    rows = [line.split() for line in cli("hyper", "info", str(search["id"])).stdout.splitlines()]
    assert ["1", str(by_x["oops"]["run_id"]), "failed", "oops", "failed"] in rows


def test_stop_lets_running_runs_finish_and_kill_kills_them(cli, worker, repo):
    # Long enough to be seen running between two `cast hyper info` on a busy machine.
    stopped = submit(cli, repo, "grid", "-p", "x=1,2,3", "-e", "TOY_SLEEP=10", "python toy.py :x:")
    wait_until(lambda: cli("hyper", "info", str(stopped["id"]), "--json").json()["trials"][0]["status"] == "running",
               timeout=60, what="the first run to start")
    result = cli("hyper", "stop", str(stopped["id"]))
    assert result.returncode == 0
    assert result.stdout == f"Search {stopped['id']} is stopped: no new runs; 1 active run(s) will finish\n"
    wait_until(lambda: cli("hyper", "info", str(stopped["id"]), "--json").json()["trials"][0]["status"] == "complete",
               timeout=60, what="the running run to finish")
    after = cli("hyper", "info", str(stopped["id"]), "--json").json()
    assert after["status"] == "stopped" and len(after["trials"]) == 1 and after["trials"][0]["status"] == "complete"

    killed = submit(cli, repo, "grid", "-p", "x=1,2,3", "--parallel", "2", "-e", "TOY_SLEEP=30",
                    "python toy.py :x:")
    wait_until(lambda: len(cli("hyper", "info", str(killed["id"]), "--json").json()["trials"]) == 2,
               timeout=30, what="two runs")
    result = cli("hyper", "kill", str(killed["id"]))
    assert result.returncode == 0 and "is killed: no new runs; 2 active run(s) are being killed" in result.stdout
    wait_until(lambda: all(t["status"] == "killed"
                           for t in cli("hyper", "info", str(killed["id"]), "--json").json()["trials"]),
               timeout=60, what="its runs killed")
    again = cli("hyper", "stop", str(killed["id"]))
    assert_one_line_error(again, f"search {killed['id']} is killed; it cannot be stopped")


def test_a_search_survives_a_control_plane_restart(start_server, start_worker, cast_for, repo, tmp_path):
    server = start_server()
    worker = start_worker(server)
    cli = cast_for(server)
    search = submit(cli, repo, "random", "-n", "5", "--parallel", "2", "--seed", "3", "-p", "x=uniform:0:6",
                    "-e", "TOY_SLEEP=1", "--metric", "loss", "python toy.py :x:")
    wait_until(lambda: len(cli("hyper", "info", str(search["id"]), "--json").json()["trials"]) >= 2,
               timeout=60, what="two trials")
    server.stop()
    restarted = start_server(data_dir=server.data_dir, port=server.port)
    done = wait_search(cast_for(restarted), search["id"])
    assert done["status"] == "complete"
    assert [t["number"] for t in done["trials"]] == [0, 1, 2, 3, 4]
    assert len({t["run_id"] for t in done["trials"]}) == 5
    assert all(t["status"] == "complete" and t["value"] is not None for t in done["trials"])
    worker.stop()


BAD_INPUT = [
    (["grid", "-p", "x=1,2", "python toy.py :x: :y:"], "the command uses :y: but no --param y=... is given"),
    (["grid", "-p", "x=1,2", "-p", "y=3", "python toy.py :x:"], "param y is not used in the command"),
    (["random", "-n", "2", "-p", "x=loguniform:0:1", "python toy.py :x:"], "needs LOW above 0"),
    (["random", "-n", "2", "-p", "x=normal:0:1", "python toy.py :x:"], "is not uniform:, loguniform: or int:"),
    (["grid", "-p", "x=", "python toy.py :x:"], "must list values"),
    (["random", "-p", "x=1,2", "python toy.py :x:"], "a random search needs --num-runs"),
    (["bayes", "-n", "3", "-p", "x=uniform:0:1", "python toy.py :x:"], "a bayes search needs --metric"),
    (["grid", "-p", "a=1,2,3,4,5,6,7,8,9,10", "-p", "b=1,2,3,4,5,6,7,8,9,10", "-p", "c=int:1:11",
      "python toy.py :a: :b: :c:"], "the grid has more than 1000 combinations"),
    (["grid", "-p", "x", "python toy.py :x:"], "must be NAME=VALUES"),
    (["grid", "-p", "x=1", "python toy.py :x:", "--parallel", "2"], "option --parallel after the command"),
    (["random", "-n", "5000", "-p", "x=1,2", "python toy.py :x:"], "--num-runs 5000 must be between 1 and 1000"),
]


def test_bad_input_is_one_line_and_submits_nothing(cli, server, repo):
    for args, message in BAD_INPUT:
        result = cli("hyper", *args, cwd=repo)
        assert result.returncode == 2, result
        assert_one_line_error(result, message)
    assert cli("hyper", "ls", "--json").json() == []


def test_an_unknown_search_is_one_line(cli, server):
    assert_one_line_error(cli("hyper", "info", "99"), "search 99 not found")
