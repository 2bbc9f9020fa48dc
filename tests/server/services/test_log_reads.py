"""cast.server.services.log_reads: a user's reads of a run's log (one page,
the follow stream, the text download), each only of a run the user may see."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import event
from cast.server import events
from cast.server.errors import RunNotFound
from cast.server.models import Run
from cast.server.services import log_reads, logs
from .conftest import add_user, admin_of
from tests.factories import append_cast_lines

TIMEOUT = 120  # guards against a hang only


def _people(app):
    return admin_of(app.state.database), add_user(app.state.database, "alice")


def _decoded(page: dict) -> dict:
    """A followed page (its chunks' lines JSON text, as the route splices them) as the client reads it."""
    return json.loads(logs.page_json(page))


def _write(app, run_id: int, *lines: str) -> None:
    with app.state.database.transaction() as session:
        append_cast_lines(session, session.get(Run, run_id), list(lines))


def test_a_page_is_read_only_by_who_may_see_the_run(local, app, settings):
    admin, alice = _people(app)
    run_id = local.create_run()["id"]
    _write(app, run_id, "secret")
    with app.state.database.transaction(write=False) as session:
        page = log_reads.read_page(session, settings=settings, run_id=run_id, viewer=admin, offset=-1, limit=10)
        assert [chunk["lines"] for chunk in page["chunks"]] == [["secret"]]
        with pytest.raises(RunNotFound, match=f"run {run_id} not found"):
            log_reads.read_page(session, settings=settings, run_id=run_id, viewer=alice, offset=0, limit=10)


def test_download_sends_every_line_in_pieces_of_a_page(local, app, settings, monkeypatch):
    monkeypatch.setattr(logs, "MAX_READ_BYTES", 1)  # a page is then one chunk
    admin, alice = _people(app)
    run_id = local.create_run()["id"]
    for line in [f"line {i}" for i in range(7)]:
        _write(app, run_id, line)
    _write(app, run_id, "café", "last")
    with pytest.raises(RunNotFound):
        log_reads.download(app.state.database, settings=settings, run_id=run_id, viewer=alice)
    pieces = list(log_reads.download(app.state.database, settings=settings, run_id=run_id, viewer=admin))
    assert pieces[-1] == b"caf\xc3\xa9\nlast\n" and len(pieces) > 8
    text = b"".join(pieces)
    assert text.endswith(b"line 0\nline 1\nline 2\nline 3\nline 4\nline 5\nline 6\ncaf\xc3\xa9\nlast\n")
    with app.state.database.transaction(write=False) as session:
        assert text.count(b"\n") == session.get(Run, run_id).log_size


def test_follow_sends_lines_as_they_are_committed_and_ends_when_the_run_is_final(local, app, settings):
    local.create_run()
    lease = local.lease(local.register())
    admin, alice = _people(app)
    run_id = lease["run_id"]
    database = app.state.database

    async def follow() -> list[str]:
        with pytest.raises(RunNotFound):
            await log_reads.follow(database, settings=settings, run_id=run_id, viewer=alice, offset=0)
        stream = await log_reads.follow(database, settings=settings, run_id=run_id, viewer=admin, offset=-1)
        seen = [line for chunk in _decoded(await anext(stream))["chunks"] for line in chunk["lines"]]
        # Written while the follower waits: only a wake-up brings it before the keepalive's empty chunk.
        waiting = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(_write, app, run_id, "live")
        seen += [line for chunk in _decoded(await waiting)["chunks"] for line in chunk["lines"]]
        await asyncio.to_thread(local.advance, lease, "mounting", "running", "saving", "pushing", "failed",
                                exit_code=1)
        async for page in stream:
            seen += [line for chunk in _decoded(page)["chunks"] for line in chunk["lines"]]
        return seen

    seen = asyncio.run(asyncio.wait_for(follow(), TIMEOUT))
    assert seen[1] == "live" and len(seen) > 3
    with database.transaction(write=False) as session:
        assert logs.read(session, run=session.get(Run, run_id), offset=-1, limit=1)["chunks"][0]["lines"] == [seen[-1]]


def test_a_followers_later_reads_are_two_queries_each_and_send_what_was_written(local, app, settings):
    # The first read checks who may see the run; each later one reads the run's log state and
    # its chunks, a query each, however many chunks it sends.
    run_id = local.create_run()["id"]
    database = app.state.database
    admin = admin_of(database)
    selects: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    async def follow() -> list[str]:
        stream = await log_reads.follow(database, settings=settings, run_id=run_id, viewer=admin, offset=0)
        await anext(stream)
        # Written after the first read: the follower, subscribed since, reads it at its next step.
        await asyncio.to_thread(_write, app, run_id, "one", "two")
        event.listen(database.engine, "before_cursor_execute", seen)
        try:
            page = await anext(stream)
        finally:
            event.remove(database.engine, "before_cursor_execute", seen)
        return [line for chunk in _decoded(page)["chunks"] for line in chunk["lines"]]

    assert asyncio.run(asyncio.wait_for(follow(), TIMEOUT)) == ["one", "two"]
    # Its log state and its chunks; not the whole run (its spec), which only the first read loads.
    assert len(selects) == 2 and not any("runs.spec" in statement for statement in selects), selects


def test_follow_ends_when_the_server_shuts_down(local, app, settings):
    run_id = local.create_run()["id"]
    database = app.state.database
    admin = admin_of(database)

    async def follow() -> int:
        stream = await log_reads.follow(database, settings=settings, run_id=run_id, viewer=admin, offset=0)
        chunks = 0
        async for _chunk in stream:
            chunks += 1
            if chunks == 1:
                asyncio.get_running_loop().call_later(0.2, database.notifier.close)
        return chunks

    assert asyncio.run(asyncio.wait_for(follow(), TIMEOUT)) == 1


def test_a_follower_with_nothing_new_gets_an_empty_chunk_to_keep_the_stream_alive(local, app, settings, monkeypatch):
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.2)
    run_id = local.create_run()["id"]
    _write(app, run_id, "queued")
    database = app.state.database
    admin = admin_of(database)

    async def follow() -> list[dict]:
        stream = await log_reads.follow(database, settings=settings, run_id=run_id, viewer=admin, offset=0)
        return [await anext(stream), await anext(stream)]

    first, second = asyncio.run(asyncio.wait_for(follow(), TIMEOUT))
    assert first["chunks"] and second == {"chunks": [], "next_offset": first["next_offset"], "finished": False}
