"""cast.server.services.logs: offsets reserved in order, a worker's batches
(runs of lines) stored once by their seq, one chunk per run, over-long lines
split, the per-run cap in bytes, and reads of chunk pages from any offset
(negative ones from the end). The routes are tested in api/test_logs.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import event, select

from cast.protocol.logs import LogPage
from cast.protocol.messages import LogStream
from cast.server.errors import LeaseLost, RunNotFound
from cast.server.models import LogChunk, Run
from cast.server.schemas.logs import LogRunIn
from cast.server.services import logs
from tests.factories import append_cast_lines


def _leased(local) -> dict:
    local.create_run()
    return local.lease(local.register())


def _runs(*texts: str, stream: str = "stdout") -> list[LogRunIn]:
    return [LogRunIn(stream=stream, lines=list(texts))] if texts else []


def _storer(session, lease: dict, settings):
    """`store(seq, runs)`: the leased worker's batch appended to its run's log."""
    return lambda seq, runs: logs.append_worker_batch(
        session, run_id=lease["run_id"], lease_token=lease["lease_token"], seq=seq, runs=runs, settings=settings)


def _lines(page: dict) -> list[tuple[int, str, str]]:
    return [(e["offset"], e["stream"], e["text"]) for e in LogPage.from_dict(page).entries()]


def _texts(session, run_id: int) -> list[tuple[int, str, str]]:
    return _lines(logs.read(session, run=session.get(Run, run_id), offset=0, limit=1_000_000))


def test_appends_take_the_next_offsets_whatever_the_session_holds(local, app):
    run_id = local.create_run()["id"]
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        start = run.log_size
        logs.append(session, run, [("stdout", ["a"], at), ("stderr", ["b"], at)])
        assert run.log_size == start + 2
        logs.append(session, run, [])
        append_cast_lines(session, run, ["[cast] hello"])
        assert run.log_size == start + 3
    with app.state.database.transaction() as session:
        assert _texts(session, run_id)[start:] == [(start, "stdout", "a"), (start + 1, "stderr", "b"),
                                                   (start + 2, LogStream.CAST.value, "[cast] hello")]
        assert session.get(Run, run_id).log_size == start + 3
        page = logs.read(session, run=session.get(Run, run_id), offset=start, limit=1)
        assert page["chunks"] == [{"offset": start, "stream": "stdout", "time": "2026-01-02T03:04:05Z",
                                   "lines": ["a"]}]


def test_a_worker_batch_is_stored_once_from_its_seq(local, app, settings):
    lease = _leased(local)
    run_id, token = lease["run_id"], lease["lease_token"]
    with app.state.database.transaction() as session:
        start = session.get(Run, run_id).log_size
        store = _storer(session, lease, settings)
        assert store(0, _runs("a", "b")) == (start + 2, False)
        assert store(0, _runs("a", "b")) == (start + 2, False)  # a retry
        assert store(1, _runs("b", "c")) == (start + 3, False)  # overlaps by one
        # Overlapping across runs: the first run and one line of the second were stored.
        assert store(3, _runs("d", "e")) == (start + 5, False)
        assert store(3, _runs("d") + _runs("e", "f", stream="stderr")) == (start + 6, False)
        assert store(6, []) == (start + 6, False)
        assert [text for _, _, text in _texts(session, run_id)[start:]] == ["a", "b", "c", "d", "e", "f"]
        assert session.get(Run, run_id).worker_log_seq == 6
        with pytest.raises(LeaseLost, match=f"the lease on run {run_id} is lost"):
            logs.append_worker_batch(session, run_id=run_id, lease_token="stolen", seq=6, runs=_runs("x"),
                                     settings=settings)
        with pytest.raises(RunNotFound, match="run 999 not found"):
            logs.append_worker_batch(session, run_id=999, lease_token=token, seq=0, runs=[], settings=settings)


def test_a_worker_batch_updates_its_run_once_and_the_database_holds_its_counters(local, app, settings):
    # The offsets, the seq mark, the line count and the bytes against the cap go in one UPDATE.
    capped = settings.model_copy(update={"max_log_bytes_per_run": 12})
    lease = _leased(local)
    database, statements = app.state.database, []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(database.engine, "before_cursor_execute", seen)
    try:
        with database.transaction() as session:
            _storer(session, lease, capped)(0, _runs("1234", "5678", "9abc"))
    finally:
        event.remove(database.engine, "before_cursor_execute", seen)
    assert statements.count("UPDATE") == 1 and statements.count("INSERT") == 1
    with database.transaction(write=False) as session:
        run = session.get(Run, lease["run_id"])
        assert (run.worker_log_seq, run.worker_log_lines, run.log_bytes, run.log_truncated) == (3, 2, 10, True)
    with database.transaction() as session:  # a retry with nothing new changes no counter
        assert _storer(session, lease, capped)(0, _runs("1234", "5678", "9abc")) == (run.log_size, True)
    with database.transaction(write=False) as session:
        again = session.get(Run, lease["run_id"])
        assert (again.worker_log_seq, again.worker_log_lines, again.log_bytes) == (3, 2, 10)


def test_each_run_of_a_batch_is_one_chunk(local, app, settings):
    lease = _leased(local)
    run_id, token = lease["run_id"], lease["lease_token"]
    with app.state.database.transaction() as session:
        start = session.get(Run, run_id).log_size
        logs.append_worker_batch(session, run_id=run_id, lease_token=token, seq=0, settings=settings,
                                 runs=_runs(*map(str, range(1000))) + _runs("oops", stream="stderr"))
        chunks = session.execute(select(LogChunk.first_offset, LogChunk.count, LogChunk.stream)
                                 .where(LogChunk.run_id == run_id, LogChunk.first_offset >= start)).all()
        assert chunks == [(start, 1000, "stdout"), (start + 1000, 1, "stderr")]


def test_long_lines_are_split_and_the_byte_cap_drops_lines_past_one_marker(local, app, settings):
    # 4 characters a line; 12 bytes of output with a newline each ("1234\n" is 5).
    capped = settings.model_copy(update={"max_log_bytes_per_run": 12, "max_log_line_chars": 4})
    lease = _leased(local)
    run_id = lease["run_id"]
    with app.state.database.transaction() as session:
        start = session.get(Run, run_id).log_size
        store = _storer(session, lease, capped)
        assert store(0, _runs("123456789")) == (start + 3, False)  # split: 1234, 5678, 9 (12 bytes)
        assert store(1, _runs("a", "b")) == (start + 4, True)
        assert store(3, _runs("c")) == (start + 4, True)
        assert _texts(session, run_id)[start:] == [
            (start, "stdout", "1234"), (start + 1, "stdout", "5678"), (start + 2, "stdout", "9"),
            (start + 3, LogStream.CAST.value, "[cast] log truncated after 12 bytes (12 B)")]
        assert session.get(Run, run_id).log_bytes == 12
        # The server's own lines are not capped: a run's end is always visible.
        append_cast_lines(session, session.get(Run, run_id), ["Saving…"])
        assert _texts(session, run_id)[-1][2] == "Saving…"
        # Nor are the worker's: what was not saved, and why, survives a flood.
        assert store(4, _runs("7", "8")) == (start + 5, True)
        store(6, _runs("kept", stream=LogStream.CAST.value))
        assert _texts(session, run_id)[-1][1:] == (LogStream.CAST.value, "kept")
        assert len(_texts(session, run_id)) == start + 6


def test_the_cap_keeps_the_lines_of_a_batch_that_fit_counting_utf8_bytes(local, app, settings):
    capped = settings.model_copy(update={"max_log_bytes_per_run": 7})
    lease = _leased(local)
    run_id, token = lease["run_id"], lease["lease_token"]
    with app.state.database.transaction() as session:
        start = session.get(Run, run_id).log_size
        # "é\n" is 3 bytes: two fit in 7, the third does not.
        logs.append_worker_batch(session, run_id=run_id, lease_token=token, seq=0, settings=capped,
                                 runs=_runs("é", "é", "é") + _runs("late", stream="stderr"))
        assert [text for _, _, text in _texts(session, run_id)[start:]] == [
            "é", "é", "[cast] log truncated after 7 bytes (7 B)"]


def test_reads_page_from_an_offset_and_finish_only_on_a_final_run_read_to_its_end(local, app):
    lease = _leased(local)
    run_id = lease["run_id"]
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        append_cast_lines(session, run, [f"line {i}" for i in range(10)])
        size = run.log_size
        tail = logs.read(session, run=run, offset=-3, limit=100)
        assert [text for _, _, text in _lines(tail)] == ["line 7", "line 8", "line 9"]
        assert (tail["next_offset"], tail["finished"]) == (size, False)
        page = logs.read(session, run=run, offset=2, limit=2)
        assert [offset for offset, _, _ in _lines(page)] == [2, 3] and page["next_offset"] == 4
        assert logs.read(session, run=run, offset=size + 50, limit=10) == {
            "chunks": [], "next_offset": size, "finished": False}
        assert logs.read(session, run=run, offset=-10_000, limit=1)["chunks"][0]["offset"] == 0
    local.advance(lease, "mounting", "running", "saving", "pushing", "complete", exit_code=0)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        assert logs.read(session, run=run, offset=0, limit=1)["finished"] is False
        assert logs.read(session, run=run, offset=-1, limit=1)["finished"] is True


def test_reads_return_at_most_max_read_lines_and_end_early_past_max_read_bytes(local, app, monkeypatch):
    run_id = local.create_run()["id"]
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        start = run.log_size
        monkeypatch.setattr(logs, "MAX_READ_LINES", 4)
        append_cast_lines(session, run, [str(i) for i in range(10)])
        page = logs.read(session, run=run, offset=start, limit=100)
        assert len(_lines(page)) == 4 and page["next_offset"] == start + 4
        monkeypatch.setattr(logs, "MAX_READ_LINES", 1000)
        monkeypatch.setattr(logs, "MAX_READ_BYTES", 10)
        append_cast_lines(session, run, ["x" * 20])
        append_cast_lines(session, run, ["y"])
        # The chunk that passes the bound is the page's last; the next read goes on from there.
        page = logs.read(session, run=run, offset=start + 10, limit=100)
        assert _lines(page) == [(start + 10, "cast", "x" * 20)] and page["next_offset"] == start + 11


def test_reads_slice_chunks_at_every_offset_and_page_size(local, app):
    """A reader cut off anywhere (any offset, any page size, inside a chunk)
    resumes at its next_offset with no line lost or repeated."""
    run_id = local.create_run()["id"]
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    later = at.replace(second=6)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        start = run.log_size
        written = [("stdout", ["a", "b"], at), ("stderr", ["c"], at), ("stdout", ["d"], at),
                   ("stdout", ["e", "f", "g"], later)]
        logs.append(session, run, written[:3])
        logs.append(session, run, written[3:])
        chunks = session.execute(select(LogChunk.first_offset, LogChunk.count).where(LogChunk.run_id == run_id)
                                 .order_by(LogChunk.first_offset)).all()
        assert [(first - start, count) for first, count in chunks if first >= start] == [
            (0, 2), (2, 1), (3, 1), (4, 3)]
        expected = [(stream, text) for stream, lines, _ in written for text in lines]
        expected = [(start + i, stream, text) for i, (stream, text) in enumerate(expected)]
        for offset in range(start, run.log_size + 1):
            for limit in range(1, 8):
                seen, next_offset = [], offset
                while True:
                    page = logs.read(session, run=run, offset=next_offset, limit=limit)
                    assert sum(len(chunk["lines"]) for chunk in page["chunks"]) <= limit
                    seen += _lines(page)
                    if not page["chunks"]:
                        break
                    assert page["next_offset"] == seen[-1][0] + 1
                    next_offset = page["next_offset"]
                assert seen == expected[offset - start:]


def test_lines_with_any_characters_are_stored_and_paged_as_they_came(local, app, settings):
    # orjson stores lines; a lone surrogate it refuses (the API refuses one from a worker, but a
    # line the server writes may hold one), so json stores that chunk. A route's page splices the
    # stored arrays (`encoded`) and must say what the decoded page says, whole chunks or sliced.
    import json

    lease = _leased(local)
    texts = ["plain", "é ü 😀 \u2028", "\x00\x1f\"\\", "after", "a,", '","', '", "', "\\"]
    with app.state.database.transaction() as session:
        run = session.get(Run, lease["run_id"])
        start = run.log_size
        _storer(session, lease, settings)(0, _runs(*texts[:3]) + _runs(texts[3], stream="stderr") + _runs(*texts[4:]))
        append_cast_lines(session, run, ["\ud800 lone", "next"])
        every = [*texts, "\ud800 lone", "next"]
        assert [text for _, _, text in _texts(session, run.id)[start:]] == every
        for offset, limit in [(start, 100), (start, 4), (start + 1, 2), (start + 4, 100), (start + len(texts), 1),
                              (start + len(texts) + 1, 5), (-3, 100)]:
            page = logs.read(session, run=run, offset=offset, limit=limit)
            assert json.loads(logs.page_json(logs.read(session, run=run, offset=offset, limit=limit,
                                                       encoded=True))) == page
        assert logs.read(session, run=run, offset=start, limit=100)["chunks"][-1]["lines"] == ["\ud800 lone", "next"]
