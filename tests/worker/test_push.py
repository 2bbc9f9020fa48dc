"""An output push over HTTP against the real control plane: the worker's tar
(bytes and file spans sent with sendfile, or through httpx behind a proxy)
arrives whole and hashed by the server, many small files and empty folders
included; a hostile tar is refused by name with nothing stored, an answer
given mid-body included; a push cut mid-stream leaves nothing behind and the
next try stores it all."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from cast.worker import outputs
from cast.worker.client import FileSpan, Refused, ServerClient, ServerUnavailable
from cast.worker.outputs import Outputs
from tests.conftest import wait_until
from tests.factories import submit
from tests.reliability.helpers import CuttableProxy
from tests.server.conftest import tar_member

BIG = 12 << 20


@pytest.fixture
def leased(start_server):
    """`leased(env=...)`: a server (started with `env`), a client through `via`
    (a URL in front of it) and a run leased to that client."""
    clients: list[ServerClient] = []

    def make(*, env: dict | None = None, via=lambda server: server.url):
        server = start_server(env=env)
        client = ServerClient(via(server), server.worker_token, max_same_errors=2)
        clients.append(client)
        worker = client.register(name="pusher", executor="local", cpus=1, memory=1 << 30, gpus=[], max_runs=1,
                                 sandboxed=True)
        with server.api() as api:
            run_id = submit(api, "true")
        lease = client.lease(worker["id"], free_gpus=0, wait=0)
        assert lease is not None and lease.run_id == run_id
        return server, client, lease

    yield make
    for client in clients:
        client.close()


def _outputs(root: Path) -> tuple[Outputs, dict[str, bytes]]:
    """A run's working dir holding every kind of output: folders left empty, an
    empty file, hundreds of small files, files either side of SMALL_FILE, a big one."""
    before = outputs.snapshot(root)
    made = {"empty.txt": b"", "model.bin": os.urandom(BIG), "edge/at.bin": os.urandom(outputs.SMALL_FILE),
            "edge/past.bin": os.urandom(outputs.SMALL_FILE + 1),
            **{f"many/{i:03d}.txt": f"line {i}\n".encode() * i for i in range(400)}}
    for path, data in made.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "empty" / "nested").mkdir(parents=True)
    lines: list[str] = []
    found = Outputs.collect(root, before, [], lines.append)
    assert lines == []
    return found, made


def _stored(server, run_id: int) -> Path:
    return server.data_dir / "runs" / str(run_id)


def _assert_stored(server, run_id: int, made: dict[str, bytes]) -> None:
    with server.api() as api:
        files = api.get(f"/runs/{run_id}/outputs").json()["files"]
    assert {f["path"]: (f["size"], f["sha256"]) for f in files} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in made.items()}
    stored = _stored(server, run_id)
    assert all((stored / path).read_bytes() == data for path, data in made.items())
    assert (stored / "empty" / "nested").is_dir() and not any((stored / "empty" / "nested").iterdir())
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_an_output_of_folders_and_small_and_big_files_arrives_whole_and_hashed(leased, tmp_path):
    server, client, lease = leased()
    found, made = _outputs(tmp_path)
    pieces = list(found.tar())
    spans = [piece.size for piece in pieces if isinstance(piece, FileSpan)]
    assert sorted(spans) == [outputs.SMALL_FILE + 1, BIG]  # only files past SMALL_FILE go from the file
    answer = client.push_outputs(lease.run_id, lease.lease_token, found.tar())
    assert answer == {"files": len(made), "size": sum(map(len, made.values()))}
    _assert_stored(server, lease.run_id, made)


def test_behind_a_proxy_httpx_sends_the_same_tar(leased, tmp_path, monkeypatch):
    proxies: list[CuttableProxy] = []

    def through_proxy(server) -> str:
        # A TCP relay named as the HTTP proxy: httpx sends it the absolute URL, uvicorn answers it.
        proxies.append(CuttableProxy(server.port))
        monkeypatch.setenv("HTTP_PROXY", proxies[0].url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        return server.url

    try:
        server, client, lease = leased(via=through_proxy)
        found, made = _outputs(tmp_path)
        assert not client._bulk_sendable()
        assert client.push_outputs(lease.run_id, lease.lease_token, found.tar())["files"] == len(made)
        _assert_stored(server, lease.run_id, made)
    finally:
        for proxy in proxies:
            proxy.close()


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


@pytest.mark.parametrize("member, message", [
    (tar_member("/etc/evil"), "must be relative"),
    (tar_member("../evil"), "'..'"),
    (tar_member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), "not a regular file or folder"),
    (tar_member("device", tarfile.CHRTYPE, devmajor=1, devminor=3), "not a regular file or folder"),
    (tar_member("bad\x01name"), "cannot be stored"),
])
def test_a_hostile_member_is_refused_by_name_and_nothing_is_stored(leased, tmp_path, member, message):
    server, client, lease = leased()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG))
    with open(big, "rb") as handle:
        # The refusal comes while the rest of the body is still being sent.
        body = [_tar((member, b"x")), FileSpan(handle, BIG)]
        with pytest.raises(Refused, match=message) as refused:
            client.push_outputs(lease.run_id, lease.lease_token, body)
    assert refused.value.status_code == 400
    assert not _stored(server, lease.run_id).exists()
    wait_until(lambda: list((server.data_dir / "tmp").iterdir()) == [], what="the received part removed")


def test_an_output_over_the_servers_cap_is_refused_as_it_passes_it(leased, tmp_path):
    server, client, lease = leased(env={"CAST_MAX_OUTPUT_BYTES": str(1 << 20)})
    found, _ = _outputs(tmp_path)
    with pytest.raises(Refused, match="exceeds the limit of 1048576 bytes") as refused:
        client.push_outputs(lease.run_id, lease.lease_token, found.tar())
    assert refused.value.status_code == 413 and not _stored(server, lease.run_id).exists()
    wait_until(lambda: list((server.data_dir / "tmp").iterdir()) == [], what="the received part removed")


def test_a_push_cut_mid_stream_leaves_nothing_and_the_next_try_stores_it_all(leased, tmp_path):
    proxies: list[CuttableProxy] = []

    def through_proxy(server) -> str:
        proxies.append(CuttableProxy(server.port))
        return proxies[0].url

    try:
        server, client, lease = leased(via=through_proxy)
        proxy = proxies[0]
        found, made = _outputs(tmp_path)
        proxy.stall_uploads(BIG // 2)
        failed: list[BaseException] = []

        def push() -> None:
            try:
                client.push_outputs(lease.run_id, lease.lease_token, found.tar())
            except BaseException as error:  # noqa: BLE001 - the test asserts what it was
                failed.append(error)

        pusher = threading.Thread(target=push)
        pusher.start()
        received = server.data_dir / "tmp"
        wait_until(lambda: any(p.stat().st_size for p in received.rglob("model.bin")), timeout=120,
                   what="the server writing the big file")
        assert proxy.cut(abort=True) >= 1  # the push (and the idle pooled connection of the other calls)
        proxy.resume()
        pusher.join(120)
        assert not pusher.is_alive() and len(failed) == 1 and isinstance(failed[0], ServerUnavailable), failed
        wait_until(lambda: list(received.iterdir()) == [], what="the half-received push removed")
        assert not _stored(server, lease.run_id).exists()

        assert client.push_outputs(lease.run_id, lease.lease_token, found.tar())["files"] == len(made)
        _assert_stored(server, lease.run_id, made)
    finally:
        for proxy in proxies:
            proxy.close()
