"""`cast upload` straight to the server's S3 object store: the files hashed
once, a plan asked of the server (presigned PUTs, or presigned parts above
`MULTIPART_BYTES`, for the contents the store lacks), the bytes PUT to the
store, the manifest committed. The server checks every object before the
upload is visible; no byte passes through it.

Uploads are content addressed, so a folder whose files are stored already
sends nothing, and running the same upload again after it was cut off (a
killed CLI, a lost network) sends only the files and parts still missing.
A PUT that fails on the way (the connection lost, a 5xx of a store that is
busy or restarting) is sent again, PUT_TRIES times at most, after pauses
that double; a 4xx is the store refusing that request, which a repeat would
meet again, so it ends the upload at once.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator

from cast.protocol.objects import SHA256_HEADER, ObjectEntry, ObjectPlan

from .sdk import CastError
from .transport import ProtocolError, for_url

CHUNK = 1 << 20
STORE_TIMEOUT = 600.0
RESUME = "run the same cast upload again to resume"
# Tries of one PUT, and the pause before the second (doubled before each
# next): 0.5 + 1 + 2 + 4 s, about as long as a store takes to restart.
PUT_TRIES = 5
FIRST_PAUSE = 0.5


def hash_files(files: list[tuple[str, str]], on_bytes: Callable[[int], None]) -> list[ObjectEntry]:
    """An entry (name, size, sha256) for each (path on disk, name) pair."""
    entries = []
    for local, name in files:
        digest, size = hashlib.sha256(), 0
        with open(local, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                on_bytes(len(chunk))
        entries.append(ObjectEntry(name, size, digest.hexdigest()))
    return entries


def planned_bytes(plan: ObjectPlan, entries: list[ObjectEntry]) -> int:
    """What the plan has this client send."""
    sizes = {entry.path: entry.size for entry in entries}
    total = 0
    for upload in plan.uploads:
        size = sizes[upload.path]
        if upload.url is not None:
            total += size
        total += sum(min(upload.part_size, size - (part.number - 1) * upload.part_size) for part in upload.parts)
    return total


def send(plan: ObjectPlan, entries: list[ObjectEntry], locals_by_name: dict[str, str],
         on_bytes: Callable[[int], None]) -> None:
    """PUT each object (or each part) the plan lists, straight to the store."""
    by_name = {entry.path: entry for entry in entries}
    for upload in plan.uploads:
        entry, local = by_name[upload.path], locals_by_name[upload.path]
        if upload.url is not None:
            _put(upload.url, local, 0, entry.size, {SHA256_HEADER: entry.sha256}, on_bytes, what=upload.path)
        for part in upload.parts:
            offset = (part.number - 1) * upload.part_size
            _put(part.url, local, offset, min(upload.part_size, entry.size - offset), {}, on_bytes,
                 what=f"part {part.number} of {upload.path}")


class _Failed(Exception):
    """One PUT that did not succeed; `again` when sending it again may."""

    def __init__(self, reason: str, *, again: bool):
        super().__init__(reason)
        self.again = again


def _put(url: str, local: str, offset: int, length: int, headers: dict[str, str],
         on_bytes: Callable[[int], None], *, what: str) -> None:
    """One PUT, sent again after a lost connection or a 5xx (see PUT_TRIES)."""
    try:
        handle = open(local, "rb")
    except OSError as exc:
        raise CastError(f"cannot read {local} ({exc.strerror}); {RESUME}") from None
    with handle:
        _put_tries(url, handle, offset, length, headers, on_bytes, what=what)


def _put_tries(url: str, handle, offset: int, length: int, headers: dict[str, str],
               on_bytes: Callable[[int], None], *, what: str) -> None:
    pause = FIRST_PAUSE
    for attempt in range(1, PUT_TRIES + 1):
        sent = [0]

        def counted(count: int) -> None:
            sent[0] += count
            on_bytes(count)

        try:
            _put_once(url, handle, offset, length, headers, counted)
            return
        except _Failed as failure:
            on_bytes(-sent[0])  # sent again from its start
            if not failure.again:
                raise CastError(f"the object store refused {what} ({failure}); {RESUME}") from None
            if attempt == PUT_TRIES:
                raise CastError(f"the object store did not take {what} in {PUT_TRIES} tries ({failure}); "
                                f"{RESUME}") from None
            sys.stderr.write(f"cast: the object store did not take {what} ({failure}); "
                             f"sending it again in {pause:g} s\n")
            time.sleep(pause)
            pause *= 2


def _put_once(url: str, handle, offset: int, length: int, headers: dict[str, str],
              on_bytes: Callable[[int], None]) -> None:
    connection, target = for_url(url, timeout=STORE_TIMEOUT)
    try:
        connection.request("PUT", target, _chunks(handle, offset, length, on_bytes),
                           {"Content-Length": str(length), **headers}, skip_accept_encoding=True)
        answer = connection.getresponse()
        body = answer.read(500)
    except (OSError, ProtocolError) as exc:
        raise _Failed(f"cannot reach it: {exc.__class__.__name__}: {exc}".rstrip(": "), again=True) from None
    finally:
        connection.close()
    if answer.status >= 400:
        detail = body.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        raise _Failed(f"{answer.status}: {detail}", again=answer.status >= 500)


def _chunks(handle, offset: int, length: int, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    """`length` bytes of `handle` from `offset`, each counted once it was sent."""
    handle.seek(offset)
    left = length
    while left > 0:
        chunk = handle.read(min(CHUNK, left))
        if not chunk:  # it shrank since it was hashed: the server's size check refuses it
            return
        yield chunk
        left -= len(chunk)
        on_bytes(len(chunk))
