"""An HTTP relay on loopback between a client (the CLI, a worker) and a real
server: each request is forwarded as it came and its whole answer sent back,
and the relay records what was asked, which answers went out, and can hold a
request back or rewrite an answer, so a test sees and steers the traffic
without touching either program.

- `requests`: every request, in arrival order (method, path, body);
- `answered`: (index in `requests`, path) of every request answered, in the
  order the answers went out;
- `hold(request)`: a request it picks waits, `held` set, until `release` is;
- `fault(request)`: None passes it on; (status, headers) answers that, empty,
  without passing it on; CUT passes it on, then hangs up without the answer
  (a balancer in front of a replica that died mid-request);
- `rewrite(request, status, body)`: the answer's body as the client gets it.

The answer is read whole from the server before it is sent, so a streamed
answer (a follow stream) reaches the client when it ends.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers the relay answers itself, not copied from the server's answer.
_OWN_HEADERS = ("content-length", "transfer-encoding", "connection", "date", "server")
CUT = "cut"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it came

    def json(self):
        return json.loads(self.body) if self.body else None


class Relay:
    def __init__(self, target: str, *, hold=lambda request: False, fault=lambda request: None,
                 rewrite=lambda request, status, body: body):
        self.requests: list[Request] = []
        self.answered: list[tuple[int, str]] = []
        self.held, self.release = threading.Event(), threading.Event()
        host, port = urlsplit(target).hostname, urlsplit(target).port
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self):
                request = Request(self.command, self.path,
                                  self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                index = len(outer.requests)
                outer.requests.append(request)
                if hold(request):
                    outer.held.set()
                    outer.release.wait(300)
                if (instead := fault(request)) not in (None, CUT):
                    status, headers = instead
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection(host, port, timeout=120)
                try:
                    upstream.request(request.method, request.path, body=request.body or None, headers={
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")})
                    answer = upstream.getresponse()
                    data = rewrite(request, answer.status, answer.read())
                finally:
                    upstream.close()
                if instead == CUT:
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in _OWN_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                outer.answered.append((index, request.path))

            do_GET = do_POST = do_PUT = do_DELETE = _relay

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()  # a held request is let go, not left hanging
        self.http.shutdown()
        self.http.server_close()
