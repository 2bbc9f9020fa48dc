"""The blob collector on a real S3 store (SeaweedFS): objects of an upload
planned and never committed, and those a crash left between a deletion's
commit and its removal, are deleted once older than the grace period, with
stale multipart uploads; what an upload names, and what was written within
the grace period, stays. A removal (the collector's or a deletion's) racing
a commit of the same content never leaves the commit naming a missing
object: it waits for the commit, or the commit is told to push again. The
server runs the pass on its own."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import httpx
from fastapi.testclient import TestClient

from cast.protocol.objects import SHA256_HEADER
from cast.server.app import create_app
from cast.server.services import object_files
from cast.server.services.objectstore import object_store
from cast.server.settings import Settings
from tests.conftest import wait_until
from tests.server.conftest import in_process_api

TIMEOUT = 120  # guards against a hang only
# S3 keeps an object's time to the second: older than a 1 s grace after this.
PAST_GRACE = 2.5
# A grace that an object written just before the collector's listing is still
# within on a busy machine (CI once took more than a second from a PUT to the
# listing), and a wait that puts what was written before it past that grace.
WIDE_GRACE = 10
PAST_WIDE_GRACE = WIDE_GRACE + 1.5
A = b"a\n"


def _entry(name: str, data: bytes) -> dict:
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest(files: dict[str, bytes]) -> dict:
    return {"kind": "dir", "replace": False, "files": [_entry(name, data) for name, data in files.items()]}


def plan_and_put(api, name: str, files: dict[str, bytes]) -> dict:
    """`cast upload`'s first two steps: the plan, and every PUT it lists (parts
    too); the manifest, to commit (or not)."""
    manifest = _manifest(files)
    plan = api.user.post(f"/uploads/{name}/plan", json=manifest)
    assert plan.status_code == 200, plan.text
    for upload in plan.json()["uploads"]:
        data = files[upload["path"]]
        if upload["url"]:
            put = httpx.put(upload["url"], content=data,
                            headers={SHA256_HEADER: hashlib.sha256(data).hexdigest()}, timeout=TIMEOUT)
            assert put.status_code == 200, put.text
        for part in upload["parts"]:
            start = (part["number"] - 1) * upload["part_size"]
            put = httpx.put(part["url"], content=data[start:start + upload["part_size"]], timeout=TIMEOUT)
            assert put.status_code == 200, put.text
    return manifest


def commit(api, name: str, manifest: dict) -> httpx.Response:
    return api.user.post(f"/uploads/{name}/commit", json=manifest)


def upload(api, name: str, files: dict[str, bytes]) -> None:
    response = commit(api, name, plan_and_put(api, name, files))
    assert response.status_code == 201, response.text


def read(api, path: str) -> bytes:
    """A file of an upload, fetched as the CLI does: from the store, by the presigned URL the server answers."""
    answer = api.user.get(path, follow_redirects=False)
    assert answer.status_code == 307, answer.text
    return httpx.get(answer.headers["location"], timeout=TIMEOUT).content


def blobs(seaweed, bucket) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in seaweed.keys(bucket, "cast/blobs/")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def collect(app, settings, grace: float) -> list[str]:
    return object_files.collect_blobs(app.state.database, store=object_store(settings), grace_seconds=grace)


def test_objects_no_upload_names_go_once_older_than_the_grace_period(local, app, settings, seaweed, bucket,
                                                                       monkeypatch):
    named, planned, big = b"named\n", b"planned, never committed\n", os.urandom(6 << 20)
    upload(local, "kept", {"a.txt": named})
    plan_and_put(local, "never", {"b.txt": planned})
    monkeypatch.setattr(object_files, "MULTIPART_BYTES", 5 << 20)  # the smallest part S3 takes
    plan_and_put(local, "cut", {"big.bin": big})  # its parts sent, the upload never joined
    assert blobs(seaweed, bucket) == {sha(named), sha(planned)}
    assert seaweed.multipart_keys(bucket) == [f"cast/blobs/1/{sha(big)}"]

    assert collect(app, settings, grace=3600) == []  # all written within the grace period
    assert blobs(seaweed, bucket) == {sha(named), sha(planned)} and seaweed.multipart_keys(bucket)

    time.sleep(PAST_WIDE_GRACE)
    fresh = b"written just now, not committed yet\n"
    plan_and_put(local, "fresh", {"c.txt": fresh})
    assert collect(app, settings, grace=WIDE_GRACE) == [f"cast/blobs/1/{sha(planned)}"]
    assert blobs(seaweed, bucket) == {sha(named), sha(fresh)} and seaweed.multipart_keys(bucket) == []
    assert read(local, "/uploads/kept/a.txt") == named


def test_objects_a_crash_left_after_a_deletion_are_collected(local, app, settings, seaweed, bucket, monkeypatch):
    upload(local, "gone", {"a.txt": A, "b.txt": b"b\n"})
    upload(local, "other", {"b.txt": b"b\n"})
    # The process dies between the deletion's commit and its removal of the objects.
    monkeypatch.setattr(object_files, "remove_unnamed_blobs", lambda *args, **kwargs: [])
    assert local.user.delete("/uploads/gone").status_code == 200
    monkeypatch.undo()
    assert blobs(seaweed, bucket) == {sha(A), sha(b"b\n")}
    time.sleep(PAST_GRACE)
    assert collect(app, settings, grace=1) == [f"cast/blobs/1/{sha(A)}"]
    assert blobs(seaweed, bucket) == {sha(b"b\n")}  # still named by "other"


def _commit_paused(monkeypatch):
    """Commits pause right after their check of the store, until `release` is set."""
    checked, release = threading.Event(), threading.Event()
    real = object_files._check_stored

    def check_then_wait(*args, **kwargs):
        real(*args, **kwargs)
        checked.set()
        assert release.wait(TIMEOUT)

    monkeypatch.setattr(object_files, "_check_stored", check_then_wait)
    return checked, release


def _race(local, app, settings, monkeypatch, remove) -> tuple[httpx.Response, threading.Thread]:
    """Commit `again` (the content `first` holds, nothing sent: the plan found
    it stored) while `remove()` drops its last name; the commit's answer."""
    checked, release = _commit_paused(monkeypatch)
    manifest = plan_and_put(local, "again", {"x.bin": b"same content\n"})
    answers = {}
    committer = threading.Thread(target=lambda: answers.update(answer=commit(in_process_api(app, settings),
                                                                              "again", manifest)))
    committer.start()
    assert checked.wait(TIMEOUT)
    remover = threading.Thread(target=remove)
    remover.start()
    # Time for a removal that did not wait for the commit to delete the object under it.
    remover.join(3)
    release.set()
    committer.join(TIMEOUT)
    remover.join(TIMEOUT)
    assert not committer.is_alive() and not remover.is_alive()
    return answers["answer"], remover


