"""Search routes: the answers' shapes and codes, refusals naming the field, the
first run made with the request, and a user reaching only their own searches
(an admin, every search). The driver's work is tested in services/test_hyper.py."""

from __future__ import annotations

import pytest

GRID = {"kind": "grid", "command": "python t.py --lr :lr:", "params": {"lr": "0.1,0.01"},
        "run": {"queue_anyway": True, "pip": ["tqdm"], "env": {"A": "1"}}, "labels": ["sweep"]}


def _user(local, name: str) -> dict:
    created = local.user.post("/users", json={"name": name})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']['token']}"}


def test_create_answers_201_with_the_search_and_its_first_run(local):
    created = local.user.post("/searches", json={**GRID, "metric": "loss", "seed": 9})
    assert created.status_code == 201, created.text
    search = created.json()
    assert {k: search[k] for k in ("kind", "status", "command", "params", "labels", "num_runs", "parallel", "metric",
                                   "goal", "metric_agg", "seed", "owner", "trials_started", "best", "reason")} == {
        "kind": "grid", "status": "running", "command": GRID["command"], "params": GRID["params"],
        "labels": ["sweep"], "num_runs": 2, "parallel": 1, "metric": "loss", "goal": "minimize",
        "metric_agg": "last", "seed": 9, "owner": "admin", "trials_started": 1, "best": None, "reason": None}
    [trial] = search["trials"]
    assert trial == {"number": 0, "params": {"lr": 0.1}, "run_id": trial["run_id"], "status": "machine_requested",
                     "value": None}
    run = local.run(trial["run_id"])
    assert run["spec"]["command"] == "python t.py --lr 0.1" and run["spec"]["pip"] == ["tqdm"]
    assert run["spec"]["env"] == {"A": "1"} and sorted(run["labels"]) == [f"hyper:{search['id']}", "sweep"]
    assert (run["search_id"], run["trial"], run["search_params"]) == (search["id"], 0, {"lr": 0.1})
    assert local.user.get(f"/searches/{search['id']}").json() == search
    listed = local.user.get("/searches").json()["searches"]
    assert [s["id"] for s in listed] == [search["id"]] and "trials" not in listed[0]


def test_a_run_made_by_no_search_says_so(local):
    run = local.create_run()
    assert (run["search_id"], run["trial"], run["search_params"]) == (None, None, None)


def test_a_server_chosen_seed_is_answered(local):
    search = local.user.post("/searches", json={**GRID, "kind": "random", "num_runs": 3}).json()
    assert isinstance(search["seed"], int) and 0 <= search["seed"] < 2**32


@pytest.mark.parametrize(("change", "status", "detail"), [
    ({"kind": "anneal"}, 422, "kind"),
    ({"command": ""}, 422, "command"),
    ({"params": {}}, 400, "at least one param"),
    ({"params": {"lr": "0.1", "bs": "8"}}, 400, "param bs is not used"),
    ({"command": "t :lr: :x:"}, 400, "uses :x: but no --param x"),
    ({"num_runs": 0}, 422, "num_runs"),
    ({"parallel": 0}, 422, "parallel"),
    ({"seed": -1}, 422, "seed"),
    ({"goal": "best"}, 422, "goal"),
    ({"metric_agg": "mean"}, 422, "metric_agg"),
    ({"labels": ["-bad"]}, 400, "label '-bad'"),
    ({"run": {"command": "x"}}, 422, "give the search's command outside run"),
    ({"run": {"labels": ["x"]}}, 422, "give the search's labels outside run"),
    ({"run": {"machine_type": "tpu"}}, 400, "run.machine_type"),
    ({"run": {"retries": 99}}, 400, "run.retries"),
    ({"run": {"mounts": [{"resource": "runs/424242"}]}}, 400, "run 424242 does not exist"),
    ({"run": {"code_bundle": "0" * 64}}, 400, "code bundle 000"),
    ({"extra": 1}, 422, "extra"),
])
def test_bad_bodies_are_refused_and_make_nothing(local, change, status, detail):
    answer = local.user.post("/searches", json={**GRID, **change})
    assert answer.status_code == status, answer.text
    assert detail in answer.json()["detail"]
    assert local.user.get("/searches").json()["searches"] == []
    assert local.user.get("/runs").json()["runs"] == []


def test_stop_and_kill_answer_the_search_and_refuse_an_ended_one(local):
    search = local.user.post("/searches", json=GRID).json()
    stopped = local.user.post(f"/searches/{search['id']}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert stopped.json()["reason"] == "stopped by admin" and stopped.json()["finished_at"]
    assert stopped.json()["trials"][0]["status"] == "machine_requested"  # stop lets it run
    killed = local.user.post(f"/searches/{search['id']}/kill")
    assert killed.status_code == 200 and killed.json()["status"] == "killed"
    assert killed.json()["trials"][0]["status"] == "killed"
    for action, done in (("stop", "stopped"), ("kill", "killed")):
        again = local.user.post(f"/searches/{search['id']}/{action}")
        assert again.status_code == 409
        assert again.json()["detail"] == f"search {search['id']} is killed; it cannot be {done}"


def test_a_user_reaches_only_their_own_searches_and_an_admin_every_search(local):
    alice = _user(local, "alice")
    admins = local.user.post("/searches", json=GRID).json()["id"]
    hers = local.user.post("/searches", json=GRID, headers=alice).json()
    assert hers["owner"] == "alice"
    assert [s["id"] for s in local.user.get("/searches", headers=alice).json()["searches"]] == [hers["id"]]
    assert [s["id"] for s in local.user.get("/searches").json()["searches"]] == [hers["id"], admins]
    assert local.run(hers["trials"][0]["run_id"])["owner"] == "alice"
    for method, path in (("GET", ""), ("POST", "/stop"), ("POST", "/kill")):
        answer = local.user.request(method, f"/searches/{admins}{path}", headers=alice)
        assert answer.status_code == 404 and answer.json()["detail"] == f"search {admins} not found"
    assert local.user.get(f"/searches/{admins}").json()["status"] == "running"
    assert local.user.post(f"/searches/{hers['id']}/stop").status_code == 200  # an admin may
