"""cast.server.services.hyper and hyper_driver: searches driven pass by pass.

The app runs in-process without its lifespan, so no loop drives the searches:
each test calls `drive_once` itself and plays the worker over HTTP (lease,
metrics, status), which makes every step of a search observable.
"""

from __future__ import annotations

import math
import re
import statistics

import pytest
from sqlalchemy import select

from cast.protocol.hyper import SearchStatus
from cast.server.app import create_app
from cast.server.models import SearchTrial
from cast.server.services import hyper_driver
from tests.server.conftest import STAGES_TO_END, STAGES_TO_RUNNING, in_process_api


def make_search(api, **body) -> dict:
    response = api.user.post("/searches", json={"kind": "grid", "command": "echo :x:", "params": {"x": "1,2"},
                                                 "run": {"queue_anyway": True}, **body})
    assert response.status_code == 201, response.text
    return response.json()


def drive(app, settings) -> None:
    hyper_driver.drive_once(app.state.database, settings)


def finish(api, worker_id: str, *, value_of=None, status: str = "complete") -> dict:
    """Lease the next queued run and carry it to `status`, reporting `loss` = value_of(its command)."""
    lease = api.lease(worker_id)
    assert lease is not None, "no run was queued"
    api.advance(lease, *STAGES_TO_RUNNING)
    if value_of is not None:
        value = value_of(lease["spec"]["command"])
        response = api.worker.post(f"/runs/{lease['run_id']}/metrics", json={
            "lease_token": lease["lease_token"], "seq": 0,
            "points": [{"name": "loss", "value": value + 10, "step": 0}, {"name": "loss", "value": value, "step": 1}],
        })
        assert response.status_code == 200, response.text
    api.advance(lease, *STAGES_TO_END, status, exit_code=0 if status == "complete" else 1)
    return lease


def search_of(api, search_id: int) -> dict:
    response = api.user.get(f"/searches/{search_id}")
    assert response.status_code == 200, response.text
    return response.json()


def queued(api) -> list[dict]:
    return api.user.get("/runs", params={"status": "machine_requested"}).json()["runs"]


def x_of(command: str) -> float:
    return float(re.search(r"--x (\S+)", command).group(1))


def test_a_grid_starts_its_first_run_at_once_and_the_rest_up_to_parallel(local, app, settings):
    search = make_search(local, params={"lr": "0.1,0.001", "bs": "8,16"}, command="train --lr :lr: --bs :bs:",
                         parallel=2)
    assert search["num_runs"] == 4 and search["trials_started"] == 1
    drive(app, settings)
    assert len(queued(local)) == 2
    drive(app, settings)  # parallel bounds it: nothing more while two are queued
    assert len(queued(local)) == 2
    worker = local.register()
    for _ in range(4):
        finish(local, worker)
        drive(app, settings)
    search = search_of(local, search["id"])
    assert search["status"] == "complete" and search["finished_at"]
    commands = sorted(local.user.get(f"/runs/{t['run_id']}").json()["spec"]["command"] for t in search["trials"])
    assert commands == ["train --lr 0.001 --bs 16", "train --lr 0.001 --bs 8",
                        "train --lr 0.1 --bs 16", "train --lr 0.1 --bs 8"]


def test_a_random_search_is_reproducible_from_its_seed_and_stays_in_bounds(local, app, settings):
    body = {"kind": "random", "num_runs": 3, "parallel": 3, "seed": 7,
            "params": {"lr": "loguniform:1e-5:1e-2", "layers": "int:2:8"}, "command": "t :lr: :layers:"}
    first, second = make_search(local, **body), make_search(local, **body)
    drive(app, settings)
    params = [[t["params"] for t in search_of(local, s["id"])["trials"]] for s in (first, second)]
    assert params[0] == params[1] and len(params[0]) == 3
    for point in params[0]:
        assert 1e-5 <= point["lr"] <= 1e-2 and 2 <= point["layers"] <= 8 and isinstance(point["layers"], int)
    assert len({p["lr"] for p in params[0]}) == 3


