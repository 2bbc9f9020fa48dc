"""HTTP/1.1 over one socket, as the CLI's SDK speaks it to the control plane
and to an object store's presigned URLs.

Owns: `Connection` (one keep-alive connection: a request's head and body,
bytes or chunks sent chunked, reopened when the server closed it or an
answer was left unread), `Response` (status, reason, headers, and a body
framed by Content-Length, by chunks or by the close, read as a buffered
file: `read`, `read1`, `readline`, lines by iteration) and the errors:
`RemoteDisconnected` (no answer on a connection the server closed; a
ConnectionResetError) and `ProtocolError` (an answer that is not HTTP, or
is cut short).

The standard library's http.client does the same, but importing it imports
`email` and `ssl`, about a tenth of a warm `cast run "true"`; this module
imports only `socket` (and `ssl` for an https:// URL, when it connects).
It follows http.client where the two could differ: the headers it adds
(Host, Accept-Encoding: identity, Content-Length or Transfer-Encoding), a
100 Continue skipped, when a connection is kept open, TCP_NODELAY.
`for_url` opens one for an absolute URL (a presigned one, the health
check) and gives the request target exactly as the URL spells it.
"""

from __future__ import annotations

import io
import socket
from typing import Iterable
from urllib.parse import urlsplit

MAX_LINE = 65536  # bytes of a status, header or chunk-size line, as http.client's
MAX_HEADERS = 100
# Methods whose request carries a body, so an empty one is said (Content-Length: 0).
_METHODS_WITH_BODY = frozenset({"PATCH", "POST", "PUT"})


class ProtocolError(Exception):
    """The answer is not HTTP/1.x as this module reads it, or it was cut short."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection without answering (a stale keep-alive connection, say)."""


def _readline(file, what: str) -> bytes:
    line = file.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError(f"the answer's {what} line is longer than {MAX_LINE} bytes")
    return line


class _Body(io.RawIOBase):
    """A response's body as it comes off the connection: `length` bytes, chunks, or up to the close."""

    def __init__(self, file, *, length: int | None, chunked: bool, on_end):
        super().__init__()
        self._file = file
        self._left = length  # of the body (unchunked) or of the current chunk (chunked: 0 between chunks)
        self._chunked = chunked
        self._on_end = on_end
        self.ended = False
        if chunked:
            self._left = 0
        elif length == 0:
            self._end()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.ended:
            return 0
        if self._chunked and self._left == 0:
            self._left = self._chunk_size()
            if self._left == 0:
                self._skip_trailer()
                self._end()
                return 0
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        data = self._file.read1(want)
        if not data:
            if self._left is None:  # the close ends the body
                self._end()
                return 0
            raise ProtocolError("the answer's body was cut short")
        buffer[:len(data)] = data
        if self._left is not None:
            self._left -= len(data)
            if self._left == 0:
                if self._chunked:
                    _readline(self._file, "chunk end")  # the CRLF after a chunk's data
                else:
                    self._end()
        return len(data)

    def _chunk_size(self) -> int:
        line = _readline(self._file, "chunk size")
        try:
            return int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError(f"the answer's chunk size {line[:40]!r} is not a number") from None

    def _skip_trailer(self) -> None:
        while _readline(self._file, "trailer") not in (b"\r\n", b"\n", b""):
            pass

    def _end(self) -> None:
        self.ended = True
        self._on_end()


