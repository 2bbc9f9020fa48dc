"""`cast upload`'s PUTs to a real S3 store (SeaweedFS) behind a proxy on
loopback that fails some of them on purpose (tests/realservers/
faultproxy.py): a PUT whose connection is cut, or answered 5xx, is sent
again after a pause and the upload completes; a 4xx ends it at once with
one error line (and running it again resumes); a store that fails every try
ends it after PUT_TRIES tries. The same for a part of a multipart upload: a
part that fails once or twice is sent again and the object is whole; a part
failing every try ends the upload with one error line, and its multipart
upload is resumed by running the upload again (only the missing part sent)
or, if it is not, aborted by the server's blob collector after the grace
period: no orphan. A worker's output push retries a failed part too."""

from __future__ import annotations

import hashlib
import os

import pytest

from cast.client.objectupload import PUT_TRIES
from cast.protocol.objects import MULTIPART_BYTES
from cast.server.services.objectstore import StoredObject
from tests.conftest import wait_until

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
RESUME = "run the same cast upload again to resume"


@pytest.fixture
def server(start_server, proxied_s3_env, request):
    """The server behind the proxy, with the settings a test gives as the fixture's parameter."""
    return start_server(env={**proxied_s3_env, **getattr(request, "param", {})})


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


# --- multipart: a file of two parts, 64 MiB and 100 kB -------------------------------

BIG_SIZE = MULTIPART_BYTES + 100_000
TIMEOUT = 180  # guards against a hang only


@pytest.fixture
def big(tmp_path) -> str:
    data = os.urandom(BIG_SIZE)
    (tmp_path / "big.bin").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _whole(store, sha: str) -> bool:
    return store.head(f"cast/blobs/1/{sha}") == StoredObject(BIG_SIZE, sha)


def _copied_back(cli, tmp_path, sha: str) -> bool:
    assert cli("cp", "uploads/big.bin", "back.bin").returncode == 0
    digest = hashlib.sha256()
    with open(tmp_path / "back.bin", "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha


@pytest.mark.parametrize("fault, retried", [
    ({"count": 1}, ["cast: the object store did not take part 1 of big.bin (cannot reach it: "]),
    ({"count": 2, "answer": 503, "after": 1},
     ["cast: the object store did not take part 2 of big.bin (503: fault here); sending it again in 0.5 s",
      "cast: the object store did not take part 2 of big.bin (503: fault here); sending it again in 1 s"]),
], ids=["part-1-cut", "part-2-503-twice"])
def test_a_part_failing_once_or_twice_is_sent_again(cli, proxy, big, store, seaweed, bucket, tmp_path,
                                                    fault, retried):
    proxy.fail(**fault)
    result = cli("upload", "big.bin", timeout=TIMEOUT)
    assert result.returncode == 0, result
    lines = _retries(result.stderr)
    assert len(lines) == len(retried) and all(line.startswith(want) for line, want in zip(lines, retried)), lines
    assert proxy.faults == 0 and proxy.seen == 2 + fault["count"]
    assert _whole(store, big) and seaweed.multipart_keys(bucket) == []
    assert _copied_back(cli, tmp_path, big)


def _given_up(cli, proxy) -> None:
    """Part 1 is stored; part 2 fails every try: one error line."""
    proxy.fail(100, answer=502, after=1)
    result = cli("upload", "big.bin", timeout=TIMEOUT)
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == (
        f"cast: error: the object store did not take part 2 of big.bin in {PUT_TRIES} tries (502: fault here); "
        f"{RESUME}")
    assert len(_retries(result.stderr)) == PUT_TRIES - 1 and proxy.seen == 1 + PUT_TRIES
    proxy.fail(0)


def test_a_part_failing_every_try_ends_the_upload_and_running_it_again_resumes(cli, proxy, big, store, seaweed,
                                                                                bucket, tmp_path):
    _given_up(cli, proxy)
    assert seaweed.multipart_keys(bucket) == [f"cast/blobs/1/{big}"] and not _whole(store, big)
    seen = proxy.seen
    again = cli("upload", "big.bin", timeout=TIMEOUT)
    assert again.returncode == 0, again
    assert proxy.seen == seen + 1  # part 2 only: part 1 was kept
    assert _whole(store, big) and seaweed.multipart_keys(bucket) == []
    assert _copied_back(cli, tmp_path, big)


@pytest.mark.parametrize("server", [{"CAST_BLOB_GRACE_SECONDS": "30"}], indirect=True)
def test_a_part_failing_every_try_leaves_no_orphan(cli, proxy, big, store, seaweed, bucket, server):
    _given_up(cli, proxy)
    # Not run again: the server's collector aborts it once it is older than the grace period.
    wait_until(lambda: seaweed.multipart_keys(bucket) == [], timeout=TIMEOUT, interval=1,
               what="the abandoned multipart upload aborted")
    assert not _whole(store, big) and seaweed.keys(bucket, "cast/blobs/") == []


def test_a_workers_push_sends_a_failed_part_again(cli, proxy, server, start_worker, store, seaweed, bucket):
    start_worker(server)
    proxy.fail(1, answer=503)
    made = cli("run", "head -c %d /dev/urandom > big.bin && sha256sum big.bin" % BIG_SIZE, timeout=TIMEOUT)
    assert made.returncode == 0, made
    sha = next(line.split()[0] for line in made.stdout.splitlines() if line.endswith("  big.bin"))
    # Part 1's first PUT failed (the worker keeps its connection alive, so the proxy sees later PUTs pass unread).
    assert proxy.faults == 0
    with server.api() as api:
        listed = api.get("/runs/1/outputs").json()["files"]
    assert [(f["path"], f["size"], f["sha256"]) for f in listed] == [("big.bin", BIG_SIZE, sha)]
    assert store.head("cast/runs/1/big.bin") == StoredObject(BIG_SIZE, sha)
    assert seaweed.multipart_keys(bucket) == []


@pytest.mark.parametrize("server", [{"CAST_BLOB_GRACE_SECONDS": "2"}], indirect=True)
def test_a_workers_push_whose_part_fails_every_try_fails_the_run_and_leaves_no_orphan(cli, proxy, server,
                                                                                       start_worker, seaweed,
                                                                                       bucket):
    start_worker(server)
    proxy.fail(10_000, answer=502)
    made = cli("run", "head -c %d /dev/urandom > big.bin" % BIG_SIZE, timeout=TIMEOUT)
    assert made.returncode != 0, made
    with server.api() as api:
        run = api.get("/runs/1").json()
    assert run["status"] == "failed" and "the same answer 8 times in a row" in run["reason"], run
    assert seaweed.keys(bucket, "cast/runs/") == []
    # The failed run never pushes again: the server's collector aborts its multipart upload.
    wait_until(lambda: seaweed.multipart_keys(bucket) == [], timeout=TIMEOUT, interval=1,
               what="the failed push's multipart upload aborted")
