"""The worker's HTTP client to the control plane (docs/api.md, worker routes).

Owns the requests and how their failures are classified, by the retry
policy the SDK shares (cast.protocol.retries): a connection error, a 5xx, a
408 or a 429 is `ServerUnavailable` (the caller retries; the server may be
restarting or busy; a Retry-After is kept), a 409 is `Conflict` (lease lost
or a transition refused), any other 4xx, and a 5xx the server marks permanent
(the `X-Cast-Permanent: 1` header: its disk is full, say), is `Refused`
(retrying cannot help). `with_retries` tries again until its caller stops it
and also gives up, with `Refused`, once the server gave the same 5xx answer
a given number of times in a row: a server error that every retry meets
again is deterministic, not an outage.

An output push is a body of bytes and `FileSpan`s (a file's bytes, never
read into Python): over plain HTTP with no proxy it goes out on a socket of
its own, the spans with `sendfile`, framed by h11 (the HTTP/1.1 engine under
httpx, so the request and answer are parsed the same way); through a proxy or
TLS, httpx sends it, the spans read in large pieces. Either way a failure is
classified as every other request's, and the outbox retries it whole.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple, TypeVar

import h11
import httpx

from cast.protocol.logs import LogBatch, LogRun
from cast.protocol.messages import PERMANENT_HEADER
from cast.protocol.worker_messages import (HeldLease, Lease, StatusBatchReply, StatusReport, WorkerHeartbeat,
                                           WorkerHeartbeatReply)
from cast.protocol.metrics import MetricPoint
from cast.protocol.objects import ObjectFile, ObjectManifest, ObjectPlan
from cast.protocol.outputs import StagedOutputs
from cast.protocol.retries import Failure, RetryPolicy, classify, retry_after_seconds

T = TypeVar("T")
FIRST_DELAY = 0.05  # seconds before a request that failed is tried again the first time
# Bytes of a push's body gathered into one write (many small files' headers and contents).
GATHER = 1 << 20
# A span read into memory at a time where it cannot be sent with sendfile.
SPAN_READ = 4 << 20
# The longest answer to a push read back (a short JSON document).
MAX_ANSWER = 1 << 20


class FileSpan(NamedTuple):
    """The first `size` bytes of the open file `file`, zero-filled should it be shorter by then."""
    file: BinaryIO
    size: int


def span_bytes(body: Iterable[bytes | FileSpan]) -> Iterator[bytes]:
    """A push's body as bytes alone, each span read in pieces of at most SPAN_READ bytes."""
    for piece in body:
        if not isinstance(piece, FileSpan):
            yield piece
            continue
        done = 0
        while done < piece.size:
            data = os.pread(piece.file.fileno(), min(SPAN_READ, piece.size - done), done) or \
                bytes(min(SPAN_READ, piece.size - done))
            done += len(data)
            yield data


class ServerError(Exception):
    """A request to the control plane did not succeed."""


class ServerUnavailable(ServerError):
    """The server could not be reached or answered 5xx (or 408/429); worth retrying.

    `answer` is (status code, detail) for a server error that, repeated, says
    the request itself fails there (`Failure.ERROR`); None for an outage.
    `retry_after`: the pause the server asked for, in seconds, if it did."""

    def __init__(self, message: str, answer: tuple[int, str] | None = None, *, retry_after: float | None = None):
        super().__init__(message)
        self.answer = answer
        self.retry_after = retry_after


class Conflict(ServerError):
    """409: the lease is lost, or the server refused the status change."""


