"""A request's streamed body as a blocking file object, for code running in a
worker thread (tar extraction, hashing) while the event loop keeps receiving.
The body is never held whole in memory."""

from __future__ import annotations

import io

import anyio.from_thread
from fastapi import Request

from cast.server.services.storage import CHUNK


class _BodyStream(io.RawIOBase):
    """Each hop from the reading thread to the event loop fetches as many of
    the server's pieces (a few hundred KiB each) as the read asked for: one hop
    per piece cost more than hashing the piece."""

    def __init__(self, request: Request):
        self._chunks = request.stream().__aiter__()
        self._pending: list[memoryview] = []
        self._ended = False

    def readable(self) -> bool:
        return True

    async def _next_chunks(self, wanted: int) -> list[memoryview]:
        chunks, size = [], 0
        while size < wanted:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            if chunk:
                chunks.append(memoryview(chunk))
                size += len(chunk)
        return chunks

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        if not self._pending and not self._ended:
            self._pending = anyio.from_thread.run(self._next_chunks, len(target))
        count = 0
        while self._pending and count < len(target):
            chunk = self._pending[0]
            taken = min(len(chunk), len(target) - count)
            target[count:count + taken] = chunk[:taken]
            count += taken
            if taken == len(chunk):
                self._pending.pop(0)
            else:
                self._pending[0] = chunk[taken:]
        return count


def body_reader(request: Request) -> io.BufferedReader:
    """Read it only from a thread started with run_in_threadpool."""
    return io.BufferedReader(_BodyStream(request), CHUNK)
