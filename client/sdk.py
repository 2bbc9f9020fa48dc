"""The Python SDK for the cast HTTP API (docs/api.md): one method per user call.

Owns: talking HTTP to the control plane, turning error answers into
`ApiError` (the server's `detail`) and network failures into `Unreachable`,
streaming uploads and downloads, and following a run's log across dropped
connections. Built on `transport` (HTTP/1.1 over a socket) rather than httpx
or the standard library's `http.client`, because every `cast` invocation
imports it and startup time is part of each command's latency.

    from cast.client.sdk import Client
    from cast.protocol.messages import RunSpec
    client = Client("http://127.0.0.1:8470", token)
    run = client.create_run(RunSpec(command="python train.py", pip=["tqdm"]))
    for page in client.follow_logs(run["id"]):
        for chunk in page.chunks:
            print("\n".join(chunk.lines))
"""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import quote, urlencode, urlsplit

from cast.protocol.logs import MAX_READ_LINES, LogPage
from cast.protocol.messages import PERMANENT_HEADER
from cast.protocol.retries import Failure, RetryPolicy, classify, retry_after_seconds

from .transport import Connection, ProtocolError, Response, for_url

if TYPE_CHECKING:  # only `run` builds one; the other verbs need not import it
    from cast.protocol.messages import RunSpec
    from cast.protocol.objects import ObjectPlan, UploadManifest

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 60.0
# A follow stream may stay silent while a run computes; after this long the
# client reconnects from its offset, which costs nothing and detects dead links.
FOLLOW_READ_TIMEOUT = 75.0
# Give up following after this long without reaching the server at all.
FOLLOW_GIVE_UP_SECONDS = 300.0
STREAM_CHUNK = 256 * 1024
# How long a call keeps trying again (cast.protocol.retries: a connection cut
# mid-request, 408, 429, 502-504; through a balancer the next try reaches a
# live replica). Another 5xx is the server's answer, shown at once: a
# repeat would meet it again. A connection refused is not retried either: no
# server listens there, and the user is told at once.
RETRY_SECONDS = 30.0
RETRIES = RetryPolicy(first_delay=0.1, max_delay=2.0, budget=RETRY_SECONDS, max_same_errors=1)
# A follower reconnects through any outage or server error until it has not
# reached the server for FOLLOW_GIVE_UP_SECONDS.
FOLLOW_RETRIES = RetryPolicy(first_delay=0.1, max_delay=3.0, budget=FOLLOW_GIVE_UP_SECONDS)
# Methods whose repetition does what one request does; a POST is retried only
# when the request itself makes a repeat harmless (create_run's submit key).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class CastError(Exception):
    """An error the CLI reports as one line; `exit_code` is what it exits with."""

    exit_code = 1


class ApiError(CastError):
    """The server answered with an error; `detail` is its reason, `failure`
    what it says of another try, `retry_after` the pause the server asked
    for (seconds) if it did."""

    def __init__(self, status: int, detail: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.failure = classify(status, permanent=permanent)
        self.retry_after = retry_after

    @classmethod
    def of(cls, response: Response, body: bytes) -> "ApiError":
        return cls(response.status, _detail_of(response.status, response.reason, body),
                   permanent=response.getheader(PERMANENT_HEADER) == "1",
                   retry_after=retry_after_seconds(response.getheader("Retry-After")))


class Unreachable(CastError):
    """The server could not be reached (refused, reset, timed out)."""


class ConnectionCut(Unreachable):
    """The connection broke while a request was sent or answered (a replica
    behind a balancer died, say); the request may or may not have been carried out."""


def _detail_of(status: int, reason: str, body: bytes) -> str:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a schema error listing each bad field
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ())[1:]) or 'body'}: {item.get('msg')}"
            if isinstance(item, dict) else str(item)
            for item in detail
        )
    if not detail:
        text = body.decode("utf-8", "replace").strip()
        detail = f"HTTP {status} {reason}" + (f": {text[:200]}" if text else "")
    return str(detail)