def test_a_deletion_racing_a_commit_of_the_same_content_leaves_it_readable(local, app, settings, seaweed,
                                                                           bucket, monkeypatch):
    upload(local, "first", {"x.bin": b"same content\n"})
    deleted = {}
    answer, _ = _race(local, app, settings, monkeypatch,
                      lambda: deleted.update(answer=in_process_api(app, settings).user.delete("/uploads/first")))
    assert answer.status_code == 201, answer.text
    assert deleted["answer"].status_code == 200, deleted["answer"].text
    assert blobs(seaweed, bucket) == {sha(b"same content\n")}
    assert read(local, "/uploads/again/x.bin") == b"same content\n"


def test_the_collector_racing_a_commit_of_the_same_content_leaves_it_readable(local, app, settings, seaweed,
                                                                              bucket, monkeypatch):
    plan_and_put(local, "never", {"x.bin": b"same content\n"})  # never committed
    time.sleep(PAST_GRACE)
    removed = {}
    answer, _ = _race(local, app, settings, monkeypatch,
                      lambda: removed.update(keys=collect(app, settings, grace=1)))
    assert answer.status_code == 201, answer.text
    assert removed["keys"] == []
    assert blobs(seaweed, bucket) == {sha(b"same content\n")}
    assert read(local, "/uploads/again/x.bin") == b"same content\n"


def test_a_commit_after_the_removal_is_told_to_push_again(local, app, settings, seaweed, bucket):
    upload(local, "first", {"x.bin": b"same content\n"})
    manifest = plan_and_put(local, "again", {"x.bin": b"same content\n"})  # nothing to send: stored
    assert local.user.delete("/uploads/first").status_code == 200
    assert blobs(seaweed, bucket) == set()
    refused = commit(local, "again", manifest)
    assert (refused.status_code, refused.json()["detail"]) == (
        400, "upload 'again': 'x.bin' is not in the object store whole; push it again")
    upload(local, "again", {"x.bin": b"same content\n"})  # running the upload again sends it
    assert read(local, "/uploads/again/x.bin") == b"same content\n"


def test_the_server_collects_on_its_own(tmp_path, s3_env, monkeypatch, seaweed, bucket):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(data_dir=tmp_path / "data", storage_url=s3_env["CAST_STORAGE_URL"], blob_grace_seconds=1)
    app = create_app(settings)
    try:
        plan_and_put(in_process_api(app, settings), "never", {"x.bin": b"left behind\n"})
        assert blobs(seaweed, bucket) == {sha(b"left behind\n")}
        with TestClient(app):  # with its lifespan: the periodic passes run
            wait_until(lambda: not blobs(seaweed, bucket), timeout=TIMEOUT, interval=0.2,
                       what="the uncommitted object collected")
    finally:
        app.state.database.dispose()
