"""GET /api/v1/status: the server (URL, version; database and storage for
admins), the present workers with capacities and runs, the queue."""

from __future__ import annotations

from cast.server.api.health import VERSION


def test_status_shows_the_server_its_workers_and_the_queue(local, settings):
    worker_id = local.worker.post("/workers", json={"name": "w1", "executor": "docker", "cpus": 4,
                                                     "memory": 2**30, "gpus": [0], "sandboxed": True}).json()["id"]
    running = local.create_run(machine_type="gpu")["id"]
    assert local.lease(worker_id, free_gpus=1)["run_id"] == running
    local.create_run(machine_type="gpu")
    local.create_run()
    answer = local.user.get("/status")
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert status["server"] == {
        "url": "http://testserver", "version": VERSION, "database": settings.sqlalchemy_url,
        "storage": str(settings.resolved_data_dir), "lease_seconds": 2.0, "presence_seconds": 60.0,
    }
    [worker] = status["workers"]
    assert {k: v for k, v in worker.items() if k not in ("id", "last_seen_at")} == {
        "name": "w1", "executor": "docker", "sandboxed": True, "cpus": 4, "memory": 2**30, "gpus": 1,
        "max_runs": 1, "runs": [running], "busy": 1,
    }
    assert status["queue"] == {"total": 2, "by_machine_type": {"cpu": 1, "gpu": 1}}


def test_a_user_sees_no_paths_and_only_their_own_run_numbers(local):
    worker_id = local.register()
    running = local.create_run()["id"]
    assert local.lease(worker_id)["run_id"] == running
    bob = {"Authorization": f"Bearer {local.user.post('/users', json={'name': 'bob'}).json()['token']['token']}"}
    status = local.user.get("/status", headers=bob).json()
    assert status["server"]["database"] is None and status["server"]["storage"] is None
    assert [(w["runs"], w["busy"]) for w in status["workers"]] == [([], 1)]
    assert local.worker.get("/status").status_code == 403  # a worker token is no user's
