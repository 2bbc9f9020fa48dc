"""`cast upload`'s PUTs to a real S3 store (SeaweedFS) behind a proxy on
loopback that fails the first of them on purpose (tests/realservers/
faultproxy.py): a PUT whose connection is cut, or answered 5xx, is sent
again after a pause and the upload completes; a 4xx ends it at once with
one error line (and running it again resumes); a store that fails every try
ends it after PUT_TRIES tries."""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urlsplit

import pytest

from cast.client.objectupload import PUT_TRIES
from tests.realservers.faultproxy import FaultProxy

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
RESUME = "run the same cast upload again to resume"


@pytest.fixture
def proxy(seaweed):
    target = urlsplit(seaweed.endpoint)
    with FaultProxy((target.hostname, target.port)) as started:
        yield started


@pytest.fixture
def server(start_server, s3_env, proxy):
    """The server signs URLs for the proxy's address: the CLI's PUTs cross it."""
    return start_server(env={**s3_env, "AWS_ENDPOINT_URL": proxy.url})


@pytest.fixture
def data(tmp_path):
    (tmp_path / "data.bin").write_bytes(DATA)
    return "data.bin"


def _retries(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cast: the object store did not take")]


def _uploaded(cli, seaweed, bucket, tmp_path) -> None:
    assert f"cast/blobs/1/{SHA}" in seaweed.keys(bucket, "cast/blobs/")
    assert cli("cp", "uploads/data.bin", "back.bin").returncode == 0
    assert (tmp_path / "back.bin").read_bytes() == DATA


def test_a_put_whose_connection_is_cut_is_sent_again(cli, proxy, data, seaweed, bucket, tmp_path):
    proxy.fail(2)  # closed without an answer
    result = cli("upload", data)
    assert result.returncode == 0, result
    retries = _retries(result.stderr)
    assert len(retries) == 2 and proxy.faults == 0 and proxy.seen == 3, result.stderr
    assert retries[0].startswith("cast: the object store did not take data.bin (cannot reach it: ")
    assert retries[0].endswith("; sending it again in 0.5 s") and retries[1].endswith("sending it again in 1 s")
    _uploaded(cli, seaweed, bucket, tmp_path)


def test_a_put_answered_5xx_is_sent_again(cli, proxy, data, seaweed, bucket, tmp_path):
    proxy.fail(1, answer=503)
    result = cli("upload", data)
    assert result.returncode == 0, result
    assert _retries(result.stderr) == [
        "cast: the object store did not take data.bin (503: fault here); sending it again in 0.5 s"]
    assert proxy.seen == 2
    _uploaded(cli, seaweed, bucket, tmp_path)


def test_a_put_answered_4xx_ends_the_upload_at_once(cli, proxy, data, seaweed, bucket, tmp_path):
    proxy.fail(1, answer=403)
    refused = cli("upload", data)
    assert refused.returncode == 1, refused
    assert refused.stderr.splitlines()[-1] == (
        f"cast: error: the object store refused data.bin (403: fault here); {RESUME}")
    assert _retries(refused.stderr) == [] and proxy.seen == 1
    again = cli("upload", data)  # resumes
    assert again.returncode == 0, again
    _uploaded(cli, seaweed, bucket, tmp_path)


def test_a_store_failing_every_try_ends_the_upload_after_put_tries(cli, proxy, data):
    proxy.fail(100, answer=502)
    result = cli("upload", data)
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == (
        f"cast: error: the object store did not take data.bin in {PUT_TRIES} tries (502: fault here); {RESUME}")
    assert len(_retries(result.stderr)) == PUT_TRIES - 1 and proxy.seen == PUT_TRIES
