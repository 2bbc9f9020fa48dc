"""A log archived to the local store (the data dir's logs/) read back by a
real server: the viewer shows a finished run's archived log as it was, and
`cast logs` (plain, JSON, the last lines, followed to the end) and the API's
pages print the same as before it was archived."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.factories import archive_logs_now, cli_log_reads, create_run, log_entries, wait_final
from tests.web.helpers import sign_in

LINE_TEXTS = "() => [...document.querySelectorAll('.log .line')].map((line) => line.textContent)"


def test_the_viewer_and_cast_logs_read_an_archived_log_as_before(server, worker, cli, page):
    run_id = create_run(server, "seq 1 600; echo 'oops <b>bold</b>' >&2; seq 601 900")["id"]
    assert wait_final(server, run_id)["status"] == "complete"
    before, entries = cli_log_reads(cli, run_id), log_entries(server, run_id)
    assert before["text"][0] == 0 and "900" in before["text"][1]

    key = archive_logs_now(server, run_id)
    assert (server.data_dir / "logs" / key).is_file()
    assert cli_log_reads(cli, run_id) == before
    assert log_entries(server, run_id) == entries

    sign_in(page, server, f"#/runs/{run_id}")
    expect(page.locator(".log-state")).to_have_text("finished", timeout=60_000)
    assert page.evaluate(LINE_TEXTS) == [entry["text"] for entry in entries]