class Refused(ServerError):
    """Another 4xx: the server refuses this request for good."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:500]


def _check(response: httpx.Response) -> httpx.Response:
    code = response.status_code
    if code < 400:
        return response
    detail = _detail(response)
    if code == 409:
        raise Conflict(detail)
    failure = classify(code, permanent=response.headers.get(PERMANENT_HEADER) == "1")
    if failure is Failure.FINAL:
        raise Refused(code, detail)
    raise ServerUnavailable(f"server answered {code}: {detail}", (code, detail) if failure is Failure.ERROR else None,
                            retry_after=retry_after_seconds(response.headers.get("Retry-After")))


def with_retries(call: Callable[[], T], *, should_continue: Callable[[], bool] = lambda: True,
                 max_delay: float = 1.0, max_same_errors: int | None = None) -> T:
    """Repeat `call` while the server is unavailable, pausing as
    cast.protocol.retries says (doubling from FIRST_DELAY up to `max_delay`
    seconds, or longer where the server's Retry-After asks); stop (re-raising)
    once `should_continue` says so, and raise `Refused` once the server gave
    the same error answer `max_same_errors` times in a row."""
    attempts = RetryPolicy(first_delay=FIRST_DELAY, max_delay=max_delay, max_same_errors=max_same_errors).attempts()
    while True:
        try:
            return call()
        except ServerUnavailable as exc:
            if not should_continue():
                raise
            failure = Failure.OUTAGE if exc.answer is None else Failure.ERROR
            delay = attempts.pause(failure, answer=exc.answer, retry_after=exc.retry_after)
            if delay is None:  # no budget: only the same error answer ends the tries
                code, detail = exc.answer
                raise Refused(code, f"{detail} (the same answer {attempts.repeats} times in a row)") from exc
            time.sleep(delay)


def _send_chunked(sock: socket.socket, body: Iterable[bytes | FileSpan]) -> None:
    """`body` in HTTP/1.1 chunks: bytes gathered up to GATHER into one write,
    each span a chunk of its own sent by the kernel from the file (sendfile)."""
    gathered: list[bytes] = []
    size = 0

    def flush(then: bytes = b"") -> None:
        nonlocal size
        if size:
            gathered.insert(0, b"%x\r\n" % size)
            gathered.append(b"\r\n")
        if size or then:
            sock.sendall(b"".join([*gathered, then]))
        gathered.clear()
        size = 0

    for piece in body:
        if not isinstance(piece, FileSpan):
            gathered.append(piece)
            size += len(piece)
            if size >= GATHER:
                flush()
            continue
        if not piece.size:
            continue
        flush(b"%x\r\n" % piece.size)
        sent = sock.sendfile(piece.file, 0, piece.size)
        while sent < piece.size:  # the file shrank since its header was written
            sent += sock.send(bytes(min(SPAN_READ, piece.size - sent)))
        sock.sendall(b"\r\n")
    flush()


def _read_answer(sock: socket.socket, connection: h11.Connection) -> httpx.Response | None:
    """The server's answer to a request sent (whole or not) on `sock`; None if it gave none."""
    status, headers, content = None, None, bytearray()
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, event.headers
            elif isinstance(event, h11.Data):
                content += event.data
                if len(content) > MAX_ANSWER:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return httpx.Response(status, headers=list(headers), content=bytes(content))
            elif isinstance(event, h11.ConnectionClosed):
                return None
    except (OSError, h11.RemoteProtocolError):
        return None


def _quote_path(path: str) -> str:
    return "/".join(urllib.parse.quote(part, safe="") for part in path.split("/"))


class ServerClient:
    """One connection pool to the control plane, shared by the agent's threads."""

    def __init__(self, server_url: str, token: str, *, max_same_errors: int = 8):
        # How often a run's report may meet the same server error before the
        # run fails with it (see with_retries).
        self.max_same_errors = max_same_errors
        self._claim: str | None = None  # the lease claim being tried (see lease)
        self._http = httpx.Client(
            base_url=server_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return _check(self._http.request(method, url, **kwargs))
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach the server: {exc}") from exc

    # --- worker registration and leases -----------------------------------

    def register(self, *, name: str, executor: str, cpus: int, memory: int, gpus: list[int],
                 max_runs: int, sandboxed: bool) -> dict:
        return self._request("POST", "/workers", json={
            "name": name, "executor": executor, "cpus": cpus, "memory": memory,
            "gpus": gpus, "max_runs": max_runs, "sandboxed": sandboxed,
        }).json()

    def lease(self, worker_id: str, *, free_gpus: int, wait: float) -> Lease | None:
        """The next run to execute, or None when nothing was queued within `wait` seconds.

        Each try of one claim sends the same `claim` until one is answered: a
        run a replica leased before its answer was lost is answered again."""
        self._claim = self._claim or secrets.token_hex(16)
        response = self._request(
            "POST", f"/workers/{worker_id}/lease",
            json={"free_gpus": free_gpus, "wait": wait, "claim": self._claim},
            timeout=httpx.Timeout(wait + 30.0, connect=5.0),
        )
        self._claim = None
        return None if response.status_code == 204 else Lease.from_dict(response.json())

    def heartbeat(self, worker_id: str, leases: list[HeldLease]) -> WorkerHeartbeatReply:
        """One heartbeat for every run the worker holds."""
        return WorkerHeartbeatReply.from_dict(self._request(
            "POST", f"/workers/{worker_id}/heartbeat", json=WorkerHeartbeat(leases=leases).to_dict(),
            timeout=httpx.Timeout(5.0),
        ).json())

    # --- one leased run ---------------------------------------------------

    def report_statuses(self, run_id: int, lease_token: str, reports: list[StatusReport], *,
                        lines_before: list[LogBatch | None] = ()) -> StatusBatchReply:
        """Consecutive status reports in one request, applied in order; each
        report's `lines_before`, printed before it, are stored ahead of it."""
        bodies = []
        for report, lines in itertools.zip_longest(reports, lines_before):
            body = {k: v for k, v in report.to_dict().items() if k != "lease_token"}
            if lines is not None:
                body["logs"] = {"seq": lines.seq, "runs": [run.to_dict() for run in lines.runs]}
            bodies.append(body)
        return StatusBatchReply.from_dict(self._request(
            "POST", f"/runs/{run_id}/statuses", json={"lease_token": lease_token, "reports": bodies}).json())

    def append_logs(self, run_id: int, lease_token: str, *, seq: int, runs: list[LogRun]) -> dict:
        return self._request("POST", f"/runs/{run_id}/logs",
                             json=LogBatch(lease_token=lease_token, seq=seq, runs=runs).to_dict()).json()

    def append_metrics(self, run_id: int, lease_token: str, *, seq: int, points: list[MetricPoint]) -> dict:
        return self._request("POST", f"/runs/{run_id}/metrics", json={
            "lease_token": lease_token, "seq": seq, "points": [point.to_dict() for point in points],
        }).json()

    def push_outputs(self, run_id: int, lease_token: str, tar: Iterable[bytes | FileSpan]) -> dict:
        """Send the tar `tar` (made again for each try) as run `run_id`'s outputs."""
        path, headers = f"/runs/{run_id}/outputs", {"X-Lease-Token": lease_token, "Content-Type": "application/x-tar"}
        if self._bulk_sendable():
            return _check(self._bulk_put(path, headers, tar)).json()
        return self._request("PUT", path, content=span_bytes(tar), headers=headers,
                             timeout=httpx.Timeout(600.0, connect=5.0)).json()

    def _bulk_sendable(self) -> bool:
        """Whether a body may go out on a plain socket: plain HTTP to a server no
        proxy stands in front of, by the same variables httpx reads."""
        url = self._http.base_url
        proxies = urllib.request.getproxies_environment()
        return url.scheme == "http" and not ((proxies.get("http") or proxies.get("all"))
                                             and not urllib.request.proxy_bypass_environment(url.host, proxies))

    def _bulk_put(self, path: str, headers: dict[str, str], body: Iterable[bytes | FileSpan]) -> httpx.Response:
        url = self._http.base_url
        try:
            sock = socket.create_connection((url.host, url.port or 80), timeout=5.0)
        except OSError as exc:
            raise ServerUnavailable(f"cannot reach the server: {exc}") from exc
        with sock:
            sock.settimeout(600.0)
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(method="PUT", target=url.raw_path + path.lstrip("/").encode(), headers=[
                ("Host", url.netloc), ("Authorization", self._http.headers["Authorization"]), *headers.items(),
                ("Transfer-Encoding", "chunked")])
            failure = None
            try:
                sock.sendall(connection.send(request))
                _send_chunked(sock, body)
                sock.sendall(connection.send(h11.EndOfMessage()))
            except OSError as exc:  # the server may have answered (a refusal) and closed: its answer wins
                failure = exc
            answer = _read_answer(sock, connection)
        if answer is None:
            raise ServerUnavailable(f"cannot reach the server: {failure or 'it closed the connection'}") from failure
        return answer

    def adopt_outputs(self, run_id: int, staged: StagedOutputs) -> dict:
        return self._request("POST", f"/runs/{run_id}/outputs/staged", json=staged.to_dict(),
                             timeout=httpx.Timeout(600.0, connect=5.0)).json()

    # --- data the run needs -----------------------------------------------

    def download_code(self, digest: str, dest: Path) -> None:
        self._download(f"/workers/code/{urllib.parse.quote(digest, safe='')}", dest)

    def plan_outputs(self, run_id: int, manifest: ObjectManifest) -> ObjectPlan:
        return ObjectPlan.from_dict(self._request("POST", f"/runs/{run_id}/outputs/plan", json=manifest.to_dict(),
                                                  timeout=httpx.Timeout(600.0, connect=5.0)).json())

    def commit_outputs(self, run_id: int, manifest: ObjectManifest) -> dict:
        return self._request("POST", f"/runs/{run_id}/outputs/commit", json=manifest.to_dict(),
                             timeout=httpx.Timeout(600.0, connect=5.0)).json()

    def mount_objects(self, resource: str) -> tuple[list[ObjectFile], list[str]]:
        """A mount's files in the object store, and its empty folders."""
        answer = self._request("GET", f"/workers/objects/{_quote_path(resource)}").json()
        return [ObjectFile.from_dict(item) for item in answer["files"]], [str(f) for f in answer.get("folders") or []]

    def download_mount(self, resource: str, dest: Path) -> None:
        self._download(f"/workers/mounts/{_quote_path(resource)}", dest)

    def _download(self, url: str, dest: Path) -> None:
        """Stream a response body into `dest` (never whole in memory)."""
        try:
            # A server with an object store redirects to a presigned URL; httpx
            # drops the token when the redirect leaves the server's origin.
            with self._http.stream("GET", url, timeout=httpx.Timeout(600.0, connect=5.0),
                                   follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach the server: {exc}") from exc
