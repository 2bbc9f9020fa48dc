"""cast.server.api.bodies: a streamed request body read as a blocking file in
a worker thread, every byte once and in order, however it is read."""

from __future__ import annotations

import hashlib

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.concurrency import run_in_threadpool

from cast.server.api.bodies import body_reader


def _digest_in_pieces(reader, size: int) -> dict:
    digest, total = hashlib.sha256(), 0
    while piece := reader.read(size):
        digest.update(piece)
        total += len(piece)
    return {"sha256": digest.hexdigest(), "size": total}


@pytest.fixture
def client():
    app = FastAPI()

    @app.put("/body")
    async def put(request: Request, piece: int = 7):
        return await run_in_threadpool(_digest_in_pieces, body_reader(request), piece)

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
