"""Uploads an earlier cast stored in an S3 bucket before uploads were content
addressed (until 887bee8: `uploads/<name>/<generation>/<path>`, each object
with its sha256 in its metadata) are converted to `blobs/<owner>/<sha256>` by
the server's own pass, on a real SeaweedFS: `cast ls`, `cast cp` and a
mount read them back; leftovers no upload names go after the grace period.
The pass is crash-safe and keeps an upload's old objects while one of its
files cannot be converted."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from cast.server.services import upload_layout
from cast.server.services.objectstore import object_store
from tests.conftest import wait_until
from tests.objectstore.test_blob_collector import PAST_GRACE, blobs, read, upload

TIMEOUT = 120  # guards against a hang only


def earlier_generation(rows) -> str:
    """The key folder the earlier version gave an upload's objects: a digest of its manifest."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["path"]):
        digest.update(f"{row['path']}\0{row['size']}\0{row['sha256']}\n".encode())
    return digest.hexdigest()[:16]


def to_earlier_layout(store, name: str, rows, data_of) -> list[str]:
    """Store upload `name`'s files as the earlier version did (its put_file),
    and drop their blobs; the old keys."""
    generation = earlier_generation(rows)
    keys = []
    for row in rows:
        key = f"cast/uploads/{name}/{generation}/{row['path']}"
        store.put_file(key, data_of(row["path"]), row["sha256"])
        keys.append(key)
    store.delete_keys(store.blob_key(1, row["sha256"]) for row in rows)
    return keys


def old_keys(seaweed, bucket) -> list[str]:
    return seaweed.keys(bucket, "cast/uploads/")


def test_uploads_of_the_earlier_layout_are_read_back_by_ls_cp_and_a_mount(cli, server, start_worker, store,
                                                                           seaweed, bucket, tmp_path):
    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    (ds / "a.txt").write_text("a\n")
    (ds / "same.txt").write_text("a\n")  # one content, two files
    big = os.urandom(9 << 20)  # above boto3's threshold: the store copies it in parts
    (ds / "sub" / "big.bin").write_bytes(big)
    (tmp_path / "one.txt").write_text("one file\n")
    for what in ("ds", "one.txt"):
        assert cli("upload", what).returncode == 0
    with server.api() as api:
        rows = {name: api.get(f"/uploads/{name}", params={"list": True}).json()["files"]
                for name in ("ds", "one.txt")}
    server.stop()

    # The bucket as the earlier version left it: each upload under its
    # generation, a stale generation of ds, and a crash's leftover no upload names.
    converted = (to_earlier_layout(store, "ds", rows["ds"], lambda path: ds / path)
                 + to_earlier_layout(store, "one.txt", rows["one.txt"], lambda _path: tmp_path / "one.txt"))
    (tmp_path / "stale.txt").write_text("an earlier version of a.txt\n")
    store.put_file("cast/uploads/ds/0123456789abcdef/a.txt", tmp_path / "stale.txt", "0" * 64)
    store.put_file("cast/uploads/crashed/fedcba9876543210/x.txt", tmp_path / "stale.txt", "0" * 64)
    assert blobs(seaweed, bucket) == set() and len(old_keys(seaweed, bucket)) == len(converted) + 2

    # Its collector's first pass converts (a short grace period for the
    # leftover; not while uploading: the collector would take what an
    # upload sent before its commit).
    server.env["CAST_BLOB_GRACE_SECONDS"] = "1"
    server.start()
    wait_until(lambda: not old_keys(seaweed, bucket), timeout=TIMEOUT, interval=0.2,
               what="the earlier layout converted")
    assert blobs(seaweed, bucket) == {row["sha256"] for named in rows.values() for row in named}
    # The pass logs after its last delete, so the line may trail the bucket.
    wait_until(lambda: "converted the objects of uploads ['ds', 'one.txt']" in server.log_path.read_text(),
               timeout=TIMEOUT, interval=0.1, what="the conversion logged")

    assert cli("ls", "uploads/ds", "--json").json() == [
        {"name": "a.txt", "type": "file", "size": 2}, {"name": "same.txt", "type": "file", "size": 2},
        {"name": "sub/", "type": "dir", "size": len(big)}]
    assert cli("cp", "uploads/ds", "back").returncode == 0
    assert (tmp_path / "back" / "sub" / "big.bin").read_bytes() == big
    assert (tmp_path / "back" / "same.txt").read_text() == "a\n"
    assert cli("cp", "uploads/one.txt", "one-back.txt").returncode == 0
    assert (tmp_path / "one-back.txt").read_text() == "one file\n"
    start_worker(server)
    mounted = cli("run", "-m", "uploads/ds:in", "-m", "uploads/one.txt:one.txt",
                  "sha256sum in/sub/big.bin in/a.txt && cat one.txt")
    assert mounted.returncode == 0, mounted
    assert f"{hashlib.sha256(big).hexdigest()}  in/sub/big.bin" in mounted.stdout.splitlines()
    assert "one file" in mounted.stdout.splitlines()


def test_the_conversion_keeps_what_it_cannot_convert_and_resumes_after_a_crash(local, app, settings, store,
                                                                               seaweed, bucket, tmp_path,
                                                                               monkeypatch):
    files = {"a.txt": b"a\n", "b.txt": b"b\n", "c.txt": b"c\n"}
    upload(local, "ds", files)
    for path, data in files.items():
        (tmp_path / path).write_bytes(data)
    rows = local.user.get("/uploads/ds", params={"list": True}).json()["files"]
    keys = to_earlier_layout(store, "ds", rows, lambda path: tmp_path / path)
    database = app.state.database

    def convert(grace: float = 3600) -> list[str]:
        return upload_layout.convert(database, store=object_store(settings), grace_seconds=grace)

    # b.txt's object lost: the others are copied, but nothing old is deleted.
    store.delete_keys([keys[1]])
    assert convert() == []
    assert sorted(old_keys(seaweed, bucket)) == sorted([keys[0], keys[2]])
    assert blobs(seaweed, bucket) == {rows[0]["sha256"], rows[2]["sha256"]}

    # It comes back; the pass dies after copying, before deleting the old objects.
    store.put_file(keys[1], tmp_path / "b.txt", rows[1]["sha256"])
    monkeypatch.setattr(type(store), "delete_keys", lambda *_args: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        convert()
    monkeypatch.undo()
    assert len(old_keys(seaweed, bucket)) == 3 and len(blobs(seaweed, bucket)) == 3
    assert convert() == ["ds"]
    assert old_keys(seaweed, bucket) == []
    assert {path: read(local, f"/uploads/ds/{path}") for path in files} == files

    # A deleted upload's objects left by the earlier version: kept while young, then deleted.
    upload(local, "gone", {"x.txt": b"x\n"})
    (tmp_path / "x.txt").write_bytes(b"x\n")
    gone = to_earlier_layout(store, "gone", local.user.get("/uploads/gone", params={"list": True}).json()["files"],
                             lambda path: tmp_path / path)
    assert local.user.delete("/uploads/gone").status_code == 200
    assert convert(grace=3600) == [] and old_keys(seaweed, bucket) == gone
    time.sleep(PAST_GRACE)
    assert convert(grace=1) == [] and old_keys(seaweed, bucket) == []
