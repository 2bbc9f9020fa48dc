"""Worker routes against the real server: long-poll leases, races between
workers, heartbeats, lease expiry and retries. The worker is played with raw
HTTP calls, so a worker that stops heartbeating is just one that stops calling."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.conftest import wait_until


def test_long_poll_answers_as_soon_as_a_run_is_queued(live):
    worker = live.register()
    assert live.lease(worker, wait=0) is None
    started = time.monotonic()
    assert live.lease(worker, wait=0.3) is None
    assert 0.25 < time.monotonic() - started < 2
    got = {}

    def poll():
        got["lease"] = live.lease(worker, wait=20)
        got["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    queued_at = time.monotonic()
    run_id = live.create_run()["id"]
    poller.join(25)
    assert got["lease"]["run_id"] == run_id
    assert got["at"] - queued_at < 0.25, "the long poll should wake at once, not poll slowly"


def test_unknown_worker_must_register_again(local):
    response = local.worker.post("/workers/w-nope/lease", json={"free_gpus": 0, "wait": 0})
    assert response.status_code == 404
    assert "register again" in response.json()["detail"]


def test_workers_racing_over_http_each_get_distinct_runs(live, server):
    expected = {live.create_run()["id"] for _ in range(50)}
    claimed: list[list[int]] = [[] for _ in range(4)]

    def drain(index: int) -> None:
        with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {server.worker_token}"}) as client:
            worker = client.post("/workers", json={"name": f"racer{index}", "executor": "local"}).json()["id"]
            while True:
                response = client.post(f"/workers/{worker}/lease", json={"free_gpus": 0, "wait": 0})
                if response.status_code == 204:
                    return
                claimed[index].append(response.json()["run_id"])

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [run_id for runs in claimed for run_id in runs]
    assert sorted(everything) == sorted(expected)
    assert sum(1 for runs in claimed if runs) >= 2, "the race should have had several winners"


def test_a_silent_worker_loses_its_run_within_two_lease_periods(live):
    run_id = live.create_run()["id"]
    lease = live.lease(live.register())
    live.advance(lease, "mounting", "running")
    assert live.append(lease, 0, "before the crash").status_code == 200
    beat = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert beat.status_code == 200 and beat.json()["status"] == "running"
    last_sign_of_life = time.monotonic()
    lease_seconds = lease["lease_seconds"]
    assert lease_seconds == 2
    run = wait_until(lambda: (r := live.run(run_id))["status"] == "interrupted" and r,
                     timeout=4 * lease_seconds, interval=0.05, what="the run to be interrupted")
    assert time.monotonic() - last_sign_of_life < 2 * lease_seconds
    assert run["reason"] == "worker lost: no heartbeat for 2s"
    assert run["finished_at"] is not None
    lost = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert lost.status_code == 409 and "lease" in lost.json()["detail"]
    assert live.report(run_id, lease["lease_token"], "saving").status_code == 409
    texts = [e["text"] for e in live.user.get(f"/runs/{run_id}/logs").json()["entries"]]
    assert "before the crash" in texts
    assert texts[-1] == "Run interrupted: worker lost: no heartbeat for 2s"


def test_heartbeats_keep_a_lease_alive(live):
    run_id = live.create_run()["id"]
    lease = live.lease(live.register())
    for _ in range(6):  # one and a half lease periods
        time.sleep(0.5)
        beat = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
        assert beat.status_code == 200, beat.text
    assert live.run(run_id)["status"] == "building"


def test_retries_requeue_with_the_next_attempt(live):
    run_id = live.create_run(retries=1)["id"]
    worker = live.register()
    first = live.lease(worker)
    assert first["attempt"] == 1
    second = live.lease(worker, wait=10)  # the first lease expires, the run is requeued
    assert second["run_id"] == run_id and second["attempt"] == 2
    assert second["lease_token"] != first["lease_token"]
    assert live.append(first, 0, "stale").status_code == 409
    wait_until(lambda: live.run(run_id)["status"] == "interrupted", timeout=10, what="the last attempt to be lost")
    run = live.run(run_id)
    assert run["attempt"] == 2
    assert [t["status"] for t in run["transitions"]] == [
        "machine_requested", "building", "interrupted", "machine_requested", "building", "interrupted"]
    texts = [e["text"] for e in live.user.get(f"/runs/{run_id}/logs").json()["entries"]]
    assert "Requeued (attempt 2 of 2)" in texts
    assert live.lease(worker) is None


def test_a_restarted_server_gives_workers_time_to_come_back(live, server):
    run_id = live.create_run()["id"]
    queued = live.create_run()["id"]
    lease = live.lease(live.register())
    live.advance(lease, "mounting", "running")
    live.append(lease, 0, "before")
    server.stop(signal.SIGKILL)
    time.sleep(2 * lease["lease_seconds"])  # longer than the lease: only the server's absence explains it
    server.start()
    beat = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert beat.status_code == 200 and beat.json()["status"] == "running"
    live.append(lease, 1, "after")
    live.advance(lease, "saving", "pushing", "complete", exit_code=0)
    texts = [e["text"] for e in live.user.get(f"/runs/{run_id}/logs").json()["entries"]]
    assert texts.count("before") == 1 and texts.count("after") == 1
    assert live.run(queued)["status"] == "machine_requested"
    assert live.lease(live.register())["run_id"] == queued


def test_a_worker_that_hangs_up_is_not_given_a_run(live, server):
    worker = live.register()
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(timeout=0.3, headers={"Authorization": f"Bearer {server.worker_token}"}) as impatient:
            impatient.post(f"{server.url}/api/v1/workers/{worker}/lease", json={"free_gpus": 0, "wait": 20})
    time.sleep(0.2)
    run_id = live.create_run()["id"]
    time.sleep(0.3)
    assert live.run(run_id)["status"] == "machine_requested"
    assert live.lease(worker)["run_id"] == run_id


def test_shutdown_ends_long_polls_and_follow_streams_at_once(live, server):
    run_id = live.create_run()["id"]
    lease = live.lease(live.register())
    live.advance(lease, "mounting", "running")
    idle_worker = live.register()
    answers: dict[str, object] = {}

    def long_poll() -> None:
        answers["lease"] = live.worker.post(f"/workers/{idle_worker}/lease", json={"free_gpus": 0, "wait": 30})

    def follow() -> None:
        with live.user.stream("GET", f"/runs/{run_id}/logs/follow") as stream:
            answers["chunks"] = [line for line in stream.iter_lines() if line]

    threads = [threading.Thread(target=long_poll), threading.Thread(target=follow)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both requests are waiting inside the server; the run's lease (2 s) still holds
    started = time.monotonic()
    server.stop()
    stopped_in = time.monotonic() - started
    for thread in threads:
        thread.join(10)
    assert stopped_in < 2, f"shutdown took {stopped_in:.1f}s: it waited out an open request"
    assert answers["lease"].status_code == 503 and "shutting down" in answers["lease"].json()["detail"]
    assert len(answers["chunks"]) == 1  # the first chunk, then the stream ended: the client resumes elsewhere


def test_clients_submitting_at_once_get_distinct_gap_free_numbers(live, server):
    numbers: list[int] = []

    def submit() -> None:
        with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {server.admin_token}"}) as client:
            for _ in range(5):
                numbers.append(client.post("/runs", json={"command": "true"}).json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(numbers) == list(range(1, 41))
