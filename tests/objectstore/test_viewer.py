"""The web viewer on a real S3 store (SeaweedFS), in Debian's Chromium: a
file's download (the API answers a redirect to a presigned URL of the store,
and the browser's download has the run's bytes), and a run whose archived
log is gone from the store (the log shows the API's one line, not a
spinner or an endless reconnect)."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import expect

from tests.factories import archive_logs_now, create_run, wait_final, wait_status
from tests.web.conftest import browser, page, watch  # noqa: F401 (fixtures: this module's own Chromium)
from tests.web.helpers import sign_in


def test_the_viewer_downloads_a_file_from_the_store(server, worker, page, seaweed, bucket):  # noqa: F811
    producer = create_run(server, "head -c 5000 /dev/urandom > blob.bin && cat blob.bin | od -An -tx1 | head -1")
    wait_status(server, producer["id"], "complete")
    key = f"cast/runs/{producer['id']}/blob.bin"
    assert seaweed.keys(bucket) == [key]
    stored = seaweed._client().get_object(Bucket=bucket, Key=key)["Body"].read()

    sign_in(page, server, f"#/runs/{producer['id']}")
    with page.expect_download() as info:
        page.click('button[data-path="blob.bin"]')
    assert info.value.suggested_filename == "blob.bin"
    assert Path(info.value.path()).read_bytes() == stored
    assert len(stored) == 5000 and not os.path.exists(server.data_dir / "runs" / str(producer["id"]))


def test_the_viewer_says_an_archived_log_is_missing_from_the_store(server, worker, page, seaweed,  # noqa: F811
                                                                    bucket):
    run_id = create_run(server, "echo hello")["id"]
    assert wait_final(server, run_id)["status"] == "complete"
    key = archive_logs_now(server, run_id)
    assert key in seaweed.keys(bucket, f"cast/logs/{run_id}/")
    for stored in seaweed.keys(bucket, f"cast/logs/{run_id}/"):  # the archive and its index
        seaweed.delete(bucket, stored)

    sign_in(page, server, f"#/runs/{run_id}")
    state = page.locator(".log-state")
    expect(state).to_have_text(f"the archived log of run {run_id} is missing from the store; "
                               "its lines can no longer be read", timeout=60_000)
    expect(state).to_have_attribute("data-tone", "error")
    assert page.locator(".log .line").count() == 0
