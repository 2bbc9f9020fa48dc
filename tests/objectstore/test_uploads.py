"""`cast upload` straight to a real S3 store (SeaweedFS): the bytes go to the
store by presigned URL and never through the server, contents the user's
uploads hold already are not sent again, an upload killed mid-way resumes
with what is missing, a commit of objects not stored whole is refused, and
the objects go when nothing names them any more (`--replace`, `cast rm`,
`cast prune`). The worker's cache keeps within its bound, least recently used
first, never evicting what a live run mounted."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import httpx

from tests.conftest import wait_until


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blobs(seaweed, bucket) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in seaweed.keys(bucket, "cast/blobs/")}


def test_an_upload_goes_straight_to_the_store_and_is_sent_once(cli, server, seaweed, bucket, tmp_path):
    one, two = os.urandom(200_000), b"two\n"
    data = tmp_path / "ds"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "one.bin").write_bytes(one)
    (data / "two.txt").write_bytes(two)
    (data / "copy.txt").write_bytes(two)  # the same content is one object

    first = cli("upload", "ds")
    assert first.returncode == 0, first
    assert first.stdout == "Uploaded uploads/ds (195 KB, 3 files)\n"
    assert "already in the object store" not in first.stderr
    assert _blobs(seaweed, bucket) == {_sha(one), _sha(two)}
    assert not (server.data_dir / "uploads" / "ds").exists()  # nothing passed through the server's disk
    assert sorted(cli("ls", "uploads/ds", "--json").json(), key=lambda e: e["name"]) == [
        {"name": "copy.txt", "type": "file", "size": 4}, {"name": "sub/", "type": "dir", "size": 200_000},
        {"name": "two.txt", "type": "file", "size": 4}]
    assert cli("cp", "uploads/ds/sub/one.bin", "back.bin").returncode == 0
    assert (tmp_path / "back.bin").read_bytes() == one

    # The same files under another name: nothing is sent.
    again = cli("upload", "ds", "-n", "ds2")
    assert again.returncode == 0, again
    assert "cast: 195 KB already in the object store; sending 0 B" in again.stderr.splitlines()

    # A file upload, and names and limits as with the filesystem store.
    (tmp_path / "single.txt").write_bytes(b"single\n")
    assert cli("upload", "single.txt").returncode == 0
    assert cli("cp", "uploads/single.txt", "single-back.txt").returncode == 0
    assert (tmp_path / "single-back.txt").read_bytes() == b"single\n"
    taken = cli("upload", "single.txt")
    assert taken.returncode == 1 and "uploads/single.txt already exists" in taken.stderr

    # --replace: the replaced content goes only once no upload names it.
    (data / "sub" / "one.bin").write_bytes(b"new\n")
    replaced = cli("upload", "ds", "--replace")
    assert replaced.returncode == 0, replaced
    assert _blobs(seaweed, bucket) == {_sha(one), _sha(two), _sha(b"new\n"), _sha(b"single\n")}  # ds2 names one
    assert cli("rm", "uploads/ds2").returncode == 0
    assert _blobs(seaweed, bucket) == {_sha(two), _sha(b"new\n"), _sha(b"single\n")}
    assert cli("rm", "uploads/ds", "uploads/single.txt").returncode == 0
    assert _blobs(seaweed, bucket) == set()


def test_a_killed_upload_resumes_with_what_is_missing(cli, server, seaweed, bucket, base_env, tmp_path):
    part = 64 << 20
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        for _ in range(3):
            out.write(os.urandom(part))
        out.write(b"tail")
    store = seaweed._client()
    env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token}
    upload = subprocess.Popen(["cast", "upload", str(big)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def a_part_is_stored() -> bool:
        for pending in store.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            if store.list_parts(Bucket=bucket, Key=pending["Key"], UploadId=pending["UploadId"]).get("Parts"):
                return True
        return False

    try:
        wait_until(a_part_is_stored, timeout=120, interval=0.05)
        upload.send_signal(signal.SIGKILL)
    finally:
        upload.wait(timeout=30)
    assert cli("ls", "uploads", "--json").json() == []  # nothing visible before the commit

    resumed = cli("upload", str(big), timeout=300)
    assert resumed.returncode == 0, resumed
    stored = next(line for line in resumed.stderr.splitlines() if "already in the object store" in line)
    already = float(stored.split()[1])
    assert 64 <= already < 192 and stored.split()[2] == "MB", stored  # whole parts kept, the rest sent
    digest = hashlib.sha256()
    with open(big, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    with server.api() as api:
        assert api.get("/uploads/big.bin", params={"list": 1}).json()["files"] == [
            {"path": "big.bin", "size": 3 * part + 4, "sha256": digest.hexdigest()}]
    assert _blobs(seaweed, bucket) == {digest.hexdigest()}


def test_a_commit_of_objects_not_stored_whole_is_refused(server, seaweed, bucket):
    data = b"payload\n"
    entry = {"path": "p.txt", "size": len(data), "sha256": _sha(data)}
    manifest = {"kind": "file", "files": [entry]}
    with server.api() as api:
        plan = api.post("/uploads/p.txt/plan", json=manifest)
        assert plan.status_code == 200, plan.text
        [put] = plan.json()["uploads"]
        early = api.post("/uploads/p.txt/commit", json=manifest)
        assert early.status_code == 400 and "not in the object store whole" in early.json()["detail"]
        # Bytes of another size under the signed sha256: the commit's HEAD refuses them.
        assert httpx.put(put["url"], content=b"short", headers={"x-amz-meta-sha256": _sha(data)}).status_code == 200
        assert api.post("/uploads/p.txt/commit", json=manifest).status_code == 400
        assert api.get("/uploads/p.txt", params={"list": 1}).status_code == 404
        # A sha256 the plan never signed cannot be committed either.
        other = {"kind": "file", "files": [{**entry, "sha256": _sha(b"someone else's\n")}]}
        assert api.post("/uploads/p.txt/commit", json=other).status_code == 400
        bad = api.post("/uploads/p.txt/plan", json={"kind": "file", "files": [{**entry, "path": "other"}]})
        assert bad.status_code == 400 and "named as the upload" in bad.json()["detail"]

        assert httpx.put(put["url"], content=data, headers={"x-amz-meta-sha256": _sha(data)}).status_code == 200
        committed = api.post("/uploads/p.txt/commit", json=manifest)
        assert committed.status_code == 201, committed.text
        assert committed.json()["size"] == len(data)


def test_prune_removes_the_outputs_objects(cli, worker, server, seaweed, bucket):
    run = cli("run", "echo kept > a.txt")
    assert run.returncode == 0, run
    assert seaweed.keys(bucket, "cast/runs/1/") == ["cast/runs/1/a.txt"]
    time.sleep(1.5)
    pruned = cli("prune", "--older-than", "1s")
    assert pruned.returncode == 0, pruned
    assert seaweed.keys(bucket, "cast/runs/") == []


def test_the_worker_cache_keeps_its_bound_but_never_evicts_a_live_runs_mounts(cli, server, start_worker, seaweed,
                                                                             bucket, tmp_path):
    worker = start_worker(server, env={"CAST_WORKER_CACHE_BYTES": "150000"})
    contents = {}
    for name in ("a", "b", "c"):
        contents[name] = os.urandom(100_000)
        (tmp_path / name).write_bytes(contents[name])
        assert cli("upload", name).returncode == 0
    cached = worker.work_dir / "mounts" / "objects" / "sha256"

    # Both mounts of one run stay, over the bound, while it runs.
    both = cli("run", "-m", "uploads/a", "-m", "uploads/b", "sha256sum a b")
    assert both.returncode == 0, both
    assert f"{_sha(contents['a'])}  a" in both.stdout and f"{_sha(contents['b'])}  b" in both.stdout
    assert {p.name for p in cached.glob("*/*")} == {_sha(contents["a"]), _sha(contents["b"])}

    # The next mount evicts what no live run holds, longest unused first.
    third = cli("run", "-m", "uploads/c", "sha256sum c")
    assert third.returncode == 0, third
    assert f"{_sha(contents['c'])}  c" in third.stdout
    assert {p.name for p in cached.glob("*/*")} == {_sha(contents["c"])}
