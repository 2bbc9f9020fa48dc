"""cast.server.api.bodies: a streamed request body read in a worker thread while
the event loop receives ahead of it, every byte once and in order, however it
is read, and never more than its bound ahead of the reader."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.concurrency import run_in_threadpool

from cast.server.api import bodies
from cast.server.api.bodies import receive_body
from tests.conftest import wait_until


def _digest_in_pieces(reader, size: int, first: bytes = b"") -> dict:
    digest, total = hashlib.sha256(first), len(first)
    while piece := reader.read1(size):
        digest.update(piece)
        total += len(piece)
    return {"sha256": digest.hexdigest(), "size": total}


@pytest.fixture
def client():
    app = FastAPI()

    @app.put("/body")
    async def put(request: Request, piece: int = 7):
        async with receive_body(request) as body:
            return await run_in_threadpool(_digest_in_pieces, body, piece)

    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("piece", [1, 7, 65_536, 10_000_000])
def test_every_byte_arrives_once_and_in_order(client, piece):
    chunks = [bytes([i % 256]) * (i * 997 % 5000) for i in range(200)]
    body = b"".join(chunks)
    answer = client.put("/body", params={"piece": piece}, content=iter(chunks))
    assert answer.json() == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


def test_an_empty_body_reads_as_empty(client):
    assert client.put("/body", content=b"").json() == {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0}


def test_the_loop_receives_ahead_of_the_reader_up_to_its_bound(monkeypatch):
    monkeypatch.setattr(bodies, "AHEAD", 64 * 1024)
    chunks = [bytes([i]) * 16 * 1024 for i in range(100)]
    received: list[int] = []

    class Request:  # a request whose body arrives in pieces, as uvicorn hands it over
        async def stream(self):
            for chunk in chunks:
                received.append(len(chunk))
                yield chunk

    body = bodies.Body()
    loop = asyncio.new_event_loop()
    pump = threading.Thread(target=loop.run_until_complete, args=(body.pump(Request()),))
    pump.start()
    try:
        first = bytes(body.read1(1))
        wait_until(lambda: sum(received) >= bodies.AHEAD, timeout=60, what="the loop to receive ahead")
        time.sleep(0.2)  # it would go on receiving now, were it not bounded
        assert bodies.AHEAD <= sum(received) <= bodies.AHEAD + 2 * len(chunks[0])
        whole = b"".join(chunks)
        assert _digest_in_pieces(body, 10_000, first=first) == {
            "sha256": hashlib.sha256(whole).hexdigest(), "size": len(whole)}
    finally:
        pump.join(60)
        loop.close()


def test_what_the_reader_leaves_is_dropped_and_the_next_request_is_served():
    app = FastAPI()

    @app.put("/first")
    async def put(request: Request):
        async with receive_body(request) as body:
            return await run_in_threadpool(lambda: len(body.read1(5)))

    with TestClient(app) as short:
        for _ in range(3):
            assert short.put("/first", content=iter([b"0123456789"] * 10_000)).json() == 5
