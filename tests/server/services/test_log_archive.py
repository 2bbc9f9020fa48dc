"""cast.server.services.log_archive with the local filesystem store (the S3
store's are in tests/objectstore/test_log_archive.py): an archived log answers
every read as the database did (every offset, page size and early page end,
the follow stream, the text download), only final runs are archived, racing
archivers archive once, a crash between the two steps loses nothing, the rows
never go without the key, freeing a run's outputs keeps its log, and an
archive the store lost is a clear 410 on every read route."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from cast.server.app import create_app
from cast.server.models import LogChunk, Run
from cast.server.services import deletion, log_archive, log_reads, logs, runs
from cast.server.settings import Settings
from tests.conftest import wait_until
from tests.server.conftest import in_process_api
from .conftest import admin_of
from tests.factories import append_cast_lines

TIMEOUT = 120  # guards against a hang only
# Line texts a stored chunk must carry through an archive as they are: quotes,
# backslashes, the archive's own field name, non-ASCII, a lone surrogate.
ODD = ['say "hi" \\ there', ', "lines": ["x"]}', "café ✓ 日本", "bad \udcff byte", ""]


def logged_run(local, app, *, final: bool = True) -> int:
    """A run with a log of many chunks of both streams, carried to complete (or left running)."""
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    assert lease["run_id"] == run_id
    local.advance(lease, "mounting", "running")
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    rows = [(("stdout", "stderr")[i % 2], [f"line {i}.{j}" for j in range(i % 5 + 1)] + ODD[:i % 3],
             at + timedelta(seconds=i)) for i in range(40)]
    with app.state.database.transaction() as session:
        logs.append(session, session.get(Run, run_id), rows)
    if final:
        local.advance(lease, "saving", "pushing", "complete", exit_code=0)
    return run_id


def all_reads(app, settings, run_id: int, limits: tuple[int, ...] = (1000,)) -> dict:
    """The reads a user can make of the run's log: each offset (from the end
    too, and past both ends), with each page size of `limits`."""
    admin = admin_of(app.state.database)
    with app.state.database.transaction(write=False) as session:
        size = session.get(Run, run_id).log_size
        return {(offset, limit): log_reads.read_page(session, settings=settings, run_id=run_id, viewer=admin,
                                                     offset=offset, limit=limit)
                for offset in range(-size - 2, size + 3) for limit in limits}


def downloaded(app, settings, run_id: int) -> bytes:
    admin = admin_of(app.state.database)
    return b"".join(log_reads.download(app.state.database, settings=settings, run_id=run_id, viewer=admin))


def _followed(app, settings, run_id: int, offset: int) -> list[dict]:
    admin = admin_of(app.state.database)

    async def follow() -> list[dict]:
        stream = await log_reads.follow(app.state.database, settings=settings, run_id=run_id, viewer=admin,
                                        offset=offset)
        # As the client reads them: the route splices each chunk's stored JSON.
        return [json.loads(logs.page_json(page)) async for page in stream]

    return asyncio.run(asyncio.wait_for(follow(), TIMEOUT))


def answers_archive_missing(local, run_id: int) -> None:
    """Every read route of a run whose archive the store lost answers 410 with one clear line."""
    message = f"the archived log of run {run_id} is missing from the store; its lines can no longer be read"
    for path in ("logs", "logs?offset=-5", "logs/follow", "logs/download"):
        response = local.user.get(f"/runs/{run_id}/{path}")
        assert (response.status_code, response.json()) == (410, {"detail": message}), path


def archive_state(app, run_id: int) -> tuple[str | None, int]:
    """The run's archive key and how many chunk rows it has."""
    with app.state.database.transaction(write=False) as session:
        rows = session.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id))
        return session.get(Run, run_id).log_archive, rows


def _files(settings, run_id: int) -> list[str]:
    folder = settings.log_archive_dir / str(run_id)
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("read_bytes", [logs.MAX_READ_BYTES, 300])
def test_an_archived_log_answers_every_read_as_the_database_did(local, app, settings, monkeypatch, read_bytes):
    monkeypatch.setattr(logs, "MAX_READ_BYTES", read_bytes)  # 300: pages end early, after a chunk or two
    monkeypatch.setattr(log_archive, "INDEX_EVERY", 400)  # an index point every few chunks
    run_id = logged_run(local, app)
    before = all_reads(app, settings, run_id, limits=(1, 2, 7, 1000))
    text, followed = downloaded(app, settings, run_id), _followed(app, settings, run_id, 0)
    assert sum(len(chunk["lines"]) for page in followed for chunk in page["chunks"]) > 150

    assert log_archive.archive_run(app.state.database, settings, run_id=run_id)
    key, rows = archive_state(app, run_id)
    assert (key, rows) == (f"{run_id}/{key.split('/')[1]}", 0) and key.endswith(".ndjson")
    assert _files(settings, run_id) == sorted([key.split("/")[1], key.split("/")[1].replace(".ndjson", ".index.json")])
    assert all_reads(app, settings, run_id, limits=(1, 2, 7, 1000)) == before
    assert downloaded(app, settings, run_id) == text and b"bad \\udcff byte" not in text
    assert _followed(app, settings, run_id, 0) == followed
    assert _followed(app, settings, run_id, 17)[0]["chunks"][0]["offset"] == 17
    assert not log_archive.archive_run(app.state.database, settings, run_id=run_id)  # once only


