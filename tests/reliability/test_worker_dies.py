"""A worker SIGKILLed mid-run, on the local and the Docker executor: the run
becomes `interrupted` once its lease runs out, what the dead worker left
running ends with it (the local sandbox) or when a worker comes back on the
same work dir (a container), `--retries` queues the run again with the next attempt
number, and every line logged before the crash is kept."""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.factories import get_run, log_texts, run_id_of, wait_for_line, wait_status
from tests.conftest import wait_until

from tests.reliability.helpers import live_members

LINES = [f"line {i}" for i in range(1, 21)]
# Leaves a child behind (`sleep 300 &`) that outlives a dead worker unless
# someone ends it; the main command ends by itself after a few seconds.
COMMAND = "echo started; for i in $(seq 20); do echo line $i; done; sleep 300 & sleep 6; echo finished"


def _leftovers(executor: str, worker, run_id: int, engine) -> list:
    """What runs of `worker` left on the host: live process groups or containers."""
    if executor == "local":
        records = worker.work_dir / "process-groups"
        groups = [int(record.name) for record in records.iterdir()] if records.is_dir() else []
        return [pgid for pgid in groups if live_members(pgid)]
    # sparse: a full list inspects each container, and one removed meanwhile raises NotFound.
    return engine.containers.list(all=True, sparse=True, filters={
        "label": [f"cast.work_dir={worker.work_dir.resolve()}", f"cast.run_id={run_id}"]})


@pytest.mark.short_lease
@pytest.mark.parametrize("executor", ["local", "docker"])
def test_a_worker_killed_mid_run_is_noticed_cleaned_up_and_retried(executor, request, server, start_worker, cli):
    engine = request.getfixturevalue("engine") if executor == "docker" else None
    env = request.getfixturevalue("docker_env") if executor == "docker" else {}
    worker = start_worker(server, executor=executor, name="doomed", env=env)
    run_id = run_id_of(cli("run", "-d", "--retries", "1", COMMAND))
    wait_for_line(server, run_id, "line 20", timeout=120)
    assert _leftovers(executor, worker, run_id, engine), "the run should be live on the host"

    worker.stop(signal.SIGKILL)
    run = wait_until(lambda: (r := get_run(server, run_id))["attempt"] == 2 and r, timeout=120,
                     what="the run to be interrupted and queued again")
    interrupted = [t for t in run["transitions"] if t["status"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["note"].startswith("worker lost")
    assert run["transitions"][-1]["status"] in ("machine_requested", "building")
    # A container still holds the host until a worker comes back; the local
    # sandbox dies with the worker that started it.
    orphans = _leftovers(executor, worker, run_id, engine)
    if executor == "local":
        wait_until(lambda: not _leftovers(executor, worker, run_id, engine), timeout=120,
                   what="the sandbox to die with its worker")
    else:
        assert orphans

    start_worker(server, executor=executor, name="doomed", env=env)  # the same work dir
    if executor == "local":
        wait_until(lambda: not any(live_members(pgid) for pgid in orphans), timeout=120,
                   what="the orphaned process group to be ended")
    else:
        orphan_ids = {container.id for container in orphans}
        wait_until(lambda: not orphan_ids & {c.id for c in _leftovers(executor, worker, run_id, engine)},
                   timeout=120, what="the orphaned container to be removed")

    final = wait_status(server, run_id, "complete", "failed", "interrupted", timeout=120)
    assert final["status"] == "complete" and final["attempt"] == 2
    info = cli("info", str(run_id)).stdout
    assert re.search(r"^Attempt:\s+2 of 2$", info, re.MULTILINE), info
    # Attempt 1's lines, all of them and once, then attempt 2's whole log.
    assert log_texts(server, run_id, "stdout") == ["started", *LINES, "started", *LINES, "finished"]
    # Released after the final status (the user is not kept waiting for it).
    if executor == "local":
        wait_until(lambda: os.listdir(worker.work_dir / "process-groups") == [], timeout=60,
                   what="the run's process group record to be removed")
    else:
        wait_until(lambda: _leftovers(executor, worker, run_id, engine) == [], timeout=60,
                   what="the run's container to be removed")
