"""The SDK's HTTP/1.1 client against a scripted server on a socket: what it
sends (head, Content-Length, chunks), how it reads each framing of an answer,
when a connection is kept and when it is opened anew, and its errors."""

from __future__ import annotations

import socket
import threading

import pytest

from cast.client.transport import Connection, ProtocolError, RemoteDisconnected, for_url


class Scripted:
    """A server on 127.0.0.1 that answers the requests of each connection it
    accepts with the next answers of `script` (a list per connection, bytes
    each), then closes it; `received`: the bytes each connection got."""

    def __init__(self, script: list[list[bytes]]):
        self.script = script
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answers in self.script:
            conn, _ = self.listener.accept()
            with conn:
                got = b""
                for answer in answers:
                    got += self._request(conn, got)
                    conn.sendall(answer)
                self.received.append(got)
        self.listener.close()

    @staticmethod
    def _request(conn: socket.socket, before: bytes) -> bytes:
        """One request's bytes: its head, then its body by Content-Length or up to the last chunk."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        if b"transfer-encoding: chunked" in head:
            while not data.endswith(b"0\r\n\r\n"):
                data += conn.recv(65536)
        elif b"content-length: " in head:
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(data) < len(head) + 4 + length:
                data += conn.recv(65536)
        return data


def ok(body: bytes, *headers: str) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + "".join(f"{h}\r\n" for h in headers).encode() + \
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_kept_connection_carries_requests_and_their_bodies():
    server = Scripted([[ok(b"one", "X-Tag: a", "x-tag: b"), ok(b"two"), ok(b"")]])
    conn = Connection("127.0.0.1", server.port, timeout=5)
    conn.request("POST", "/api/v1/runs", body=b'{"a": 1}', headers={"Authorization": "Bearer t"})
    first = conn.getresponse()
    assert (first.status, first.reason, first.read()) == (200, "OK", b"one")
    assert first.getheader("x-tag") == "a, b" and first.getheader("missing", "no") == "no"
    conn.request("PUT", "/code/k", body=iter([b"ab", b"", b"cde"]), encode_chunked=True)
    assert conn.getresponse().read() == b"two"
    conn.request("POST", "/runs/1/stop")
    assert conn.getresponse().read() == b""
    conn.close()
    server.thread.join(5)
    sent = server.received[0]
    assert sent.startswith(b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port)
    assert b"Accept-Encoding: identity\r\nContent-Length: 8\r\nAuthorization: Bearer t\r\n\r\n{\"a\": 1}" in sent
    assert b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n" in sent  # no empty chunk
    assert b"POST /runs/1/stop HTTP/1.1\r\n" in sent and sent.endswith(b"Content-Length: 0\r\n\r\n")


def test_a_chunked_answer_is_read_by_lines_and_by_pieces():
    body = b"5\r\n{\"a\":\r\n4\r\n1}\n{\r\n7;ext=1\r\n\"b\":2}\n\r\n0\r\nTrailer: x\r\n\r\n"
    head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = Scripted([[head + body, head + body]])
    conn = Connection("localhost", server.port, timeout=5)
    conn.request("GET", "/follow")
    assert list(conn.getresponse()) == [b'{"a":1}\n', b'{"b":2}\n']
    conn.request("GET", "/follow")
    response = conn.getresponse()
    pieces = []
    while piece := response.read1(3):
        pieces.append(piece)
    assert b"".join(pieces) == b'{"a":1}\n{"b":2}\n' and max(map(len, pieces)) <= 3
    assert response.complete


def test_an_answer_without_length_ends_with_the_close_and_the_next_request_reconnects():
    server = Scripted([[b"HTTP/1.0 200 OK\r\n\r\nto the end"], [ok(b"again", "Connection: close")], [ok(b"x")]])
    conn = Connection("127.0.0.1", server.port, timeout=5)
    for expected in (b"to the end", b"again", b"x"):
        conn.request("GET", "/")
        assert conn.getresponse().read() == expected
    server.thread.join(5)  # it notes a connection's requests after its last answer is read
    assert len(server.received) == 3


def test_a_head_answer_has_no_body_and_keeps_the_connection():
    server = Scripted([[b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\n", ok(b"next")]])
    conn = Connection("127.0.0.1", server.port, timeout=5)
    conn.request("HEAD", "/code/k")
    response = conn.getresponse()
    assert (response.status, response.reason, response.read()) == (404, "Not Found", b"")
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"next"


def test_an_answer_left_unread_is_not_read_as_the_next_one():
    server = Scripted([[ok(b"unread body")], [ok(b"fresh")]])
    conn = Connection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/a")
    conn.getresponse()
    conn.request("GET", "/b")
    assert conn.getresponse().read() == b"fresh"


def test_a_closed_connection_a_cut_body_and_a_bad_answer_are_errors():
    server = Scripted([[ok(b"once")], [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], [b"SSH-2.0\r\n\r\n"]])
    conn = Connection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"once"
    server.thread.join(0.5)  # the server has closed the kept connection
    with pytest.raises((RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
        conn.request("GET", "/")
        conn.getresponse()
    conn.close()
    conn.request("GET", "/")
    with pytest.raises(ProtocolError, match="cut short"):
        conn.getresponse().read()
    conn.close()
    conn.request("GET", "/")
    with pytest.raises(ProtocolError, match="not HTTP"):
        conn.getresponse()
    with pytest.raises(ProtocolError, match="request line"):
        conn.request("GET", "/a b")


def test_the_host_header_names_the_port_only_when_it_is_not_the_default():
    assert Connection("example.org", None)._host_header == "example.org"
    assert Connection("example.org", 443, https=True)._host_header == "example.org"
    assert Connection("::1", 8470)._host_header == "[::1]:8470"


def test_a_presigned_put_sends_its_target_as_written_its_signed_headers_and_its_pieces_unchunked():
    server = Scripted([[ok(b"")]])
    url = f"http://127.0.0.1:{server.port}/bucket/k%2Fey?X-Amz-Signature=a%2Bb&partNumber=2"
    conn, target = for_url(url, timeout=5)
    assert target == "/bucket/k%2Fey?X-Amz-Signature=a%2Bb&partNumber=2"
    conn.request("PUT", target, iter([b"abc", b"de"]), {"Content-Length": "5", "x-amz-checksum-sha256": "s"},
                 skip_accept_encoding=True)
    assert conn.getresponse().status == 200
    conn.close()
    server.thread.join(5)
    assert server.received == [
        b"PUT " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(server.port).encode() + b"\r\n"
        b"Content-Length: 5\r\nx-amz-checksum-sha256: s\r\n\r\nabcde"]
