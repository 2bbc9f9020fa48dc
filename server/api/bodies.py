"""A request's streamed body read in a worker thread (tar extraction, hashing,
writing) while the event loop keeps receiving the next pieces: the two overlap,
as hashing and writing release the GIL. Pieces are handed over as they came,
never copied again; at most `AHEAD` bytes wait between the two, so the body is
never held whole in memory."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator

from fastapi import Request

# What the loop may receive ahead of the thread: enough to keep the connection
# busy while the thread hashes and writes a few pieces.
AHEAD = 16 << 20
# What the thread waits for before it wakes: woken for each piece (often 64 KiB
# on loopback) the two threads spent more time handing over than hashing.
BATCH = 1 << 20
_END = object()


class Body:
    """The thread's side: `read1` answers the next received piece (up to `size` bytes of it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pieces: collections.deque = collections.deque()
        self._held = 0  # bytes received and not yet taken by the thread
        self._end: object = None  # _END, or the error the body ended with
        self._room: asyncio.Event | None = None  # set when the loop waits for the thread to take some
        self._loop: asyncio.AbstractEventLoop | None = None
        self._piece = memoryview(b"")

    async def pump(self, request: Request) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                with self._cond:
                    self._pieces.append(chunk)
                    self._held += len(chunk)
                    room = None
                    if self._held >= AHEAD:
                        room = self._room = asyncio.Event()
                    if self._held - len(chunk) < BATCH <= self._held or room is not None:
                        self._cond.notify()
                if room is not None:
                    await room.wait()
        except BaseException as error:  # the client went away, or the route is done with the body
            self._finish(error)
            raise
        self._finish(_END)

    def _finish(self, end: object) -> None:
        with self._cond:
            self._end = end
            self._cond.notify()

    def read1(self, size: int) -> memoryview:
        """Up to `size` (> 0) bytes of the body; empty at its end. Only from a worker thread."""
        if not self._piece:
            with self._cond:
                if not self._pieces:
                    self._cond.wait_for(lambda: self._held >= BATCH or self._room is not None or self._end is not None)
                if not self._pieces:
                    if self._end is _END:
                        return self._piece
                    raise self._end
                item = self._pieces.popleft()
                self._held -= len(item)
                if self._room is not None and self._held < AHEAD // 2:
                    self._loop.call_soon_threadsafe(self._room.set)
                    self._room = None
            self._piece = memoryview(item)
        piece, self._piece = self._piece[:size], self._piece[size:]
        return piece


@contextlib.asynccontextmanager
async def receive_body(request: Request) -> AsyncIterator[Body]:
    """The body being received in the event loop while the block hands it to a
    thread (run_in_threadpool); whatever the thread did not read is dropped at the end."""
    body = Body()
    pump = asyncio.create_task(body.pump(request))
    try:
        yield body
    finally:
        pump.cancel()
        await asyncio.wait([pump])
        if not pump.cancelled():
            pump.exception()  # the thread was handed it already; retrieved, so asyncio does not log it
