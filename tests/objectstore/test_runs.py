"""Outputs and uploads in a real S3 store (SeaweedFS) through a real server,
worker and CLI: a run's outputs go straight to the store and come back by
`cast cp` (a file by presigned URL, a folder as a tar), a later run mounts
them, an upload mounted by two runs on one worker is fetched once (its
objects are gone from the store before the second run), and `cast rm`
removes the objects; a run's code bundle is kept in the store and
fetched from there; `cast cache prune` empties the worker's cache."""

from __future__ import annotations

import hashlib
import os
import subprocess

from tests.factories import get_run


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sums(stdout: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[0] for line in stdout.splitlines() if len(line.split()) == 2
            and len(line.split()[0]) == 64}


def test_outputs_go_to_the_store_and_come_back(cli, worker, server, seaweed, bucket, tmp_path):
    run = cli("run", "mkdir -p out/sub && head -c 300000 /dev/urandom > out/sub/blob.bin && echo hi > out/a.txt"
                     " && sha256sum out/sub/blob.bin out/a.txt")
    assert run.returncode == 0, run
    written = _sums(run.stdout)
    assert set(written) == {"out/sub/blob.bin", "out/a.txt"}

    assert sorted(seaweed.keys(bucket)) == ["cast/runs/1/out/a.txt", "cast/runs/1/out/sub/blob.bin"]
    assert not (server.data_dir / "runs" / "1").exists()  # nothing passed through the server's disk
    status = cli("status", "--json")
    assert status.returncode == 0, status
    assert status.json()["server"]["storage"] == f"s3://{bucket}/cast"  # named, no credential
    assert get_run(server, 1)["status"] == "complete"

    listing = cli("ls", "runs/1/out/sub", "--json").json()
    assert listing == [{"name": "blob.bin", "type": "file", "size": 300000}]

    assert cli("cp", "runs/1/out/sub/blob.bin", "blob.bin").returncode == 0
    assert _sha((tmp_path / "blob.bin").read_bytes()) == written["out/sub/blob.bin"]
    # The file itself is a redirect to the store; no token goes with it.
    with server.api() as api:
        answer = api.get("/runs/1/outputs/out/a.txt", follow_redirects=False)
        assert answer.status_code == 307
        assert answer.headers["location"].startswith(seaweed.endpoint + f"/{bucket}/cast/runs/1/out/a.txt?")

    copied = cli("cp", "runs/1/out", "back")
    assert copied.returncode == 0, copied
    assert _sha((tmp_path / "back" / "sub" / "blob.bin").read_bytes()) == written["out/sub/blob.bin"]
    assert (tmp_path / "back" / "a.txt").read_text() == "hi\n"

    mounted = cli("run", "-m", "runs/1/out:in", "sha256sum in/sub/blob.bin in/a.txt")
    assert mounted.returncode == 0, mounted
    assert _sums(mounted.stdout) == {"in/sub/blob.bin": written["out/sub/blob.bin"], "in/a.txt": written["out/a.txt"]}

    removed = cli("rm", "runs/1")
    assert removed.returncode == 0, removed
    assert seaweed.keys(bucket, "cast/runs/1/") == []
    assert cli("du", "--json").json()[0]["runs_size"] == 0


def test_an_upload_mounted_twice_on_one_worker_is_fetched_once(cli, worker, server, seaweed, bucket, tmp_path):
    data = tmp_path / "ds"
    (data / "nested").mkdir(parents=True)
    blob = os.urandom(100_000)
    (data / "nested" / "b.bin").write_bytes(blob)
    (data / "a.txt").write_text("alpha\n")
    uploaded = cli("upload", "ds")
    assert uploaded.returncode == 0, uploaded
    keys = seaweed.keys(bucket, "cast/blobs/")
    assert sorted(keys) == sorted(f"cast/blobs/1/{_sha(data)}" for data in (blob, b"alpha\n"))

    first = cli("run", "-m", "uploads/ds", "sha256sum ds/nested/b.bin; cat ds/a.txt")
    assert first.returncode == 0, first
    assert _sums(first.stdout) == {"ds/nested/b.bin": _sha(blob)}

    # Behind the server's back: the store no longer holds the bytes, so the
    # second run can only have them from the worker's cache.
    seaweed._client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    second = cli("run", "-m", "uploads/ds:again", "sha256sum again/nested/b.bin; cat again/a.txt; "
                                                   "touch again/new 2>/dev/null && echo writable || echo read-only")
    assert second.returncode == 0, second
    assert _sums(second.stdout) == {"again/nested/b.bin": _sha(blob)}
    assert "alpha" in second.stdout and "read-only" in second.stdout
    cached = list((worker.work_dir / "mounts" / "objects" / "sha256").glob("*/*"))
    assert sorted(p.name for p in cached) == sorted([_sha(blob), _sha(b"alpha\n")])

    pruned = cli("cache", "prune", "--all", "--work-dir", str(worker.work_dir), "--executor", "local")
    assert pruned.returncode == 0, pruned
    assert "removed 1 cached mount of the object store, 97.7 KB freed" in pruned.stdout.splitlines()
    assert list((worker.work_dir / "mounts" / "objects" / "sha256").glob("*/*")) == []

    removed = cli("rm", "uploads/ds")
    assert removed.returncode == 0, removed
    assert seaweed.keys(bucket, "cast/blobs/") == []


def test_a_code_bundle_goes_to_the_store_and_the_worker_fetches_it_from_there(cli, worker, server, seaweed, bucket,
                                                                              tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "train.py").write_text("print('committed')\n")
    subprocess.run(["git", "-C", str(repo), "add", "train.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "c"], check=True)
    (repo / "train.py").write_text("print('uncommitted change')\n")

    run = cli("run", "python3 train.py", cwd=repo)
    assert run.returncode == 0, run
    assert "uncommitted change" in run.stdout.splitlines()
    digest = get_run(server, 1)["spec"]["code_digest"]
    assert seaweed.keys(bucket, "cast/code/") == [f"cast/code/{digest}.tar"]
    assert list((server.data_dir / "code").glob("*")) == []