def test_the_archive_is_ndjson_a_chunk_a_line(local, app, settings):
    run_id = logged_run(local, app)
    with app.state.database.transaction(write=False) as session:
        stored = logs.read(session, run=session.get(Run, run_id), offset=0, limit=1000)["chunks"]
    log_archive.archive_run(app.state.database, settings, run_id=run_id)
    key, _ = archive_state(app, run_id)
    lines = (settings.log_archive_dir / key).read_text().splitlines()
    assert [json.loads(line) for line in lines] == stored
    assert all(list(json.loads(line)) == ["offset", "stream", "time", "lines"] for line in lines)


def test_a_run_not_final_is_never_archived(local, app, settings):
    running = logged_run(local, app, final=False)
    database = app.state.database
    with database.transaction() as session:  # long enough ago, were it final
        session.execute(update(Run).values(finished_at=datetime(2020, 1, 1)))
    settings.log_archive_after_seconds = 1
    assert log_archive.due(database, settings) == []
    assert log_archive.write(database, settings, run_id=running) is None
    assert not log_archive.archive_run(database, settings, run_id=running)
    assert archive_state(app, running)[0] is None and archive_state(app, running)[1] > 0
    assert _files(settings, running) == []


def test_a_pass_archives_final_runs_that_ended_long_enough_ago(local, app, settings):
    database = app.state.database
    settings.log_archive_after_seconds = 3600
    old, recent = logged_run(local, app), logged_run(local, app)
    assert log_archive.archive_pass(database, settings) == []
    with database.transaction() as session:
        session.execute(update(Run).where(Run.id == old).values(finished_at=datetime(2020, 1, 1)))
    assert log_archive.archive_pass(database, settings) == [old]
    assert archive_state(app, old)[1] == 0 and archive_state(app, recent) == (None, archive_state(app, recent)[1])
    assert log_archive.archive_pass(database, settings) == []


def test_the_server_archives_due_logs_on_its_own(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", lease_seconds=2, log_archive_after_seconds=0.01)
    app = create_app(settings)
    local = in_process_api(app, settings)
    run_id = logged_run(local, app)
    with TestClient(app):  # with its lifespan: the periodic jobs run
        wait_until(lambda: archive_state(app, run_id)[0] is not None, timeout=TIMEOUT, what="the log archived")
    assert archive_state(app, run_id)[1] == 0
    app.state.database.dispose()


def race_two_archivers(app, settings: Settings, run_id: int, monkeypatch) -> list[bool]:
    """Two archivers of one run, each past writing its archive before either records it: what each answered."""
    both_written = threading.Barrier(2, timeout=TIMEOUT)
    record = log_archive.record

    def record_when_both_wrote(*args):
        both_written.wait()
        return record(*args)

    monkeypatch.setattr(log_archive, "record", record_when_both_wrote)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        log_archive.archive_run(app.state.database, settings, run_id=run_id))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    return results


def test_archivers_racing_archive_once(local, app, settings, monkeypatch):
    run_id = logged_run(local, app)
    before = all_reads(app, settings, run_id)
    assert sorted(race_two_archivers(app, settings, run_id, monkeypatch)) == [False, True]
    key, rows = archive_state(app, run_id)
    assert rows == 0 and len(_files(settings, run_id)) == 2 and key.split("/")[1] in _files(settings, run_id)
    assert all_reads(app, settings, run_id) == before


