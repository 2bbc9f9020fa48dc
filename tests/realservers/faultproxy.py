"""A TCP proxy on loopback in front of a real server, which fails the first
requests of a kind on purpose (the tests' faults between a client and the
object store).

Each connection's first request head is read: once `passes` requests of
`method` went through, while `faults` is above zero
and the head starts with `method`, the proxy takes the request and fails it
(`answer` None: the connection closed without an answer; else its body
read and that status code answered), counting down; every other connection is passed through byte for byte
(the Host header included, so a URL presigned for the proxy's address is
valid behind it). `seen` counts the heads that started with `method`.
`limit(rate)` slows every byte passed on to about `rate` bytes a second per
connection and direction, so a transfer lasts long enough for a test to act
in its middle (take the server behind away, say).

A context manager: leaving it closes the listener and every connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

HEAD_LIMIT = 64 << 10


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], *, method: str = "PUT"):
        self.upstream, self.method = upstream, method.encode() + b" "
        self.faults, self.answer, self.seen, self.passes = 0, None, 0, 0
        self.rate: float | None = None  # bytes a second each pipe passes on; None: as fast as they come
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, count: int, answer: int | None = None, *, after: int = 0) -> None:
        """Fail `count` requests of `method`, the next but `after`: closed
        unanswered, or answered `answer`."""
        with self._lock:
            self.faults, self.answer, self.passes = count, answer, after

    def limit(self, rate: float | None) -> None:
        """Pass on at most about `rate` bytes a second per connection and direction (None: no limit)."""
        self.rate = rate

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        # A close alone does not wake the accept() blocked in another thread on Linux; a shutdown does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(10)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            with self._lock:
                ours = head.startswith(self.method)
                self.seen += ours
                failing = ours and self.faults > 0 and self.passes == 0
                if failing:
                    self.faults -= 1
                elif ours and self.passes:
                    self.passes -= 1
                answer = self.answer
            if failing:
                if answer is not None:
                    _drain_body(client, head)  # the whole request taken: the client reads the answer
                    client.sendall(f"HTTP/1.1 {answer} Fault\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
                                   "fault here\n".encode())
                return
            upstream = self._track(socket.create_connection(self.upstream, timeout=30))
            upstream.sendall(head)
            back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
            back.start()
            self._pipe(client, upstream)
            back.join(60)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self._sockets.discard(sock)

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        """Copy until `source` ends, then end `target`'s sending side."""
        try:
            while data := source.recv(65536):
                target.sendall(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _drain_body(client: socket.socket, head: bytes) -> None:
    """Read the rest of the request body its Content-Length announces."""
    header, _, body = head.partition(b"\r\n\r\n")
    length = 0
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    left = length - len(body)
    while left > 0 and (data := client.recv(min(65536, left))):
        left -= len(data)
