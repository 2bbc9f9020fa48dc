"""The web viewer's file download when the outputs live in a real S3 store
(SeaweedFS), in Debian's Chromium: the API answers a redirect to a presigned
URL of the store, and the browser's download has the run's bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import create_run, wait_status
from tests.web.conftest import chromium, page, watch  # noqa: F401 (fixtures)
from tests.web.helpers import sign_in


@pytest.fixture(scope="module")
def browser():
    """This module's own Chromium, closed when it ends: the session's (tests/web)
    would keep playwright's loop running through every later test."""
    with chromium() as browser:
        yield browser


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