class Response(io.BufferedReader):
    """An answer: `status`, `reason`, `getheader`, and its body as a buffered file."""

    def __init__(self, body: _Body, status: int, reason: str, headers: list[tuple[str, str]], on_close):
        super().__init__(body)
        self.status = status
        self.reason = reason
        self.headers = headers
        self._on_close = on_close

    @property
    def complete(self) -> bool:
        """Whether the whole body was read (the connection may then carry another request)."""
        return self.raw.ended

    def getheader(self, name: str, default: str | None = None) -> str | None:
        """The header's value (several joined by ", ", as http.client's), or `default`."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else default

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._on_close(self)


def for_url(url: str, *, timeout: float | None) -> tuple["Connection", str]:
    """A connection to the host of absolute `url`, and the target to request
    there: its path and query unchanged (a presigned URL's signature covers
    them as written)."""
    parts = urlsplit(url)
    connection = Connection(parts.hostname or "", parts.port, https=parts.scheme == "https", timeout=timeout)
    return connection, parts.path + (f"?{parts.query}" if parts.query else "")


class Connection:
    """One connection to `host`:`port` (https when `https`), opened at the
    first request and again after the server closed it; a request starts
    only once the previous answer was read to its end (else the connection
    is opened anew)."""

    def __init__(self, host: str, port: int | None, *, https: bool = False, timeout: float | None = None):
        self.host = host
        self.port = port or (443 if https else 80)
        self.https = https
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._file = None
        self._response: Response | None = None
        self._method = ""
        default_port = self.port == (443 if https else 80)
        named = f"[{host}]" if ":" in host else host
        self._host_header = named if default_port else f"{named}:{self.port}"

    def _connect(self) -> None:
        # A str host goes through the idna codec in getaddrinfo, an import of
        # its own; an ASCII name means the same as bytes.
        address = (self.host.encode("ascii") if self.host.isascii() else self.host, self.port)
        sock = socket.create_connection(address, self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.https:
                import ssl  # only for https: a plain-http control plane needs none

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._sock, self._file = sock, sock.makefile("rb")

    def request(self, method: str, url: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict | None = None, *, encode_chunked: bool = False,
                skip_accept_encoding: bool = False) -> None:
        """Send a request; `body`: bytes, or chunks (sent chunked when
        `encode_chunked`, else as they come under the caller's Content-Length).
        `skip_accept_encoding` sends the headers given and Host alone, as a
        presigned PUT was signed."""
        if not (url.isascii() and url.isprintable()) or " " in url:
            raise ProtocolError(f"the URL {url!r} holds characters a request line cannot")
        given = {name.lower() for name in headers or ()}
        lines = [f"{method} {url} HTTP/1.1"]
        if "host" not in given:
            lines.append(f"Host: {self._host_header}")
        if "accept-encoding" not in given and not skip_accept_encoding:
            lines.append("Accept-Encoding: identity")
        chunked = False
        if "content-length" not in given and "transfer-encoding" not in given:
            if isinstance(body, (bytes, bytearray)):
                lines.append(f"Content-Length: {len(body)}")
            elif body is None:
                if method.upper() in _METHODS_WITH_BODY:
                    lines.append("Content-Length: 0")
            elif encode_chunked:
                lines.append("Transfer-Encoding: chunked")
                chunked = True
        for name, value in (headers or {}).items():
            text = f"{name}: {value}"
            if "\r" in text or "\n" in text:
                raise ProtocolError(f"header {name!r} holds a line break")
            lines.append(text)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._method = method.upper()
        if self._response is not None and not self._response.complete:
            self.close()  # the rest of that answer would be read as this one's
        self._response = None
        if self._sock is None:
            self._connect()
        if isinstance(body, (bytes, bytearray)):
            self._sock.sendall(head + body)
            return
        self._sock.sendall(head)
        for chunk in body or ():
            if chunk:  # an empty chunk would end a chunked body
                self._sock.sendall(b"%X\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            self._sock.sendall(b"0\r\n\r\n")

    def getresponse(self) -> Response:
        """The answer to the request just sent."""
        file = self._file
        while True:
            version, status, reason = self._status_line(file)
            headers = self._headers(file)
            if status != 100:
                break
        keep_alive = self._keeps_alive(version, headers)
        lookup = dict((name.lower(), value) for name, value in headers)
        chunked = lookup.get("transfer-encoding", "").lower() == "chunked"
        length = None
        if not chunked and lookup.get("content-length", "").strip().isdigit():
            length = int(lookup["content-length"])
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            length = 0
        if not chunked and length is None:
            keep_alive = False  # the close ends the body
        body = _Body(file, length=length, chunked=chunked,
                     on_end=(lambda: None) if keep_alive else self._detach)
        response = Response(body, status, reason, headers, self._closed_early)
        self._response = response
        return response

    def _status_line(self, file) -> tuple[str, int, str]:
        line = _readline(file, "status").decode("iso-8859-1")
        if not line:
            raise RemoteDisconnected("the server closed the connection without an answer")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.strip().partition(" ")
        if not version.startswith("HTTP/1.") or not (code.isdigit() and 100 <= int(code) <= 999):
            self.close()
            raise ProtocolError(f"the answer's status line {line[:80]!r} is not HTTP/1.x")
        return version, int(code), reason.strip()

    @staticmethod
    def _headers(file) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while (line := _readline(file, "header")) not in (b"\r\n", b"\n", b""):
            if len(headers) >= MAX_HEADERS:
                raise ProtocolError(f"the answer has more than {MAX_HEADERS} headers")
            name, _, value = line.decode("iso-8859-1").partition(":")
            headers.append((name.strip(), value.strip()))
        return headers

    @staticmethod
    def _keeps_alive(version: str, headers: list[tuple[str, str]]) -> bool:
        """Whether the connection stays open after the answer, by http.client's rule."""
        values = {name.lower(): value.lower() for name, value in headers}
        if version != "HTTP/1.0":
            return "close" not in values.get("connection", "")
        return ("keep-alive" in values or "keep-alive" in values.get("connection", "")
                or "keep-alive" in values.get("proxy-connection", ""))

    def _detach(self) -> None:
        """Forget the socket once its last answer ends: the server closes it."""
        if self._file is not None:
            self._file.close()
            self._sock.close()
        self._sock = self._file = None

    def _closed_early(self, response: Response) -> None:
        if response is self._response and not response.complete:
            self.close()

    def close(self) -> None:
        self._detach()
        self._response = None
