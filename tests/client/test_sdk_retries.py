"""The SDK against a replica that dies mid-request, as a balancer shows it: a
real server behind a proxy that answers 502 or cuts the connection after the
server carried the request out. Safe requests are repeated; a submit is
repeated with its submit key and makes one run; a POST without a key is not
repeated."""

from __future__ import annotations

import os

import pytest

from cast.client.sdk import ApiError, Client, ConnectionCut
from cast.protocol.messages import RunSpec, new_submit_key
from tests.conftest import ServerProcess, free_port
from tests.realservers.relay import CUT, Relay, Request


class FlakyBalancer(Relay):
    """Plays `script` one step per request ("502": answer 502 without passing
    the request on; "503 after N": a 503 asking for a pause of N seconds,
    "429", "500": those answers alike; "cut": pass it on, then hang up
    without the answer), then passes everything through; `seen`: each
    request's (method, path, step), `times`: when each came."""

    def __init__(self, upstream: str, script: list[str]):
        self.script, self.steps = list(script), []
        super().__init__(upstream, fault=self._step)

    def _step(self, request: Request):
        step = self.script.pop(0) if self.script else "pass"
        self.steps.append(step)
        if step in ("pass", CUT):
            return None if step == "pass" else CUT
        status, _, pause = step.partition(" after ")
        return int(status), ({"Retry-After": pause} if pause else {})

    @property
    def seen(self) -> list[tuple[str, str, str]]:
        return [(request.method, request.path, step) for request, step in zip(self.requests, self.steps)]

    @property
    def times(self) -> list[float]:
        return [request.at for request in self.requests]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each test makes its own runs)."""
    tmp = tmp_path_factory.mktemp("retries")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
    env.update({"CAST_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1"})
    started = ServerProcess(url=f"http://127.0.0.1:{port}", data_dir=tmp / "server", port=port, env=env,
                            log_path=tmp / "server.log").start()
    yield started
    started.stop()


@pytest.fixture
def balancer(server):
    made = []

    def make(script: list[str]) -> Client:
        flaky = FlakyBalancer(server.url, script)
        made.append(flaky)
        return Client(flaky.url, server.admin_token), flaky

    yield make
    for flaky in made:
        flaky.close()


def _runs(server, command: str) -> list[int]:
    with server.api() as api:
        return [run["id"] for run in api.get("/runs", params={"limit": 500}).json()["runs"]
                if run["spec"]["command"] == command]


def test_a_submit_cut_after_the_server_made_the_run_makes_one_run(server, balancer):
    client, flaky = balancer(["cut", "502"])
    run = client.create_run(RunSpec(command="echo once"), queue_anyway=True)
    assert [step for _, _, step in flaky.seen] == ["cut", "502", "pass"]
    assert _runs(server, "echo once") == [run["id"]]


def test_a_read_answered_502_is_repeated(server, balancer):
    client, flaky = balancer(["502", "502"])
    assert client.health()["status"] == "ok"
    assert len(flaky.seen) == 3


def test_a_download_whose_start_is_answered_502_is_repeated(server, balancer):
    run_id = Client(server.url, server.admin_token).create_run(RunSpec(command="echo queued"),
                                                                queue_anyway=True)["id"]
    client, flaky = balancer(["502"])
    with client.download_logs(run_id) as download:
        assert b"".join(download.chunks()).startswith(b"waiting: ")
    assert [step for _, _, step in flaky.seen] == ["502", "pass"]


def test_a_post_without_a_submit_key_is_not_repeated(server, balancer):
    run_id = Client(server.url, server.admin_token).create_run(RunSpec(command="sleep 60"), queue_anyway=True)["id"]
    client, flaky = balancer(["cut"])
    with pytest.raises(ConnectionCut):
        client.stop_run(run_id)
    assert len(flaky.seen) == 1


def test_the_submit_key_answers_the_run_it_made_and_is_checked(server):
    key = new_submit_key()
    with server.api() as api:
        body = {"command": "echo keyed", "queue_anyway": True, "submit_key": key}
        first, again = api.post("/runs", json=body), api.post("/runs", json=body)
        other = api.post("/runs", json={**body, "submit_key": new_submit_key()})
        bad = api.post("/runs", json={**body, "submit_key": "not hex"})
    assert first.status_code == again.status_code == other.status_code == 201
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert bad.status_code == 422 and "submit_key" in bad.json()["detail"]
    assert "submit_key" not in first.json()["spec"]


def test_a_refusal_is_not_repeated(server, balancer):
    client, flaky = balancer([])
    with pytest.raises(ApiError) as refused:
        client.get_run(999999)
    assert refused.value.status == 404 and len(flaky.seen) == 1


def test_a_503_asking_for_a_pause_is_repeated_after_it_and_a_429_is_repeated(server, balancer):
    client, flaky = balancer(["503 after 1", "429"])
    assert client.health()["status"] == "ok"
    assert [step for _, _, step in flaky.seen] == ["503 after 1", "429", "pass"]
    assert flaky.times[1] - flaky.times[0] >= 1.0  # the server's Retry-After, not the first backoff (0.1 s)


def test_another_server_error_is_shown_at_once_not_repeated(server, balancer):
    client, flaky = balancer(["500"])
    with pytest.raises(ApiError) as failed:
        client.health()
    assert failed.value.status == 500 and len(flaky.seen) == 1