def test_passes_racing_archive_each_run_once(local, app, settings):
    database = app.state.database
    settings.log_archive_after_seconds = 1
    run_ids = [logged_run(local, app) for _ in range(4)]
    with database.transaction() as session:
        session.execute(update(Run).values(finished_at=datetime(2020, 1, 1)))
    done: list[list[int]] = []
    threads = [threading.Thread(target=lambda: done.append(log_archive.archive_pass(database, settings)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(done[0] + done[1]) == run_ids
    assert all(len(_files(settings, run_id)) == 2 and archive_state(app, run_id)[1] == 0 for run_id in run_ids)


def test_a_crash_between_writing_and_recording_loses_nothing(local, app, settings):
    run_id = logged_run(local, app)
    before = all_reads(app, settings, run_id)
    database = app.state.database
    left = log_archive.write(database, settings, run_id=run_id)  # and then the process died
    assert left is not None and len(_files(settings, run_id)) == 2
    assert archive_state(app, run_id)[0] is None
    assert all_reads(app, settings, run_id) == before  # still from the rows

    assert log_archive.archive_run(database, settings, run_id=run_id)
    key, rows = archive_state(app, run_id)
    assert key != left.key and rows == 0
    assert _files(settings, run_id) == sorted(
        [key.split("/")[1], key.split("/")[1].replace(".ndjson", ".index.json")])  # the orphans removed
    assert all_reads(app, settings, run_id) == before


def test_the_rows_never_go_without_the_key(local, app, settings, monkeypatch):
    run_id = logged_run(local, app)
    database = app.state.database
    archive = log_archive.write(database, settings, run_id=run_id)
    rows = archive_state(app, run_id)[1]

    def fail(*_args):
        raise RuntimeError("the database went away mid-transaction")

    monkeypatch.setattr(log_archive, "delete", fail)
    with pytest.raises(RuntimeError):
        log_archive.record(database, settings, archive)
    assert archive_state(app, run_id) == (None, rows)


def test_a_log_that_grew_after_its_archive_was_written_keeps_its_rows(local, app, settings):
    run_id = logged_run(local, app)
    database = app.state.database
    archive = log_archive.write(database, settings, run_id=run_id)
    with database.transaction() as session:
        append_cast_lines(session, session.get(Run, run_id), ["[cast] one more"])
    assert not log_archive.record(database, settings, archive)
    assert archive_state(app, run_id)[0] is None and _files(settings, run_id) == []
    assert log_archive.archive_run(database, settings, run_id=run_id)
    admin = admin_of(database)
    with database.transaction(write=False) as session:
        page = log_reads.read_page(session, settings=settings, run_id=run_id, viewer=admin, offset=-1, limit=1)
    assert page["chunks"][0]["lines"] == ["[cast] one more"] and page["finished"]


def test_a_read_that_crosses_the_archiving_answers_the_whole_page(local, app, settings, monkeypatch):
    run_id = logged_run(local, app)
    before = all_reads(app, settings, run_id)
    visible_run = runs.visible_run

    def archived_meanwhile(session, **kwargs):
        run = visible_run(session, **kwargs)
        log_archive.archive_run(app.state.database, settings, run_id=run_id)
        return run

    monkeypatch.setattr(runs, "visible_run", archived_meanwhile)
    admin = admin_of(app.state.database)
    with app.state.database.transaction(write=False) as session:
        page = log_reads.read_page(session, settings=settings, run_id=run_id, viewer=admin, offset=5, limit=1000)
    assert page == before[(5, 1000)] and archive_state(app, run_id)[1] == 0


def test_freeing_a_runs_outputs_keeps_its_archived_log(local, app, settings):
    run_id = logged_run(local, app)
    before = all_reads(app, settings, run_id)
    log_archive.archive_run(app.state.database, settings, run_id=run_id)
    with app.state.database.transaction() as session:
        deletion.delete_run_outputs(session, settings=settings, run_id=run_id, viewer=admin_of(app.state.database))
    assert len(_files(settings, run_id)) == 2
    assert all_reads(app, settings, run_id) == before


def test_a_page_of_a_long_archived_log_reads_the_archive_only_near_its_lines(local, app, settings, monkeypatch):
    run_id = local.create_run()["id"]
    lease = local.lease(local.register())
    local.advance(lease, "mounting", "running")
    at = datetime(2026, 1, 2, tzinfo=timezone.utc)
    with app.state.database.transaction() as session:
        run = session.get(Run, run_id)
        base = run.log_size  # the stage lines before
        logs.append(session, run, [("stdout", [f"line {i:07d}" for i in range(start, start + 1000)], at)
                                   for start in range(0, 1_000_000, 1000)])
    local.advance(lease, "saving", "pushing", "complete", exit_code=0)
    assert log_archive.archive_run(app.state.database, settings, run_id=run_id)
    key, _ = archive_state(app, run_id)
    assert (settings.log_archive_dir / key).stat().st_size > 10 * log_archive._READ_CHUNK

    read: list[int] = []
    chunks = log_archive._Files.chunks

    def counted(self, key: str, start: int):
        for piece in chunks(self, key, start):
            read.append(len(piece))
            yield piece

    monkeypatch.setattr(log_archive._Files, "chunks", counted)
    admin = admin_of(app.state.database)
    for line in (0, 500_123, 999_990):
        read.clear()
        with app.state.database.transaction(write=False) as session:
            page = log_reads.read_page(session, settings=settings, run_id=run_id, viewer=admin,
                                       offset=base + line, limit=10)
        texts = [text for chunk in page["chunks"] for text in chunk["lines"]]
        assert texts == [f"line {i:07d}" for i in range(line, line + 10)]
        assert sum(read) <= 2 * log_archive._READ_CHUNK


@pytest.mark.parametrize("lost", ["archive", "index"])
def test_an_archive_the_store_lost_answers_410_on_every_read(local, app, settings, lost):
    run_id = logged_run(local, app)
    assert log_archive.archive_run(app.state.database, settings, run_id=run_id)
    assert local.user.get(f"/runs/{run_id}/logs").status_code == 200  # its index read (and kept)
    key, _ = archive_state(app, run_id)
    if lost == "index":
        (settings.log_archive_dir / key.replace(".ndjson", ".index.json")).unlink()
        log_archive._index.cache_clear()  # a server that had not read it before
    else:
        (settings.log_archive_dir / key).unlink()
    answers_archive_missing(local, run_id)
    assert local.run(run_id)["status"] == "complete"  # the rest of its record answers as before
