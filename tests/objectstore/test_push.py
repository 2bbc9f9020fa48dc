"""The output push to a real S3 store (SeaweedFS) as a hostile or unlucky
worker makes it, over the real server's HTTP API: a lease for one run never
signs another run's keys, a presigned URL cannot be bent to another key or
another sha256, a commit of objects not stored whole is refused and nothing
becomes visible, and a multipart upload cut off after its first part resumes
with only the missing part."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.factories import submit

SHA_HEADER = "x-amz-meta-sha256"


@pytest.fixture
def leased(server):
    """Runs 1 and 2, with run 1 leased to a worker this test plays."""
    worker = httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {server.worker_token}"})
    registered = worker.post("/workers", json={"name": "hostile", "executor": "local", "cpus": 2,
                                               "memory": 8 << 30, "sandboxed": True})
    assert registered.status_code == 200, registered.text
    first, second = submit(server, "true"), submit(server, "true")
    lease = worker.post(f"/workers/{registered.json()['id']}/lease", json={"wait": 5})
    assert lease.status_code == 200, lease.text
    assert lease.json()["run_id"] == first and lease.json()["object_store"] is True
    try:
        yield worker, first, second, lease.json()["lease_token"]
    finally:
        worker.close()


def _entry(path: str, data: bytes) -> dict:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_lease_signs_only_its_own_runs_keys(leased, server, seaweed, bucket):
    worker, first, second, token = leased
    data = b"mine\n"
    manifest = {"lease_token": token, "files": [_entry("a.txt", data)]}

    assert worker.post(f"/runs/{second}/outputs/plan", json=manifest).status_code == 409  # not its lease
    for bad in ("../2/a.txt", "/etc/passwd", "a/../../b", "x\x01y"):
        refused = worker.post(f"/runs/{first}/outputs/plan", json={**manifest, "files": [_entry(bad, data)]})
        assert refused.status_code == 400, (bad, refused.text)

    plan = worker.post(f"/runs/{first}/outputs/plan", json=manifest)
    assert plan.status_code == 200, plan.text
    [upload] = plan.json()["uploads"]
    assert f"/{bucket}/cast/runs/{first}/a.txt?" in upload["url"]

    bent = upload["url"].replace(f"/runs/{first}/", f"/runs/{second}/")
    assert httpx.put(bent, content=data, headers={SHA_HEADER: _entry("", data)["sha256"]}).status_code == 403
    other_sha = hashlib.sha256(b"other").hexdigest()
    assert httpx.put(upload["url"], content=b"other", headers={SHA_HEADER: other_sha}).status_code == 403
    assert seaweed.keys(bucket) == []

    for bad in ("../up", "/abs", "a/./b"):
        refused = worker.post(f"/runs/{first}/outputs/commit", json={**manifest, "folders": [bad]})
        assert refused.status_code == 400 and "folder" in refused.json()["detail"], (bad, refused.text)

    # Committed before the bytes are there: refused, and nothing is visible.
    early = worker.post(f"/runs/{first}/outputs/commit", json=manifest)
    assert early.status_code == 400 and "not in the object store whole" in early.json()["detail"]
    with server.api() as api:
        assert api.get(f"/runs/{first}/outputs").json()["files"] == []

    # The wrong bytes under the right signature: the size check refuses them.
    assert httpx.put(upload["url"], content=b"minE\n!", headers={SHA_HEADER: _entry("", data)["sha256"]}).status_code == 200
    assert worker.post(f"/runs/{first}/outputs/commit", json=manifest).status_code == 400

    assert httpx.put(upload["url"], content=data, headers={SHA_HEADER: _entry("", data)["sha256"]}).status_code == 200
    committed = worker.post(f"/runs/{first}/outputs/commit", json=manifest)
    assert committed.status_code == 200 and committed.json() == {"files": 1, "size": len(data)}
    with server.api() as api:
        assert api.get(f"/runs/{first}/outputs").json()["files"] == [_entry("a.txt", data)]
    assert seaweed.keys(bucket) == [f"cast/runs/{first}/a.txt"]


def test_a_multipart_push_cut_off_resumes_with_the_missing_parts(leased, server, seaweed, bucket):
    worker, first, _second, token = leased
    data = os.urandom((64 << 20) + 4096)
    small = b"small\n"
    manifest = {"lease_token": token, "files": [_entry("big.bin", data), _entry("small.txt", small)]}

    plan = worker.post(f"/runs/{first}/outputs/plan", json=manifest).json()["uploads"]
    big = next(u for u in plan if u["path"] == "big.bin")
    assert [p["number"] for p in big["parts"]] == [1, 2] and big["part_size"] == 64 << 20
    assert httpx.put(big["parts"][0]["url"], content=data[:64 << 20], timeout=120).status_code == 200
    put = next(u for u in plan if u["path"] == "small.txt")
    assert httpx.put(put["url"], content=small, headers={SHA_HEADER: _entry("", small)["sha256"]}).status_code == 200
    # The worker died here. Its retry is told only what is missing.
    again = worker.post(f"/runs/{first}/outputs/plan", json=manifest).json()["uploads"]
    assert [(u["path"], [p["number"] for p in u["parts"]]) for u in again] == [("big.bin", [2])]
    assert httpx.put(again[0]["parts"][0]["url"], content=data[64 << 20:], timeout=120).status_code == 200

    committed = worker.post(f"/runs/{first}/outputs/commit", json=manifest)
    assert committed.status_code == 200, committed.text
    with server.api() as api:
        fetched = api.get(f"/runs/{first}/outputs/big.bin", follow_redirects=True, timeout=120)
    assert hashlib.sha256(fetched.content).hexdigest() == _entry("", data)["sha256"]
