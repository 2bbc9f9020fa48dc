"""A request's streamed body as a blocking file object, for code running in a
worker thread (tar extraction, hashing) while the event loop keeps receiving.
The body is never held whole in memory."""

from __future__ import annotations

import io

import anyio.from_thread
from fastapi import Request

from cast.server.services.storage import CHUNK


class _BodyStream(io.RawIOBase):
    def __init__(self, request: Request):
        self._chunks = request.stream().__aiter__()
        self._pending = b""
        self._ended = False

    def readable(self) -> bool:
        return True

    async def _next_chunk(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    def readinto(self, buffer) -> int:
        while not self._pending and not self._ended:
            chunk = anyio.from_thread.run(self._next_chunk)
            if chunk is None:
                self._ended = True
            else:
                self._pending = chunk
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def body_reader(request: Request) -> io.BufferedReader:
    """Read it only from a thread started with run_in_threadpool."""
    return io.BufferedReader(_BodyStream(request), CHUNK)
