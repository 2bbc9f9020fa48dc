"""cast.server.services.capacity: a run that no present worker could ever run
is refused at submit, naming the workers and their capacities, unless queued
anyway; the waiting line a queued run's log gets; which workers count as
present; the overview `GET /status` serves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from cast.protocol.messages import RunSpec
from cast.server.errors import NoWorkerCan
from cast.server.models import Worker, utcnow
from cast.server.schemas.runs import RunCreate
from cast.server.services import capacity, runs
from tests.factories import page_entries

from .conftest import add_user, admin_of


def _create(app, settings, owner=None, **body):
    database = app.state.database
    with database.transaction() as session:
        run, _reused = runs.create_run(session, owner=owner or admin_of(database), settings=settings,
                              body=RunCreate(command="true", **body))
        return run.id


def _cast_lines(local, run_id: int) -> list[str]:
    entries = page_entries(local.user.get(f"/runs/{run_id}/logs").json())
    return [e["text"] for e in entries if e["stream"] == "cast"]


def _register(local, name: str, *, executor: str = "local", gpus=(), memory: int = 8 * 1024**3,
              sandboxed: bool = True, max_runs: int = 1) -> str:
    response = local.worker.post("/workers", json={"name": name, "executor": executor, "gpus": list(gpus),
                                                   "cpus": 2, "memory": memory, "sandboxed": sandboxed,
                                                   "max_runs": max_runs})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_with_no_worker_at_all_a_run_queues_and_says_so(app, settings, local):
    run_id = _create(app, settings, machine_type="gpu:4", apt=["curl"])
    assert local.run(run_id)["status"] == "machine_requested"
    assert _cast_lines(local, run_id) == ["waiting: no worker registered yet; it runs once one does"]


def test_a_gpu_run_on_cpu_only_workers_is_refused_naming_them(app, settings, local):
    _register(local, "w1")
    with pytest.raises(NoWorkerCan) as refused:
        _create(app, settings, machine_type="gpu")
    assert str(refused.value) == ("no worker can run this: it asks for 1 GPU; workers: "
                                  "w1 (local, 2 CPUs, 8.0 GB, no GPU) (--queue-anyway waits for a worker that can)")
    response = local.user.post("/runs", json={"command": "true", "machine_type": "gpu"})
    assert response.status_code == 409 and response.json()["detail"].startswith("no worker can run this")
    assert local.user.get("/runs").json()["runs"] == []  # nothing was queued


def test_more_gpus_than_any_worker_has_is_refused(app, settings, local):
    _register(local, "g2", executor="docker", gpus=[0, 1])
    _create(app, settings, machine_type="gpu:2")  # fits
    with pytest.raises(NoWorkerCan, match=r"it asks for 3 GPUs; workers: g2 \(docker, 2 CPUs, 8.0 GB, 2 GPUs\)"):
        _create(app, settings, machine_type="gpu:3")


def test_apt_and_docker_images_are_refused_where_every_worker_is_local(app, settings, local):
    _register(local, "w1")
    with pytest.raises(NoWorkerCan, match="apt packages, which the local executor cannot install"):
        _create(app, settings, apt=["curl"])
    with pytest.raises(NoWorkerCan, match="a Docker image, which the local executor cannot use"):
        _create(app, settings, docker_image="python:3.11-slim")
    _register(local, "d1", executor="docker")
    run_id = _create(app, settings, apt=["curl"])  # the docker worker can
    assert local.run(run_id)["status"] == "machine_requested"


def test_queue_anyway_queues_what_no_worker_can_run_and_says_what_it_waits_for(app, settings, local):
    _register(local, "w1")
    run_id = _create(app, settings, machine_type="gpu", queue_anyway=True)
    assert local.run(run_id)["status"] == "machine_requested"
    assert "queue_anyway" not in local.run(run_id)["spec"]
    assert _cast_lines(local, run_id) == [
        "waiting: no connected worker can run this (queued anyway); it runs once one that can connects"]


def test_a_run_waiting_for_busy_able_workers_says_so_and_one_with_room_says_nothing(app, settings, local):
    first = _register(local, "g1", gpus=[0])
    _register(local, "g2", gpus=[0])
    idle = _create(app, settings, machine_type="gpu")
    assert _cast_lines(local, idle) == []  # a worker has room: it starts at once
    assert local.lease(first, free_gpus=1)["run_id"] == idle
    second = _create(app, settings, machine_type="gpu")
    assert _cast_lines(local, second) == []  # g2 is free
    assert local.lease(_register(local, "g2", gpus=[0]), free_gpus=1)["run_id"] == second
    third = _create(app, settings, machine_type="gpu")
    assert _cast_lines(local, third) == ["waiting: 2 GPU workers can run it, both busy"]
    cpu_run = _create(app, settings)
    assert _cast_lines(local, cpu_run) == ["waiting: 2 workers can run it, both busy"]


def test_workers_long_gone_do_not_count_and_a_reregistered_name_replaces_its_record(app, settings, local):
    old = _register(local, "old", gpus=[0])
    with app.state.database.transaction() as session:
        gone = utcnow() - timedelta(seconds=capacity.presence_seconds(settings) + 1)
        session.execute(update(Worker).where(Worker.id == old).values(last_seen_at=gone, registered_at=gone))
    run_id = _create(app, settings, machine_type="gpu")  # no present worker: queued, as with none at all
    assert _cast_lines(local, run_id)[0].startswith("waiting: no worker is connected (none asked for work in the last")
    _register(local, "w1", gpus=[0])
    _register(local, "w1")  # restarted without its GPU
    with pytest.raises(NoWorkerCan, match=r"workers: w1 \(local, 2 CPUs, 8.0 GB, no GPU\) \("):
        _create(app, settings, machine_type="gpu")


def test_unsandboxed_workers_cannot_run_anything_once_a_server_has_several_users(app, settings, local):
    _register(local, "open", sandboxed=False)
    _create(app, settings)  # one user: allowed
    add_user(app.state.database, "alice")
    with pytest.raises(NoWorkerCan, match=r"it asks for a sandboxed worker .*open \(local, 2 CPUs, 8.0 GB, no GPU, "
                                          r"unsandboxed\)"):
        _create(app, settings)


def test_why_unable_compares_gpus_and_the_executor(app, settings):
    worker = Worker(name="w", executor="local", cpus=1, memory=1, gpus=[0], sandboxed=True, max_runs=1)
    assert capacity.why_unable(worker, RunSpec(command="x", gpus=1), unsandboxed_refused=True) is None
    assert capacity.why_unable(worker, RunSpec(command="x", gpus=2), unsandboxed_refused=False) == "2 GPUs"
    assert capacity.describe_worker(worker) == "w (local, 1 CPU, 1 B, 1 GPU)"


def test_overview_lists_present_workers_with_their_runs_and_the_queue(app, settings, local):
    database = app.state.database
    w1 = _register(local, "w1", gpus=[0, 1], max_runs=2)
    running = _create(app, settings, machine_type="gpu")
    assert local.lease(w1, free_gpus=2)["run_id"] == running
    alice = add_user(database, "alice")
    _create(app, settings, owner=alice, queue_anyway=True)
    _create(app, settings, machine_type="gpu:2", queue_anyway=True)
    with database.transaction(write=False) as session:
        view = capacity.overview(session, settings=settings, viewer=admin_of(database))
        alices = capacity.overview(session, settings=settings, viewer=alice)
    [worker] = view["workers"]
    assert {k: worker[k] for k in ("name", "executor", "cpus", "memory", "gpus", "max_runs", "runs", "busy")} == {
        "name": "w1", "executor": "local", "cpus": 2, "memory": 8 * 1024**3, "gpus": 2, "max_runs": 2,
        "runs": [running], "busy": 1}
    assert view["queue"] == {"total": 2, "by_machine_type": {"cpu": 1, "gpu:2": 1}}
    assert alices["workers"][0]["runs"] == [] and alices["workers"][0]["busy"] == 1  # not hers: counted only
