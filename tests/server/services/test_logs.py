"""cast.server.services.logs: offsets reserved in order, a worker's batches
stored once by their seq, the per-run and per-line caps, and reads from an
offset (negative ones from the end). The routes are tested in api/test_logs.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from cast.protocol.messages import LogStream
from cast.server.errors import LeaseLost, RunNotFound
from cast.server.models import LogChunk, Run
from cast.server.schemas import LogEntryIn
from cast.server.services import logs


def _leased(local) -> dict:
    local.create_run()
    return local.lease(local.register())


def _batch(*texts: str, stream: str = "stdout") -> list[LogEntryIn]:
    return [LogEntryIn(stream=stream, text=text) for text in texts]


def _texts(session, run_id: int) -> list[tuple[int, str, str]]:
    run = session.get(Run, run_id)
    entries = logs.read(session, run=run, offset=0, limit=logs.MAX_READ)["entries"]
    return [(entry["offset"], entry["stream"], entry["text"]) for entry in entries]


def test_appends_take_the_next_offsets_whatever_the_session_holds(local, app):
    run_id = local.create_run()["id"]
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        start = run.log_size
        logs.append(session, run, [("stdout", "a", at), ("stderr", "b", at)])
        assert run.log_size == start + 2
        logs.append(session, run, [])
        logs.append_cast_lines(session, run, ["[cast] hello"])
        assert run.log_size == start + 3
    with app.state.database.transaction() as session:
        assert _texts(session, run_id)[start:] == [(start, "stdout", "a"), (start + 1, "stderr", "b"),
                                                   (start + 2, LogStream.CAST.value, "[cast] hello")]
        assert session.get(Run, run_id).log_size == start + 3
        assert logs.read(session, run=session.get(Run, run_id), offset=start, limit=1)["entries"][0]["time"] == at


def test_a_worker_batch_is_stored_once_from_its_seq(local, app, settings):
    lease = _leased(local)
    run_id, token = lease["run_id"], lease["lease_token"]
    with app.state.database.transaction() as session:
        start = session.get(Run, run_id).log_size
        store = lambda seq, *texts: logs.append_worker_batch(  # noqa: E731
            session, run_id=run_id, lease_token=token, seq=seq, entries=_batch(*texts), settings=settings)
        assert store(0, "a", "b") == (start + 2, False)
        assert store(0, "a", "b") == (start + 2, False)  # a retry
        assert store(1, "b", "c") == (start + 3, False)  # overlaps by one
        assert store(3) == (start + 3, False)
        assert [text for _, _, text in _texts(session, run_id)[start:]] == ["a", "b", "c"]
        assert session.get(Run, run_id).worker_log_seq == 3
        with pytest.raises(LeaseLost, match=f"the lease on run {run_id} is lost"):
            logs.append_worker_batch(session, run_id=run_id, lease_token="stolen", seq=3, entries=_batch("x"),
                                     settings=settings)
        with pytest.raises(RunNotFound, match="run 999 not found"):
            logs.append_worker_batch(session, run_id=999, lease_token=token, seq=0, entries=[], settings=settings)


def test_the_caps_cut_long_lines_and_drop_lines_past_one_marker(local, app, settings):
    capped = settings.model_copy(update={"max_log_entries_per_run": 3, "max_log_line_chars": 4})
    lease = _leased(local)
    run_id, token = lease["run_id"], lease["lease_token"]
    with app.state.database.transaction() as session:
        start = session.get(Run, run_id).log_size
        store = lambda seq, *texts: logs.append_worker_batch(  # noqa: E731
            session, run_id=run_id, lease_token=token, seq=seq, entries=_batch(*texts), settings=capped)
        assert store(0, "1234", "12345") == (start + 2, False)
        assert store(2, "3", "4", "5") == (start + 4, True)
        assert store(5, "6") == (start + 4, True)
        assert _texts(session, run_id)[start:] == [
            (start, "stdout", "1234"), (start + 1, "stdout", "1234…"), (start + 2, "stdout", "3"),
            (start + 3, LogStream.CAST.value, "[cast] log truncated after 3 lines")]
        # The server's own lines are not capped: a run's end is always visible.
        logs.append_cast_lines(session, session.get(Run, run_id), ["Saving…"])
        assert _texts(session, run_id)[-1][2] == "Saving…"
        # Nor are the worker's: what was not saved, and why, survives a flood.
        assert store(6, "7", "8") == (start + 5, True)
        logs.append_worker_batch(session, run_id=run_id, lease_token=token, seq=8,
                                 entries=_batch("kept", stream=LogStream.CAST.value),
                                 settings=capped)
        assert _texts(session, run_id)[-1][1:] == (LogStream.CAST.value, "kept")
        assert len(_texts(session, run_id)) == start + 6


def test_reads_page_from_an_offset_and_finish_only_on_a_final_run_read_to_its_end(local, app):
    lease = _leased(local)
    run_id = lease["run_id"]
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        logs.append_cast_lines(session, run, [f"line {i}" for i in range(10)])
        size = run.log_size
        tail = logs.read(session, run=run, offset=-3, limit=100)
        assert [e["text"] for e in tail["entries"]] == ["line 7", "line 8", "line 9"]
        assert (tail["next_offset"], tail["finished"]) == (size, False)
        page = logs.read(session, run=run, offset=2, limit=2)
        assert [e["offset"] for e in page["entries"]] == [2, 3] and page["next_offset"] == 4
        assert logs.read(session, run=run, offset=size + 50, limit=10) == {
            "entries": [], "next_offset": size, "finished": False}
        assert logs.read(session, run=run, offset=-10_000, limit=1)["entries"][0]["offset"] == 0
    local.advance(lease, "mounting", "running", "saving", "pushing", "complete", exit_code=0)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        assert logs.read(session, run=run, offset=0, limit=1)["finished"] is False
        assert logs.read(session, run=run, offset=-1, limit=1)["finished"] is True


def test_reads_return_at_most_max_read_entries(local, app, monkeypatch):
    monkeypatch.setattr(logs, "MAX_READ", 4)
    run_id = local.create_run()["id"]
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        logs.append_cast_lines(session, run, [str(i) for i in range(10)])
        chunk = logs.read(session, run=run, offset=0, limit=100)
        assert len(chunk["entries"]) == 4 and chunk["next_offset"] == 4


def test_chunks_split_at_a_stream_change_and_a_second_and_reads_slice_them_at_every_offset(local, app):
    """A reader cut off anywhere (any offset, any page size) resumes at its
    next_offset with no line lost or repeated, across chunk boundaries."""
    run_id = local.create_run()["id"]
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    later = at.replace(second=6)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        start = run.log_size
        written = [("stdout", "a", at), ("stdout", "b", at), ("stderr", "c", at), ("stdout", "d", at),
                   ("stdout", "e", later), ("stdout", "f", later)]
        logs.append(session, run, written)
        logs.append(session, run, [("stdout", "g", later)])
        written.append(("stdout", "g", later))
        chunks = session.execute(select(LogChunk.first_offset, LogChunk.count).where(LogChunk.run_id == run_id)
                                 .order_by(LogChunk.first_offset)).all()
        assert [(first - start, count) for first, count in chunks if first >= start] == [
            (0, 2), (2, 1), (3, 1), (4, 2), (6, 1)]
        expected = [(start + i, stream, text, time) for i, (stream, text, time) in enumerate(written)]
        for offset in range(start, run.log_size + 1):
            for limit in range(1, 8):
                seen, next_offset = [], offset
                while True:
                    page = logs.read(session, run=run, offset=next_offset, limit=limit)
                    seen += [(e["offset"], e["stream"], e["text"], e["time"]) for e in page["entries"]]
                    if not page["entries"]:
                        break
                    assert page["next_offset"] == seen[-1][0] + 1
                    next_offset = page["next_offset"]
                assert seen == expected[offset - start:]
