"""The issue's scenario 5 against a real S3 store: SeaweedFS SIGKILLed in the
middle of a run's push (some objects stored, others not) and started again
30 s later on the same data and port. The worker keeps retrying, the push
resumes where it stopped, the run completes, and every output's sha256 is
the one the run wrote.

The store is reached through a fault proxy that slows the push to about
PUSH_RATE bytes a second per connection until the store is down, so the
push lasts seconds and the store goes down in its middle however fast this
machine copies."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time

import pytest

from tests.conftest import wait_until

FILES = 120
OUTAGE_SECONDS = 30
PUSH_RATE = 8 << 20


@pytest.fixture
def server(start_server, proxied_s3_env, proxy):
    """The server behind the proxy, which slows the push until the store is down."""
    proxy.limit(PUSH_RATE)
    return start_server(env=proxied_s3_env)


def test_a_push_resumes_after_the_store_was_down_for_30_seconds(cli, worker, server, seaweed, bucket, proxy,
                                                                tmp_path):
    result: dict = {}
    command = (f"mkdir out && for i in $(seq {FILES}); do head -c 1048576 /dev/urandom > out/f$i; done"
               " && (cd out && sha256sum f*) > sums.txt")
    follower = threading.Thread(target=lambda: result.update(run=cli("run", command, timeout=600)))
    follower.start()
    prefix = "cast/runs/1/out/"
    try:
        stored_before = wait_until(lambda: len(seaweed.keys(bucket, prefix)), timeout=300, interval=0.02,
                                   what="the push's first objects")
        seaweed.kill()
        down_at = time.monotonic()
        proxy.limit(None)
        assert stored_before < FILES, "the push ended before the store went down"
        time.sleep(OUTAGE_SECONDS)
    finally:
        if seaweed.process is None:
            seaweed.start()
    follower.join(timeout=600)
    assert time.monotonic() - down_at >= OUTAGE_SECONDS
    run = result["run"]
    assert run.returncode == 0, run

    with server.api() as api:
        manifest = {f["path"]: f["sha256"] for f in api.get("/runs/1/outputs").json()["files"]}
    assert len(manifest) == FILES + 1
    assert cli("cp", "runs/1/sums.txt", "sums.txt").returncode == 0
    written = dict(reversed(line.split()) for line in (tmp_path / "sums.txt").read_text().splitlines())
    assert {f"out/{name}": sha for name, sha in written.items()} == {p: s for p, s in manifest.items()
                                                                     if p.startswith("out/")}
    assert len(seaweed.keys(bucket, prefix)) == FILES
    copied = cli("cp", "runs/1/out", "back")
    assert copied.returncode == 0, copied
    got = subprocess.run(["sha256sum", *sorted(written)], cwd=tmp_path / "back", capture_output=True, text=True)
    assert dict(reversed(line.split()) for line in got.stdout.splitlines()) == written
    assert hashlib.sha256((tmp_path / "back" / "f1").read_bytes()).hexdigest() == written["f1"]
