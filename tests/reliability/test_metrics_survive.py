"""A worker SIGKILLed while its run writes metrics: the points the dead
attempt delivered stay, none is stored twice, none of a delivered batch is
lost (each attempt's steps are a gapless prefix), and the retried attempt's
points are numbered after them. A server SIGKILLed and restarted meanwhile:
every point once, in order."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import pytest

from tests.conftest import wait_until
from tests.factories import get_run, submit, wait_status

POINTS = 300
# Each attempt tags its points with a value of its own; steps count from 0.
COMMAND = ("python3 -c 'import random, time, cast_metrics\n"
           f"tag = random.random()\nfor i in range({POINTS}):\n"
           "    cast_metrics.log(\"p\", tag, step=i)\n    time.sleep(0.02)'")


def _points(server, run_id: int) -> list[dict]:
    with server.api() as api:
        return api.get(f"/runs/{run_id}/metrics/points", params={"limit": 100_000}).json()["points"]


@pytest.mark.short_lease
def test_a_worker_killed_mid_run_loses_and_duplicates_no_point(server, start_worker):
    worker = start_worker(server, name="doomed")
    run_id = submit(server, COMMAND, retries=1)
    wait_until(lambda: len(_points(server, run_id)) >= 50, timeout=120, what="points of the first attempt")
    worker.stop(signal.SIGKILL)
    wait_until(lambda: get_run(server, run_id)["attempt"] == 2, timeout=120, what="the run to be queued again")
    start_worker(server, name="doomed")
    final = wait_status(server, run_id, "complete", "failed", "interrupted", timeout=180)
    assert final["status"] == "complete" and final["attempt"] == 2

    points = _points(server, run_id)
    assert [p["offset"] for p in points] == list(range(len(points)))
    steps = defaultdict(list)
    for point in points:
        steps[point["value"]].append(point["step"])
    first, second = steps.values()  # in the order the attempts' points were stored
    assert 50 <= len(first) < POINTS and first == list(range(len(first))), "a gapless prefix, each point once"
    assert second == list(range(POINTS))


def test_a_server_killed_mid_run_loses_and_duplicates_no_point(start_server, start_worker):
    """The worker's outbox holds the points while the server is away and
    delivers each once when it returns on the same port and data dir."""
    server = start_server()
    start_worker(server)
    run_id = submit(server, COMMAND)
    wait_until(lambda: len(_points(server, run_id)) >= 50, timeout=120, what="the first points")
    server.stop(signal.SIGKILL)
    time.sleep(2)  # the run writes on, and the worker retries, while the server is away
    server.start()
    final = wait_status(server, run_id, "complete", "failed", "interrupted", timeout=180)
    assert final["status"] == "complete" and final["attempt"] == 1
    points = _points(server, run_id)
    assert [p["offset"] for p in points] == list(range(POINTS))
    assert [p["step"] for p in points] == list(range(POINTS))
    assert len({p["value"] for p in points}) == 1
