"""Worker routes against the real server: long-poll leases, races between
workers, heartbeats, lease expiry and retries. The worker is played with raw
HTTP calls, so a worker that stops heartbeating is just one that stops calling."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
import sqlalchemy

from tests.conftest import SHORT_LEASE_SECONDS, wait_until
from tests.factories import page_entries

LONGEST_POLL = 30  # the most a worker may ask the server to wait


def _last_seen(server, worker_id: str):
    """When the server last heard from the worker: each lease attempt writes it
    before the long poll waits. Read from the server's database, SQLite or not."""
    engine = sqlalchemy.create_engine(server.env.get("CAST_DATABASE_URL") or f"sqlite:///{server.data_dir / 'cast.db'}")
    try:
        with engine.connect() as db:
            return db.execute(sqlalchemy.text("SELECT last_seen_at FROM workers WHERE id = :id"),
                              {"id": worker_id}).scalar_one()
    finally:
        engine.dispose()


def _wait_until_polling(server, worker_id: str, before: str) -> None:
    wait_until(lambda: _last_seen(server, worker_id) != before, timeout=120,
               what="the long poll to find the queue empty and wait")


def test_long_poll_answers_as_soon_as_a_run_is_queued(live, server):
    worker = live.register()
    assert live.lease(worker, wait=0) is None
    started = time.monotonic()
    assert live.lease(worker, wait=0.3) is None
    assert time.monotonic() - started > 0.25, "an empty queue holds the poll for the wait asked"
    got = {}
    before = _last_seen(server, worker)
    poller = threading.Thread(target=lambda: got.update(lease=live.lease(worker, wait=LONGEST_POLL)))
    started = time.monotonic()
    poller.start()
    _wait_until_polling(server, worker, before)
    run_id = live.create_run()["id"]
    poller.join(LONGEST_POLL + 120)
    assert got["lease"]["run_id"] == run_id
    # Only a poll that slept its whole wait would take this long.
    assert time.monotonic() - started < LONGEST_POLL, "the queued run should wake the long poll"


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


@pytest.mark.short_lease
def test_a_silent_worker_loses_its_run_once_its_lease_runs_out(live):
    run_id = live.create_run()["id"]
    lease = live.lease(live.register())
    live.advance(lease, "mounting", "running")
    assert live.append(lease, 0, "before the crash").status_code == 200
    beat = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert beat.status_code == 200 and beat.json()["status"] == "running"
    last_sign_of_life = time.monotonic()
    assert lease["lease_seconds"] == SHORT_LEASE_SECONDS
    run = wait_until(lambda: (r := live.run(run_id))["status"] == "interrupted" and r,
                     timeout=120, interval=0.05, what="the run to be interrupted")
    assert time.monotonic() - last_sign_of_life > SHORT_LEASE_SECONDS, "the heartbeat extended the lease"
    assert run["reason"] == f"worker lost: no heartbeat for {SHORT_LEASE_SECONDS}s"
    assert run["finished_at"] is not None
    lost = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
    assert lost.status_code == 409 and "lease" in lost.json()["detail"]
    assert live.report(run_id, lease["lease_token"], "saving").status_code == 409
    texts = [e["text"] for e in page_entries(live.user.get(f"/runs/{run_id}/logs").json())]
    assert "before the crash" in texts
    assert texts[-1] == f"Run interrupted: worker lost: no heartbeat for {SHORT_LEASE_SECONDS}s"


@pytest.mark.short_lease
def test_heartbeats_keep_a_lease_alive(live):
    run_id = live.create_run()["id"]
    lease = live.lease(live.register())
    for _ in range(3 * SHORT_LEASE_SECONDS):  # one and a half lease periods
        time.sleep(0.5)
        beat = live.worker.post(f"/runs/{run_id}/heartbeat", json={"lease_token": lease["lease_token"]})
        assert beat.status_code == 200, beat.text
    assert live.run(run_id)["status"] == "building"


@pytest.mark.short_lease
def test_retries_requeue_with_the_next_attempt(live):
    run_id = live.create_run(retries=1)["id"]
    worker = live.register()
    first = live.lease(worker)
    assert first["attempt"] == 1
    second = live.lease(worker, wait=LONGEST_POLL)  # the first lease expires, the run is requeued
    assert second["run_id"] == run_id and second["attempt"] == 2
    assert second["lease_token"] != first["lease_token"]
    assert live.append(first, 0, "stale").status_code == 409
    wait_until(lambda: live.run(run_id)["status"] == "interrupted", timeout=120, what="the last attempt to be lost")
    run = live.run(run_id)
    assert run["attempt"] == 2
    assert [t["status"] for t in run["transitions"]] == [
        "machine_requested", "building", "interrupted", "machine_requested", "building", "interrupted"]
    texts = [e["text"] for e in page_entries(live.user.get(f"/runs/{run_id}/logs").json())]
    assert "Requeued (attempt 2 of 2)" in texts
    assert live.lease(worker) is None


@pytest.mark.short_lease
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
    texts = [e["text"] for e in page_entries(live.user.get(f"/runs/{run_id}/logs").json())]
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
    answers: dict[str, object] = {"chunks": []}
    following = threading.Event()

    def long_poll() -> None:
        answers["lease"] = live.worker.post(f"/workers/{idle_worker}/lease",
                                            json={"free_gpus": 0, "wait": LONGEST_POLL})

    def follow() -> None:
        with live.user.stream("GET", f"/runs/{run_id}/logs/follow") as stream:
            for line in stream.iter_lines():
                if line:
                    answers["chunks"].append(line)
                    following.set()

    before = _last_seen(server, idle_worker)
    threads = [threading.Thread(target=long_poll), threading.Thread(target=follow)]
    for thread in threads:
        thread.start()
    _wait_until_polling(server, idle_worker, before)
    assert following.wait(120), "the follow stream sent no first chunk"
    # Both requests wait inside the server, the run still leased. A server that
    # waited them out would answer the poll 204 after its wait, and the stream
    # only once the run ended, with more chunks.
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(LONGEST_POLL + 120)
    for thread in threads:
        thread.join(120)
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
