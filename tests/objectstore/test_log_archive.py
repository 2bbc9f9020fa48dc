"""Archived logs in a real S3 store (SeaweedFS): a final run's log goes to
`<prefix>/logs/<run id>/` as NDJSON and its index, every read of it answers
as the database did (pages read by ranged GETs from an index point), a crash
between writing and recording leaves objects the next archive removes, racing
archivers leave one archive, freeing the run's outputs keeps its log, a
real server, worker and `cast logs` read it back the same, and an archive
gone from the store is a clear 410 and one `cast: error:` line."""

from __future__ import annotations


import pytest

from cast.server.services import deletion, log_archive
from cast.server.settings import Settings
from tests.factories import archive_logs_now, cli_log_reads, create_run, log_entries, wait_final
from tests.server.services.conftest import admin_of
from tests.server.services.test_log_archive import (all_reads, answers_archive_missing, archive_state, downloaded,
                                                       logged_run, race_two_archivers)

TIMEOUT = 120  # guards against a hang only


@pytest.fixture
def settings(s3_settings) -> Settings:
    return s3_settings(lease_seconds=2, allow_local_git=True)


def _log_keys(seaweed, bucket: str, run_id: int) -> list[str]:
    return sorted(seaweed.keys(bucket, f"cast/logs/{run_id}/"))


def test_an_archived_log_in_the_store_answers_every_read_as_the_database_did(
        local, app, settings, seaweed, bucket, monkeypatch):
    monkeypatch.setattr(log_archive, "INDEX_EVERY", 400)  # ranged GETs from many points
    run_id = logged_run(local, app)
    before, text = all_reads(app, settings, run_id, limits=(1, 7, 1000)), downloaded(app, settings, run_id)

    left = log_archive.write(app.state.database, settings, run_id=run_id)  # and then the process died
    assert _log_keys(seaweed, bucket, run_id) == sorted([left.key, left.key.replace(".ndjson", ".index.json")])
    assert all_reads(app, settings, run_id, limits=(1, 7, 1000)) == before  # still from the rows

    assert log_archive.archive_run(app.state.database, settings, run_id=run_id)
    key, rows = archive_state(app, run_id)
    assert key.startswith(f"cast/logs/{run_id}/") and rows == 0
    assert _log_keys(seaweed, bucket, run_id) == sorted([key, key.replace(".ndjson", ".index.json")])
    assert not (settings.log_archive_dir).exists()  # nothing on the server's disk
    assert all_reads(app, settings, run_id, limits=(1, 7, 1000)) == before
    assert downloaded(app, settings, run_id) == text

    with app.state.database.transaction() as session:
        deletion.delete_run_outputs(session, settings=settings, run_id=run_id, viewer=admin_of(app.state.database))
    assert _log_keys(seaweed, bucket, run_id) == sorted([key, key.replace(".ndjson", ".index.json")])
    assert all_reads(app, settings, run_id) == {k: v for k, v in before.items() if k[1] == 1000}


def test_archivers_racing_on_the_store_leave_one_archive(local, app, settings, seaweed, bucket, monkeypatch):
    run_id = logged_run(local, app)
    before = all_reads(app, settings, run_id)
    assert sorted(race_two_archivers(app, settings, run_id, monkeypatch)) == [False, True]
    key, _ = archive_state(app, run_id)
    assert _log_keys(seaweed, bucket, run_id) == sorted([key, key.replace(".ndjson", ".index.json")])
    assert all_reads(app, settings, run_id) == before


def test_cast_logs_reads_a_log_archived_in_the_store_as_before(cli, server, worker, seaweed, bucket):
    run_id = create_run(server, "seq 1 3000; echo oops >&2; seq 3001 3500")["id"]
    assert wait_final(server, run_id)["status"] == "complete"
    before, entries = cli_log_reads(cli, run_id), log_entries(server, run_id)
    assert before["text"][0] == 0 and "3500" in before["text"][1]

    key = archive_logs_now(server, run_id)
    assert key in seaweed.keys(bucket, f"cast/logs/{run_id}/")
    assert cli_log_reads(cli, run_id) == before
    assert log_entries(server, run_id) == entries


@pytest.mark.parametrize("lost", ["archive", "index"])
def test_an_archive_gone_from_the_store_answers_410_on_every_read(local, app, settings, seaweed, bucket, lost):
    run_id = logged_run(local, app)
    assert log_archive.archive_run(app.state.database, settings, run_id=run_id)
    assert local.user.get(f"/runs/{run_id}/logs").status_code == 200  # its index read (and kept)
    key, _ = archive_state(app, run_id)
    if lost == "index":
        log_archive._index.cache_clear()  # a server that had not read it before
    seaweed.delete(bucket, key.replace(".ndjson", ".index.json") if lost == "index" else key)
    answers_archive_missing(local, run_id)


def test_cast_logs_of_an_archive_gone_from_the_store_is_one_error_line(cli, server, worker, seaweed, bucket):
    run_id = create_run(server, "seq 1 30")["id"]
    assert wait_final(server, run_id)["status"] == "complete"
    key = archive_logs_now(server, run_id)
    seaweed.delete(bucket, key)
    for args in ([], ["-f"], ["--tail", "5"]):
        result = cli("logs", *args, str(run_id))
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        assert result.stderr == (f"cast: error: the archived log of run {run_id} is missing from the store; "
                                 "its lines can no longer be read\n"), args