def test_values_are_read_from_metrics_and_failed_trials_shown_so(local, app, settings):
    search = make_search(local, kind="grid", params={"x": "1,2,3"}, command="t --x :x:", metric="loss",
                         metric_agg="last", parallel=3)
    drive(app, settings)
    worker = local.register()
    finish(local, worker, value_of=lambda c: x_of(c) ** 2)
    finish(local, worker)  # no metric
    finish(local, worker, value_of=lambda c: 0.5, status="failed")
    drive(app, settings)
    search = search_of(local, search["id"])
    assert search["status"] == "complete"
    values = {t["number"]: t["value"] for t in search["trials"]}
    assert values == {0: 1.0, 1: None, 2: None}
    assert search["best"]["number"] == 0 and search["best"]["value"] == 1.0


def test_the_min_aggregate_and_the_maximize_goal(local, app, settings):
    search = make_search(local, params={"x": "1,2"}, command="t --x :x:", metric="loss", metric_agg="max",
                         goal="maximize", parallel=2)
    drive(app, settings)
    worker = local.register()
    finish(local, worker, value_of=x_of)
    finish(local, worker, value_of=x_of)
    drive(app, settings)
    search = search_of(local, search["id"])
    assert sorted(t["value"] for t in search["trials"]) == [11.0, 12.0]  # the max is the first point, value+10
    assert search["best"]["value"] == 12.0


def test_a_search_whose_runs_all_fail_fails(local, app, settings):
    search = make_search(local, params={"x": "1"}, command="t :x:")
    worker = local.register()
    finish(local, worker, status="failed")
    drive(app, settings)
    search = search_of(local, search["id"])
    assert search["status"] == "failed" and "none of its 1 runs completed" in search["reason"]


def test_kill_kills_the_active_runs_and_stop_starts_nothing_more(local, app, settings):
    killed = make_search(local, params={"x": "1,2,3"}, command="t :x:", parallel=2)
    drive(app, settings)
    worker = local.register()
    lease = local.lease(worker)
    local.advance(lease, *STAGES_TO_RUNNING)
    response = local.user.post(f"/searches/{killed['id']}/kill")
    assert response.status_code == 200 and response.json()["status"] == "killed"
    statuses = {t["run_id"]: t["status"] for t in response.json()["trials"]}
    assert statuses == {lease["run_id"]: "killing", lease["run_id"] + 1: "killed"}
    drive(app, settings)
    assert search_of(local, killed["id"])["trials_started"] == 2

    stopped = make_search(local, params={"x": "1,2,3"}, command="t :x:")
    response = local.user.post(f"/searches/{stopped['id']}/stop")
    assert response.status_code == 200 and response.json()["status"] == "stopped"
    drive(app, settings)
    assert search_of(local, stopped["id"])["trials_started"] == 1
    again = local.user.post(f"/searches/{stopped['id']}/stop")
    assert again.status_code == 409
    assert again.json()["detail"] == f"search {stopped['id']} is stopped; it cannot be stopped"
    # Its queued run stays queued after stop, and kill kills it.
    assert search_of(local, stopped["id"])["trials"][0]["status"] == "machine_requested"
    assert local.user.post(f"/searches/{stopped['id']}/kill").json()["trials"][0]["status"] == "killed"
    assert local.user.post(f"/searches/{killed['id']}/kill").status_code == 409


