"""The worker's client to the control plane: how each answer is classified
(retry, conflict, refused for good), the retry loop's bounds, and the requests
against the real server."""

from __future__ import annotations

import hashlib
import io
import tarfile

import httpx
import pytest

from cast.protocol.messages import PERMANENT_HEADER
from cast.protocol.worker_messages import HeldLease, LeaseState
from cast.protocol.status import RunStatus
from cast.worker.client import (Conflict, Refused, ServerClient, ServerUnavailable, _check,
                                with_retries)
from tests.conftest import free_port
from tests.factories import submit


def answer(code: int, detail: str = "why", **headers: str) -> httpx.Response:
    return httpx.Response(code, json={"detail": detail}, headers=headers)


def test_a_success_is_returned_as_it_is():
    response = answer(204)
    assert _check(response) is response


@pytest.mark.parametrize("code", [502, 503, 504, 408, 429])
def test_outages_and_busy_answers_are_retryable_and_never_the_same_error(code):
    with pytest.raises(ServerUnavailable, match=f"server answered {code}: why") as raised:
        _check(answer(code))
    assert raised.value.answer is None


def test_another_5xx_is_retryable_and_carries_its_answer():
    with pytest.raises(ServerUnavailable) as raised:
        _check(answer(500, "database is locked"))
    assert raised.value.answer == (500, "database is locked")


def test_a_5xx_marked_permanent_is_refused():
    with pytest.raises(Refused) as raised:
        _check(answer(507, "disk full", **{PERMANENT_HEADER: "1"}))
    assert (raised.value.status_code, raised.value.detail) == (507, "disk full")


def test_409_is_a_conflict_and_other_4xx_are_refused():
    with pytest.raises(Conflict, match="lease lost"):
        _check(answer(409, "lease lost"))
    with pytest.raises(Refused, match="^422: bad field$"):
        _check(answer(422, "bad field"))


def test_an_answer_that_is_not_json_is_its_text_cut_short():
    with pytest.raises(Refused) as raised:
        _check(httpx.Response(400, text="<html>" + "x" * 1000))
    assert raised.value.detail.startswith("<html>xx") and len(raised.value.detail) == 500


def failing(*errors: Exception, result: str = "done"):
    """A call raising each of `errors` in turn, then returning `result`; counts its calls."""
    pending = list(errors)

    def call():
        call.count += 1
        if pending:
            raise pending.pop(0)
        return result

    call.count = 0
    return call


def test_with_retries_repeats_through_an_outage():
    call = failing(*[ServerUnavailable("down")] * 5)
    assert with_retries(call, max_delay=0.01, max_same_errors=2) == "done"
    assert call.count == 6


def test_the_same_server_error_n_times_in_a_row_is_refused():
    call = failing(*[ServerUnavailable("boom", (500, "no such column"))] * 10)
    with pytest.raises(Refused) as raised:
        with_retries(call, max_delay=0.01, max_same_errors=3)
    assert call.count == 3
    assert raised.value.status_code == 500
    assert raised.value.detail == "no such column (the same answer 3 times in a row)"


def test_an_outage_or_another_error_between_restarts_the_count():
    call = failing(ServerUnavailable("a", (500, "x")), ServerUnavailable("a", (500, "x")),
                   ServerUnavailable("down"), ServerUnavailable("b", (500, "y")),
                   ServerUnavailable("a", (500, "x")), ServerUnavailable("a", (500, "x")))
    assert with_retries(call, max_delay=0.01, max_same_errors=3) == "done"


def test_with_retries_stops_when_told_and_reraises():
    call = failing(*[ServerUnavailable("down")] * 10)
    checks = iter([True, True, False])
    with pytest.raises(ServerUnavailable, match="down"):
        with_retries(call, should_continue=lambda: next(checks), max_delay=0.01)
    assert call.count == 3


def test_conflicts_and_refusals_are_never_retried():
    for error in (Conflict("lost"), Refused(403, "no")):
        call = failing(error)
        with pytest.raises(type(error)):
            with_retries(call, max_delay=0.01)
        assert call.count == 1


def test_an_unreachable_server_is_unavailable(tmp_path):
    client = ServerClient(f"http://127.0.0.1:{free_port()}", "token")
    try:
        with pytest.raises(ServerUnavailable, match="cannot reach the server"):
            client.register(name="w", executor="local", cpus=1, memory=1 << 30, gpus=[], max_runs=1, sandboxed=True)
        with pytest.raises(ServerUnavailable, match="cannot reach the server"):
            client.download_code("0" * 64, tmp_path / "bundle")
    finally:
        client.close()


def test_requests_against_the_real_server(server, tmp_path):
    client = ServerClient(server.url + "/", server.worker_token)
    stranger = ServerClient(server.url, "not-a-token")
    try:
        registered = client.register(name="w", executor="local", cpus=2, memory=1 << 30, gpus=[],
                                     max_runs=1, sandboxed=True)
        assert client.lease(registered["id"], free_gpus=0, wait=0) is None  # 204: nothing queued

        with server.api() as api:
            run_id = submit(api, "true")
        lease = client.lease(registered["id"], free_gpus=0, wait=0)
        assert lease is not None and lease.run_id == run_id and lease.spec.command == "true"
        beat = client.heartbeat(registered["id"], [HeldLease(run_id, lease.lease_token), HeldLease(run_id, "not-the-lease")])
        assert beat.lease_expires_at is not None
        assert beat.leases == [LeaseState(run_id, lost=False, status=RunStatus.BUILDING), LeaseState(run_id, lost=True)]
        assert client.heartbeat("w-another", [HeldLease(run_id, lease.lease_token)]).leases[0].lost

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(tarfile.TarInfo("empty.py"), io.BytesIO(b""))
        bundle = buffer.getvalue()
        digest = hashlib.sha256(bundle).hexdigest()
        with server.api() as api:
            assert api.put(f"/code/{digest}", content=bundle).status_code in (200, 201)
        client.download_code(digest, tmp_path / "fetched")
        assert (tmp_path / "fetched").read_bytes() == bundle
        with pytest.raises(Refused) as missing:
            client.download_code(hashlib.sha256(b"absent").hexdigest(), tmp_path / "bundle")
        assert missing.value.status_code == 404 and not (tmp_path / "bundle").exists()
        with pytest.raises(Refused) as refused:
            stranger.lease(registered["id"], free_gpus=0, wait=0)
        assert refused.value.status_code == 401
    finally:
        client.close()
        stranger.close()
