"""Metric routes: worker batches deduplicated by seq, points checked again, reads by offset and name, the summary,
the follow stream, metrics kept when the outputs are deleted (a new attempt:
tests/server/services/test_metrics.py)."""

from __future__ import annotations

import json
import threading

from cast.protocol.metrics import MAX_NAMES_PER_RUN


def _running(api) -> dict:
    api.create_run()
    lease = api.lease(api.register())
    api.advance(lease, "mounting", "running")
    return lease


def _send(api, lease: dict, seq: int, *points: tuple) -> dict:
    response = api.worker.post(f"/runs/{lease['run_id']}/metrics", json={
        "lease_token": lease["lease_token"], "seq": seq,
        "points": [{"name": n, "value": v, **({"step": s} if s is not None else {})} for n, v, s in points]})
    assert response.status_code == 200, response.text
    return response.json()


def _points(api, run_id: int, **params) -> dict:
    response = api.user.get(f"/runs/{run_id}/metrics/points", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_retried_batches_are_stored_once_and_points_are_checked_again(local):
    lease = _running(local)
    run_id = lease["run_id"]
    assert _send(local, lease, 0, ("loss", 3.0, 0), ("acc", 0.1, 0)) == {"next_offset": 2}
    assert _send(local, lease, 0, ("loss", 3.0, 0), ("acc", 0.1, 0)) == {"next_offset": 2}  # a retry
    assert _send(local, lease, 1, ("acc", 0.1, 0), ("loss", 2.0, 1)) == {"next_offset": 3}  # overlaps by one
    got = _points(local, run_id)
    assert [(p["offset"], p["name"], p["step"], p["value"]) for p in got["points"]] == [
        (0, "loss", 0, 3.0), (1, "acc", 0, 0.1), (2, "loss", 1, 2.0)]
    assert got["next_offset"] == 3 and got["finished"] is False
    for bad in ({"name": "x", "value": "inf"}, {"name": "", "value": 1}, {"name": "x", "value": 1, "step": -2},
                {"name": "x\n", "value": 1}, {"name": "x", "value": True}):
        response = local.worker.post(f"/runs/{run_id}/metrics", json={
            "lease_token": lease["lease_token"], "seq": 3, "points": [bad]})
        assert response.status_code == 422, (bad, response.text)
    stolen = local.worker.post(f"/runs/{run_id}/metrics", json={"lease_token": "stolen", "seq": 3, "points": []})
    assert stolen.status_code == 409
    assert local.user.post(f"/runs/{run_id}/metrics", json={
        "lease_token": lease["lease_token"], "seq": 3, "points": []}).status_code == 403


def test_reads_by_offset_and_name_and_the_summary(local):
    lease = _running(local)
    run_id = lease["run_id"]
    _send(local, lease, 0, *[(("loss" if i % 2 == 0 else "lr"), float(10 - i), i) for i in range(10)])
    only_loss = _points(local, run_id, name="loss", limit=2)
    assert [p["offset"] for p in only_loss["points"]] == [0, 2] and only_loss["next_offset"] == 3
    rest = _points(local, run_id, name="loss", offset=3)
    assert [p["offset"] for p in rest["points"]] == [4, 6, 8] and rest["next_offset"] == 10
    assert _points(local, run_id, offset=50) == {"points": [], "next_offset": 10, "finished": False}
    assert _points(local, run_id, name="nothing")["next_offset"] == 10
    summary = local.user.get(f"/runs/{run_id}/metrics").json()
    assert [(m["name"], m["count"], m["last"], m["min"], m["max"], m["last_step"]) for m in summary["metrics"]] == [
        ("loss", 5, 2.0, 2.0, 10.0, 8), ("lr", 5, 1.0, 1.0, 9.0, 9)]
    assert summary["next_offset"] == 10 and summary["finished"] is False
    assert local.user.get(f"/runs/{run_id}/metrics/points", params={"limit": 100_001}).status_code == 422
    assert local.user.get("/runs/999/metrics").status_code == 404
    local.advance(lease, "saving", "pushing", "complete", exit_code=0)
    assert _points(local, run_id)["finished"] is True
    assert _points(local, run_id, limit=3)["finished"] is False  # points remain past this page


def test_names_past_the_run_cap_are_dropped(local):
    lease = _running(local)
    _send(local, lease, 0, *[(f"n{i}", 1.0, None) for i in range(MAX_NAMES_PER_RUN)])
    _send(local, lease, MAX_NAMES_PER_RUN, ("new", 1.0, None), ("n0", 2.0, None))
    names = [m["name"] for m in local.user.get(f"/runs/{lease['run_id']}/metrics").json()["metrics"]]
    assert len(names) == MAX_NAMES_PER_RUN and "new" not in names


def test_deleting_the_outputs_keeps_the_metrics(local):
    lease = _running(local)
    run_id = lease["run_id"]
    _send(local, lease, 0, ("loss", 1.0, 0))
    local.advance(lease, "saving", "pushing", "complete", exit_code=0)
    response = local.user.delete(f"/runs/{run_id}/outputs")
    assert response.status_code == 200, response.text
    assert [p["value"] for p in _points(local, run_id)["points"]] == [1.0]


def test_follow_streams_live_resumes_and_ends_when_final(live):
    lease = _running(live)
    run_id = lease["run_id"]
    received: list[dict] = []
    connected = threading.Event()

    def follow(offset: int) -> None:
        with live.user.stream("GET", f"/runs/{run_id}/metrics/follow", params={"offset": offset, "name": "loss"}) \
                as stream:
            assert stream.headers["content-type"].startswith("application/x-ndjson")
            for line in stream.iter_lines():
                received.append(json.loads(line))
                connected.set()

    with live.heartbeats(lease):
        _send(live, lease, 0, ("loss", 3.0, 0), ("lr", 1.0, 0))
        thread = threading.Thread(target=follow, args=(1,))
        thread.start()
        assert connected.wait(120), "the follow stream sent no first chunk"
        _send(live, lease, 2, ("loss", 2.0, 1), ("lr", 0.5, 1))
        _send(live, lease, 4, ("loss", 1.0, 2))
        live.advance(lease, "saving", "pushing", "complete", exit_code=0)
    thread.join(120)
    assert not thread.is_alive(), "the stream should end once the run is final"
    assert received[-1]["finished"] is True and received[-1]["next_offset"] == 5
    points = [p for chunk in received for p in chunk["points"]]
    assert [(p["offset"], p["value"]) for p in points] == [(2, 2.0), (4, 1.0)]
    assert live.user.get("/runs/999/metrics/follow").status_code == 404