def test_a_search_resumes_after_a_restart_without_duplicating_a_trial(local, app, settings):
    search = make_search(local, params={"x": "1,2,3,4,5"}, command="t --x :x:", parallel=2, metric="loss")
    drive(app, settings)
    worker = local.register()
    finish(local, worker, value_of=x_of)
    app.state.database.dispose()

    restarted = create_app(settings)  # a new control plane on the same data dir
    api = in_process_api(restarted, settings)
    for _ in range(3):
        drive(restarted, settings)
        drive(restarted, settings)  # a second pass in a row starts nothing twice
    worker = api.register()
    while search_of(api, search["id"])["status"] == "running":
        if queued(api):
            finish(api, worker, value_of=x_of)
        drive(restarted, settings)
    with restarted.state.database.transaction(write=False) as session:
        rows = session.execute(select(SearchTrial.number, SearchTrial.run_id)
                               .where(SearchTrial.search_id == search["id"])).all()
    assert sorted(n for n, _ in rows) == [0, 1, 2, 3, 4]
    assert len({run for _, run in rows}) == 5
    assert search_of(api, search["id"])["best"]["value"] == 1.0
    restarted.state.database.dispose()


def test_a_trial_that_can_no_longer_start_fails_the_search(local, app, settings):
    search = make_search(local, params={"x": "1,2"}, command="t :x:", parallel=2)
    # The stored run options are the search's record: spoil them as a vanished bundle would.
    from cast.server.models import Search

    with app.state.database.transaction() as session:
        row = session.get(Search, search["id"])
        row.spec = {**row.spec, "run": {**row.spec["run"], "code_bundle": "0" * 64}}
    drive(app, settings)
    search = search_of(local, search["id"])
    assert search["status"] == "failed"
    assert search["reason"].startswith("trial 1 could not start: code bundle 000")


@pytest.mark.parametrize("goal", ["minimize"])
def test_bayes_beats_the_median_of_random_on_a_toy_objective(local, app, settings, goal):
    """TPE's best of 8 trials on (x-3)**2 is below the median of 8 random trials with the same seed."""
    results = {}
    for kind in ("bayes", "random"):
        search = make_search(local, kind=kind, num_runs=8, parallel=1, seed=11, params={"x": "uniform:-10:10"},
                             command="t --x :x:", metric="loss", goal=goal)
        worker = local.register()
        while search_of(local, search["id"])["status"] == "running":
            if queued(local):
                finish(local, worker, value_of=lambda c: (x_of(c) - 3) ** 2)
            drive(app, settings)
        trials = search_of(local, search["id"])["trials"]
        assert len(trials) == 8 and all(t["value"] is not None for t in trials)
        results[kind] = [t["value"] for t in trials]
    assert min(results["bayes"]) < statistics.median(results["random"])
    assert all(math.isfinite(v) for v in results["bayes"])


def test_bayes_tells_failed_trials_to_optuna_and_goes_on(local, app, settings):
    search = make_search(local, kind="bayes", num_runs=4, seed=3, params={"x": "uniform:0:1", "c": "a,b"},
                         command="t --x :x: :c:", metric="loss")
    worker = local.register()
    outcomes = iter(["failed", "complete", "complete", "complete"])
    while search_of(local, search["id"])["status"] == "running":
        if queued(local):
            outcome = next(outcomes)
            finish(local, worker, value_of=x_of, status=outcome)
        drive(app, settings)
    search = search_of(local, search["id"])
    assert search["status"] == "complete" and len(search["trials"]) == 4
    assert [t["value"] is None for t in search["trials"]] == [True, False, False, False]
    assert all(t["params"]["c"] in ("a", "b") for t in search["trials"])


def test_search_runs_show_their_search_and_label(local, app, settings):
    search = make_search(local, params={"x": "0.001,1e-5"}, command="t --x :x:", labels=["sweep"], parallel=2)
    drive(app, settings)
    for trial in search_of(local, search["id"])["trials"]:
        run = local.user.get(f"/runs/{trial['run_id']}").json()
        assert run["search_id"] == search["id"] and run["trial"] == trial["number"]
        assert run["search_params"] == trial["params"]
        assert sorted(run["labels"]) == sorted(["sweep", f"hyper:{search['id']}"])
    commands = {local.user.get(f"/runs/{t['run_id']}").json()["spec"]["command"]
                for t in search_of(local, search["id"])["trials"]}
    assert commands == {"t --x 0.001", "t --x 1e-05"}
    assert SearchStatus(search_of(local, search["id"])["status"]) is SearchStatus.RUNNING