def _pause(attempts, error: CastError) -> float | None:
    """The pause before another try after `error` (a cut connection or an
    error answer), or None: give up."""
    if isinstance(error, ApiError):
        return attempts.pause(error.failure, answer=(error.status, error.detail), retry_after=error.retry_after)
    return attempts.pause(Failure.OUTAGE)


class Client:
    """A connection to one control plane with one user token."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT):
        parts = urlsplit(url.rstrip("/"))
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise CastError(f"server URL {url!r} must look like http://HOST:PORT")
        if not token.isascii() or not token.isprintable() or " " in token:
            # It goes into a header: refuse it here rather than send a request cut in two.
            raise CastError("the token holds characters no cast token has (spaces, control or non-ASCII characters)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        prefix = parts.path.rstrip("/")
        if prefix.endswith(API_PREFIX):
            prefix = prefix[: -len(API_PREFIX)]
        self._prefix = prefix + API_PREFIX
        self._conn: Connection | None = None

    # --- transport -----------------------------------------------------

    def _new_connection(self, timeout: float | None) -> Connection:
        return Connection(self._host, self._port, https=self._https, timeout=timeout)

    def _fetch_presigned(self, url: str, timeout: float | None):
        conn, target = for_url(url, timeout=timeout)
        try:
            conn.request("GET", target)
            return conn.getresponse(), conn
        except (OSError, ProtocolError) as exc:
            conn.close()
            raise Unreachable(f"cannot fetch from the object store at {conn.host}: {exc}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _url(self, path: str, query: dict | None) -> str:
        url = self._prefix + path
        if query:
            pairs = {k: v for k, v in query.items() if v is not None and v != [] and v != ()}
            if pairs:
                url += "?" + urlencode(pairs, doseq=True)
        return url

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: dict | None = None,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict | None = None,
        timeout: float | None = None,
        dedicated: bool = False,
    ) -> tuple[Response, Connection]:
        """Send one request; the caller reads the response.

        Ordinary calls share one keep-alive connection and are retried once
        when that connection turns out to be stale. Streams (`dedicated`) get
        their own connection, since their bodies cannot be replayed and their
        responses are read while other calls go on.
        """
        all_headers = {"Authorization": f"Bearer {self.token}", "User-Agent": "cast-cli"}
        if headers:
            all_headers.update(headers)
        url = self._url(path, query)
        streamed_body = body is not None and not isinstance(body, (bytes, bytearray))
        for attempt in (1, 2):
            reused = False
            if dedicated:
                conn = self._new_connection(timeout or self.timeout)
            else:
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = self._new_connection(self.timeout)
                conn = self._conn
            try:
                conn.request(method, url, body=body, headers=all_headers, encode_chunked=streamed_body)
                return conn.getresponse(), conn
            except (BrokenPipeError, ConnectionResetError) as exc:  # transport.RemoteDisconnected among them
                conn.close()
                if not dedicated:
                    self._conn = None
                if reused and attempt == 1 and not streamed_body:
                    continue  # the keep-alive connection had gone stale
                raise ConnectionCut(f"lost the connection to the cast server at {self.url} ({exc.__class__.__name__})") from None
            except ConnectionRefusedError:
                conn.close()
                if not dedicated:
                    self._conn = None
                raise Unreachable(f"cannot reach the cast server at {self.url}: connection refused") from None
            except (socket.timeout, TimeoutError):
                conn.close()
                if not dedicated:
                    self._conn = None
                raise Unreachable(f"the cast server at {self.url} did not answer in time") from None
            except (OSError, ProtocolError) as exc:
                conn.close()
                if not dedicated:
                    self._conn = None
                raise Unreachable(f"cannot reach the cast server at {self.url}: {exc}") from None
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, *, query: dict | None = None, json_body: Any = None,
              body: bytes | Iterable[bytes] | None = None, headers: dict | None = None,
              dedicated: bool = False, repeatable: bool | None = None) -> Any:
        """A request whose answer is JSON (or empty); errors raise ApiError.

        A request that may be repeated (`repeatable`, by default an idempotent
        method with a body that can be sent again) is tried again under
        RETRIES (see RETRY_SECONDS)."""
        headers = dict(headers or {})
        headers.setdefault("Accept", "application/json")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if repeatable is None:
            repeatable = method in IDEMPOTENT_METHODS
        repeatable = repeatable and (body is None or isinstance(body, (bytes, bytearray)))
        return self._repeating(lambda: self._call_once(method, path, query=query, body=body, headers=headers,
                                                       dedicated=dedicated), repeatable=repeatable)

    @staticmethod
    def _repeating(attempt, *, repeatable: bool = True):
        """`attempt()`, tried again under RETRIES while its connection is cut
        or the answer says another try may do, if `repeatable`."""
        attempts = RETRIES.attempts()
        while True:
            try:
                return attempt()
            except (ConnectionCut, ApiError) as exc:
                delay = None
                if repeatable:
                    delay = _pause(attempts, exc)
                if delay is None:
                    raise
            time.sleep(delay)

    def _call_once(self, method: str, path: str, *, query: dict | None, body: bytes | Iterable[bytes] | None,
                   headers: dict, dedicated: bool) -> Any:
        response, conn = self._send(method, path, query=query, body=body, headers=headers, dedicated=dedicated)
        try:
            data = response.read()
        except (OSError, ProtocolError) as exc:
            conn.close()
            self._conn = None if conn is self._conn else self._conn
            raise ConnectionCut(f"lost the connection to the cast server at {self.url} ({exc.__class__.__name__})") from None
        finally:
            if dedicated:
                conn.close()
        if response.status >= 400:
            raise ApiError.of(response, data)
        if not data or method == "HEAD":
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise CastError(f"the server at {self.url} answered {path} with something that is not JSON") from None

    def _stream(self, method: str, path: str, *, query: dict | None = None,
                timeout: float | None = None) -> "Download":
        """A request whose answer is read as a stream (bytes, tar, NDJSON)."""
        response, conn = self._send(method, path, query=query, timeout=timeout, dedicated=True)
        if response.status == 307 and (location := response.getheader("Location")):
            # A server with an object store answers a file with a presigned URL:
            # the bytes come straight from the store, without this client's token.
            response.read()
            conn.close()
            response, conn = self._fetch_presigned(location, timeout or self.timeout)
        if response.status >= 400:
            data = response.read()
            conn.close()
            raise ApiError.of(response, data)
        return Download(response, conn, self.url)

    # --- health --------------------------------------------------------

    def health(self) -> dict:
        return self._call("GET", "/health")

    # --- runs ----------------------------------------------------------

    def create_run(self, spec: RunSpec, *, labels: list[str] | None = None, idempotent: bool = False,
                   queue_anyway: bool = False) -> dict:
        """Submit a run with these labels; the server fills in the commit and digests.
        `idempotent`: the answer may be an earlier complete run that did the same
        (`reused` says so). A run no connected worker could ever run is refused
        (409) unless `queue_anyway`."""
        from cast.protocol.messages import new_submit_key

        # The same key on every try: a retried submit whose first try was
        # carried out answers that run instead of making a second one.
        body = spec.request_body(labels=labels, idempotent=idempotent, submit_key=new_submit_key())
        if queue_anyway:
            body["queue_anyway"] = True
        return self._call("POST", "/runs", json_body=body, repeatable=True)

    def list_runs(self, *, status: list[str] | None = None, label: str | None = None,
                  limit: int | None = None, before: int | None = None) -> dict:
        return self._call("GET", "/runs", query={"status": status, "label": label, "limit": limit, "before": before})

    def get_run(self, run_id: int) -> dict:
        return self._call("GET", f"/runs/{int(run_id)}")

    def stop_run(self, run_id: int) -> dict:
        return self._call("POST", f"/runs/{int(run_id)}/stop")

    def kill_run(self, run_id: int) -> dict:
        return self._call("POST", f"/runs/{int(run_id)}/kill")

    def add_label(self, run_id: int, label: str) -> dict:
        return self._call("POST", f"/runs/{int(run_id)}/labels", json_body={"label": label})

    def remove_label(self, run_id: int, label: str) -> dict:
        return self._call("DELETE", f"/runs/{int(run_id)}/labels/{quote(label, safe='')}")

    # --- hyperparameter searches ------------------------------------------

    def create_search(self, body: dict) -> dict:
        """Start a search; `body` as `POST /searches` takes it (docs/api.md)."""
        return self._call("POST", "/searches", json_body=body)

    def list_searches(self) -> dict:
        return self._call("GET", "/searches")

    def get_search(self, search_id: int) -> dict:
        return self._call("GET", f"/searches/{int(search_id)}")

    def stop_search(self, search_id: int) -> dict:
        return self._call("POST", f"/searches/{int(search_id)}/stop")

    def kill_search(self, search_id: int) -> dict:
        return self._call("POST", f"/searches/{int(search_id)}/kill")

    # --- logs ----------------------------------------------------------

    def get_logs(self, run_id: int, *, offset: int = 0, limit: int | None = None) -> LogPage:
        """One page of a run's log from `offset` (negative: the last lines), at
        most `limit` lines (the server's most: MAX_READ_LINES)."""
        return LogPage.from_dict(self._call("GET", f"/runs/{int(run_id)}/logs",
                                            query={"offset": offset, "limit": limit}))

    def log_pages(self, run_id: int, offset: int = 0) -> Iterator[LogPage]:
        """The pages of the log as it is now, from `offset` to its end."""
        while True:
            page = self.get_logs(run_id, offset=offset, limit=MAX_READ_LINES)
            yield page
            # A page ends early past the server's byte bound: only an empty one is the end.
            if not page.chunks:
                return
            offset = page.next_offset

    def download_logs(self, run_id: int) -> "Download":
        return self._repeating(lambda: self._stream("GET", f"/runs/{int(run_id)}/logs/download"))

    def follow_logs(self, run_id: int, offset: int = 0, *, on_reconnect=None) -> Iterator[LogPage]:
        """Yield the pages of a run's log until the run is final and every line was yielded.

        A dropped connection (server restart, network cut, silence longer than
        FOLLOW_READ_TIMEOUT) is resumed from the last complete page's
        `next_offset`, under FOLLOW_RETRIES, so no line is yielded twice or missed.
        `on_reconnect(error_text)` is called before each retry.
        """
        pages = self._follow(f"/runs/{int(run_id)}/logs/follow", {}, offset, f"the log stream of run {run_id}",
                             on_reconnect)
        return (LogPage.from_dict(page) for page in pages)

    def _follow(self, path: str, query: dict, offset: int, what: str, on_reconnect) -> Iterator[dict]:
        """The NDJSON chunks of a follow route, resumed from `next_offset` (see follow_logs)."""
        attempts = None  # since the last chunk read
        while True:
            failure, retry_after = Failure.OUTAGE, None
            try:
                download = self._stream("GET", path, query={**query, "offset": offset}, timeout=FOLLOW_READ_TIMEOUT)
                with download:
                    for line in download.response:
                        if not line.strip():
                            continue
                        chunk = json.loads(line)  # a line cut short raises and resumes below
                        attempts = None
                        offset = chunk["next_offset"]
                        yield chunk
                        if chunk.get("finished"):
                            return
                problem = f"{what} ended early"
            except ApiError as exc:
                if exc.failure is Failure.FINAL:
                    raise
                failure, retry_after = exc.failure, exc.retry_after
                problem = f"HTTP {exc.status}: {exc.detail}"
            except (Unreachable, OSError, ProtocolError, ValueError) as exc:
                problem = str(exc) or exc.__class__.__name__
            attempts = attempts or FOLLOW_RETRIES.attempts()
            delay = attempts.pause(failure, retry_after=retry_after)
            if delay is None:
                raise Unreachable(f"lost {what} from {self.url}: {problem}")
            if on_reconnect:
                on_reconnect(problem)
            time.sleep(delay)

    # --- outputs -------------------------------------------------------

    # --- metrics ----------------------------------------------------------

    def get_metrics(self, run_id: int) -> dict:
        """`{metrics: [{name, count, last, min, max, last_step, last_time}], next_offset, finished}`."""
        return self._call("GET", f"/runs/{int(run_id)}/metrics")

    def get_metric_points(self, run_id: int, *, offset: int = 0, name: str | None = None,
                          limit: int | None = None) -> dict:
        """`{points: [{offset, name, step, value, time}], next_offset, finished}` from `offset`."""
        return self._call("GET", f"/runs/{int(run_id)}/metrics/points",
                          query={"offset": offset, "name": name, "limit": limit})

    def follow_metrics(self, run_id: int, offset: int = 0, *, name: str | None = None,
                       on_reconnect=None) -> Iterator[dict]:
        """Yield the chunks `{points, next_offset, finished}` as points arrive,
        until the run is final and every point was yielded (resumed as follow_logs)."""
        return self._follow(f"/runs/{int(run_id)}/metrics/follow", {"name": name}, offset,
                            f"the metrics of run {run_id}", on_reconnect)

    def list_outputs(self, run_id: int) -> dict:
        return self._call("GET", f"/runs/{int(run_id)}/outputs")

    def download_output(self, run_id: int, path: str) -> "Download":
        return self._repeating(lambda: self._stream("GET", f"/runs/{int(run_id)}/outputs/{quote(path)}"))

    def delete_outputs(self, run_id: int, *, force: bool = False) -> dict:
        """Free a run's outputs, keeping its record: `{resource, deleted_at, freed, already}`."""
        return self._call("DELETE", f"/runs/{int(run_id)}/outputs", query={"force": "true" if force else None})

    # --- uploads -------------------------------------------------------

    def upload(self, name: str, kind: str, chunks: Iterable[bytes], *, replace: bool = False) -> dict:
        """Stream an upload; `kind` is "file" (raw bytes) or "dir" (a tar); `replace`
        takes the place of an upload of that name that no run mounted."""
        return self._call("PUT", f"/uploads/{quote(name, safe='')}",
                          query={"kind": kind, "replace": "true" if replace else None}, body=chunks,
                          headers={"Content-Type": "application/x-tar" if kind == "dir" else "application/octet-stream"},
                          dedicated=True)

    def plan_upload(self, name: str, manifest: "UploadManifest") -> "ObjectPlan":
        """With an S3 object store: presigned PUTs (or the missing parts) for the
        contents of `manifest` the store lacks. A filesystem store answers 409."""
        from cast.protocol.objects import ObjectPlan

        # Repeatable: a plan only reads and signs.
        return ObjectPlan.from_dict(self._call("POST", f"/uploads/{quote(name, safe='')}/plan",
                                               json_body=manifest.to_dict(), repeatable=True))

    def commit_upload(self, name: str, manifest: "UploadManifest") -> dict:
        """Record `uploads/NAME` from the objects a plan's URLs stored; as `upload`'s answer."""
        return self._call("POST", f"/uploads/{quote(name, safe='')}/commit", json_body=manifest.to_dict())

    def list_uploads(self) -> dict:
        return self._call("GET", "/uploads")

    def list_upload(self, name: str, path: str = "") -> dict:
        return self._call("GET", self._upload_path(name, path), query={"list": 1})

    def download_upload(self, name: str, path: str = "") -> "Download":
        return self._repeating(lambda: self._stream("GET", self._upload_path(name, path)))

    def delete_upload(self, name: str, *, force: bool = False) -> dict:
        """Free an upload's files, keeping its record: `{resource, deleted_at, freed, already}`."""
        return self._call("DELETE", self._upload_path(name, ""), query={"force": "true" if force else None})

    # --- retention -----------------------------------------------------

    def prune(self, *, older_than: float, keep_labeled: bool = False, user: str | None = None,
              dry_run: bool = False) -> dict:
        """Free the outputs of finished runs that ended `older_than` seconds ago: `{runs, freed, dry_run}`."""
        return self._call("POST", "/prune", json_body={"older_than": older_than, "keep_labeled": keep_labeled,
                                                       "user": user, "dry_run": dry_run})

    def usage(self, *, user: str | None = None) -> dict:
        """What each user's runs and uploads hold: `{"users": [{user, runs, uploads, total, ...}]}`."""
        return self._call("GET", "/usage", query={"user": user})

    @staticmethod
    def _upload_path(name: str, path: str) -> str:
        return f"/uploads/{quote(name, safe='')}" + (f"/{quote(path)}" if path else "")

    # --- where you are -------------------------------------------------

    def status(self) -> dict:
        """The server, its present workers (capacities, runs) and the queue by machine type."""
        return self._call("GET", "/status")

    # --- users and tokens ----------------------------------------------

    def whoami(self) -> dict:
        return self._call("GET", "/users/me")

    def create_sign_in_link(self) -> dict:
        """A one-time link that signs a browser in as this user: `{"token", "path", "expires_at"}`."""
        return self._call("POST", "/users/me/sign-in-links")

    def list_users(self) -> dict:
        """Admins only: `{"users": [{"name", "admin", "created_at"}]}`."""
        return self._call("GET", "/users")

    def create_user(self, name: str, *, admin: bool = False) -> dict:
        """Admins only: the new user, with its first token (`["token"]["token"]`, shown once)."""
        return self._call("POST", "/users", json_body={"name": name, "admin": admin})

    def list_tokens(self) -> dict:
        """The caller's tokens (an admin's: everyone's), without their secrets."""
        return self._call("GET", "/tokens")

    def create_token(self, *, kind: str = "user", name: str = "", user: str | None = None) -> dict:
        """A new token; its secret is `["token"]`, shown only this once. Worker
        tokens and tokens for another `user` need an admin."""
        return self._call("POST", "/tokens", json_body={"kind": kind, "name": name, "user": user})

    def revoke_token(self, token_id: int) -> dict:
        return self._call("DELETE", f"/tokens/{int(token_id)}")

    # --- code bundles --------------------------------------------------

    def has_code(self, key: str) -> bool:
        try:
            self._call("HEAD", f"/code/{key}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def put_code(self, key: str, chunks: Iterable[bytes]) -> None:
        self._call("PUT", f"/code/{key}", body=chunks, headers={"Content-Type": "application/x-tar"},
                   dedicated=True)


class Download:
    """A streamed answer: iterate `chunks()` or read `response`; close when done."""

    def __init__(self, response: Response, conn: Connection, url: str):
        self.response = response
        self._conn = conn
        self._url = url

    @property
    def content_type(self) -> str:
        return (self.response.getheader("Content-Type") or "").split(";")[0].strip()

    @property
    def length(self) -> int | None:
        value = self.response.getheader("Content-Length")
        return int(value) if value and value.isdigit() else None

    def chunks(self, size: int = STREAM_CHUNK) -> Iterator[bytes]:
        try:
            while True:
                data = self.response.read1(size)
                if not data:
                    return
                yield data
        except (OSError, ProtocolError) as exc:
            raise Unreachable(f"the download from {self._url} was cut off ({exc.__class__.__name__})") from None

    def read(self, size: int = -1) -> bytes:
        """File-like reading, for tarfile's stream mode."""
        try:
            return self.response.read(size)
        except (OSError, ProtocolError) as exc:
            raise Unreachable(f"the download from {self._url} was cut off ({exc.__class__.__name__})") from None

    def close(self) -> None:
        self.response.close()
        self._conn.close()

    def __enter__(self) -> "Download":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
