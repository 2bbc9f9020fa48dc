"""Log routes: worker batches deduplicated by seq, reads from offsets, the
follow stream (lines reaching it live, resuming from next_offset, ending when final),
the per-run cap and the text download."""

from __future__ import annotations

import json
import threading

from cast.server.app import create_app
from cast.server.settings import Settings

from tests.factories import page_entries

from ..conftest import in_process_api


def _texts(api, run_id: int, **params) -> list[str]:
    return [e["text"] for e in page_entries(api.user.get(f"/runs/{run_id}/logs", params=params).json())]


def _running(api) -> dict:
    api.create_run()
    lease = api.lease(api.register())
    api.advance(lease, "mounting", "running")
    return lease


def test_retried_batches_are_stored_once(local):
    lease = _running(local)
    run_id = lease["run_id"]
    stage_count = len(_texts(local, run_id))
    assert local.append(lease, 0, "a", "b").json() == {"next_offset": stage_count + 2, "truncated": False}
    assert local.append(lease, 0, "a", "b").json()["next_offset"] == stage_count + 2  # a retry
    assert local.append(lease, 1, "b", "c").json()["next_offset"] == stage_count + 3  # overlaps by one
    assert local.append(lease, 3, "d", stream="stderr").status_code == 200
    entries = page_entries(local.user.get(f"/runs/{run_id}/logs").json())
    assert [e["offset"] for e in entries] == list(range(len(entries)))
    assert [(e["stream"], e["text"]) for e in entries[stage_count:]] == [
        ("stdout", "a"), ("stdout", "b"), ("stdout", "c"), ("stderr", "d")]
    assert local.append({**lease, "lease_token": "stolen"}, 4, "x").status_code == 409


def test_reading_from_offsets(local):
    lease = _running(local)
    run_id = lease["run_id"]
    local.append(lease, 0, *[f"line {i}" for i in range(10)])
    size = local.user.get(f"/runs/{run_id}/logs").json()["next_offset"]
    tail = local.user.get(f"/runs/{run_id}/logs", params={"offset": -3}).json()
    assert [e["text"] for e in page_entries(tail)] == ["line 7", "line 8", "line 9"]
    assert tail["next_offset"] == size and tail["finished"] is False
    base = size - 10  # the stage lines come first
    page = local.user.get(f"/runs/{run_id}/logs", params={"offset": base + 2, "limit": 2}).json()
    assert page["chunks"] == [{"offset": base + 2, "stream": "stdout", "time": page["chunks"][0]["time"],
                               "lines": ["line 2", "line 3"]}] and page["next_offset"] == base + 4
    past_end = local.user.get(f"/runs/{run_id}/logs", params={"offset": size + 50}).json()
    assert past_end["chunks"] == [] and past_end["next_offset"] == size
    # Past the start, a tail is the whole log (its first line is the queued run's waiting line).
    assert _texts(local, run_id, offset=-1000) == _texts(local, run_id)
    assert local.user.get(f"/runs/{run_id}/logs", params={"limit": 0}).status_code == 422
    local.advance(lease, "saving", "pushing", "complete")
    assert local.user.get(f"/runs/{run_id}/logs", params={"offset": -1}).json()["finished"] is True
    text = local.user.get(f"/runs/{run_id}/logs/download")
    assert text.headers["content-type"].startswith("text/plain")
    assert "line 0\nline 1\n" in text.text and text.text.endswith("Pushing… done\n")


def test_log_cap_in_bytes_writes_one_marker_and_drops_the_rest(tmp_path):
    # Bytes with a newline each: "1\n" .. "5\n" are 10.
    settings = Settings(data_dir=tmp_path / "data", max_log_bytes_per_run=10)
    api = in_process_api(create_app(settings), settings)
    lease = _running(api)
    assert api.append(lease, 0, "1", "2", "3").json()["truncated"] is False
    assert api.append(lease, 3, "4", "5", "6", "7").json()["truncated"] is True
    assert api.append(lease, 7, "8").json()["truncated"] is True
    texts = _texts(api, lease["run_id"])
    assert texts[-6:] == ["1", "2", "3", "4", "5", "[cast] log truncated after 10 bytes (10 B)"]
    api.advance(lease, "saving")
    assert _texts(api, lease["run_id"])[-1] != "8"


def test_follow_streams_live_resumes_and_ends_when_final(live):
    lease = _running(live)
    run_id = lease["run_id"]
    received: list[dict] = []

    def follow(offset: int, until_text: str | None, connected: threading.Event) -> None:
        with live.user.stream("GET", f"/runs/{run_id}/logs/follow", params={"offset": offset}) as stream:
            assert stream.headers["content-type"].startswith("application/x-ndjson")
            for line in stream.iter_lines():
                page = json.loads(line)
                received.append(page)
                connected.set()
                if any(until_text in chunk["lines"] for chunk in page["chunks"]):
                    return  # the client drops the connection

    def start_following(offset: int, until_text: str | None) -> threading.Thread:
        """A follower that has its first chunk: what is appended next reaches it live."""
        connected = threading.Event()
        thread = threading.Thread(target=follow, args=(offset, until_text, connected))
        thread.start()
        assert connected.wait(120), "the follow stream sent no first chunk"
        return thread

    with live.heartbeats(lease):
        first = start_following(0, "first")
        live.append(lease, 0, "first")
        first.join(120)
        assert not first.is_alive(), "a line appended while following should reach the open stream"
        # Lines written while nobody follows, then a follower resuming from next_offset.
        resume_from = received[-1]["next_offset"]
        live.append(lease, 1, "second", "third")
        second = start_following(resume_from, None)
        live.append(lease, 3, "fourth")
        live.advance(lease, "saving", "pushing", "complete", exit_code=0)
    second.join(120)
    assert not second.is_alive(), "the stream should end once the run is final"
    assert received[-1]["finished"] is True
    entries = [e for page in received for e in page_entries(page)]
    assert [e["offset"] for e in entries] == list(range(len(entries))), "no entry twice, none missing"
    assert entries == page_entries(live.user.get(f"/runs/{run_id}/logs").json())
    assert [e["text"] for e in entries][-6:] == ["first", "second", "third", "fourth", "Saving… done", "Pushing… done"]


def test_following_a_finished_run_answers_once(live):
    run_id = live.complete_run()
    lines = live.user.get(f"/runs/{run_id}/logs/follow").text.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["finished"] is True
    assert live.user.get("/runs/999/logs/follow").status_code == 404


def test_the_follow_streams_finished_page_carries_the_runs_outcome_and_only_it(live):
    lease = _running(live)
    run_id = lease["run_id"]
    with live.user.stream("GET", f"/runs/{run_id}/logs/follow") as stream:
        pages = stream.iter_lines()
        first = json.loads(next(pages))
        live.append(lease, 0, "boom")
        live.advance(lease, "saving", "pushing")
        live.advance(lease, "failed", exit_code=3, reason="it broke")
        rest = [json.loads(line) for line in pages if line.strip()]
    assert [page.get("outcome") for page in [first, *rest[:-1]]] == [None] * len(rest)
    run = live.user.get(f"/runs/{run_id}").json()
    assert rest[-1]["finished"] is True
    assert rest[-1]["outcome"] == {"status": "failed", "exit_code": 3, "reason": "it broke",
                                   "created_at": run["created_at"], "finished_at": run["finished_at"]}
    # A read of a page, even the last, is what it was: chunks, next_offset, finished.
    assert "outcome" not in live.user.get(f"/runs/{run_id}/logs", params={"offset": -1}).json()
