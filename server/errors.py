"""Domain errors raised by the services.

Each names what went wrong in one sentence; app.py maps the classes to HTTP
codes in one place, so services never speak HTTP.
"""

from __future__ import annotations

import errno
import os
from datetime import datetime

from cast.protocol.status import RunStatus, refusal


class DomainError(Exception):
    """Base of every domain error; `str(error)` is the message shown to the client."""

    # A 5xx that retrying cannot cure: answered with the X-Cast-Permanent header.
    permanent = False


class BadRequest(DomainError):
    """The request is well-formed but asks for something invalid (400)."""


class NotAuthenticated(DomainError):
    """No token, or a token the server does not know (401)."""


class Forbidden(DomainError):
    """A valid token that may not do this (403)."""


class NotFound(DomainError):
    """Base of the 404s."""


class RunNotFound(NotFound):
    def __init__(self, run_id: int):
        super().__init__(f"run {run_id} not found")


class UploadNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"upload {name!r} not found")


class PathNotFound(NotFound):
    def __init__(self, resource: str):
        super().__init__(f"{resource} not found")


class CodeNotFound(NotFound):
    def __init__(self, key: str):
        super().__init__(f"code bundle {key} not found")


class WorkerNotFound(NotFound):
    def __init__(self, worker_id: str):
        super().__init__(f"worker {worker_id!r} not found; register again")


class TokenNotFound(NotFound):
    def __init__(self, token_id: int):
        super().__init__(f"token {token_id} not found")


class UserNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"user {name!r} not found")


class SearchNotFound(NotFound):
    def __init__(self, search_id: int):
        super().__init__(f"search {search_id} not found")


class Conflict(DomainError):
    """Base of the 409s."""


class SearchEnded(Conflict):
    def __init__(self, search_id: int, current: str, wanted: str):
        super().__init__(f"search {search_id} is {current}; it cannot be {wanted}")


class InvalidTransition(Conflict):
    def __init__(self, run_id: int, current: str, wanted: str):
        super().__init__(refusal(run_id, current, RunStatus(wanted)))


class LeaseLost(Conflict):
    def __init__(self, run_id: int):
        super().__init__(f"the lease on run {run_id} is lost (expired or taken by another attempt)")


class NameTaken(Conflict):
    """An upload, user or similar name already exists."""


class InUse(Conflict):
    """What a queued or active run mounts cannot be deleted or replaced."""


class Gone(DomainError):
    """Stored data that was deleted; its record stays (410)."""

    def __init__(self, what: str, at: datetime):
        super().__init__(f"{what} deleted at {at:%Y-%m-%d %H:%M:%S} UTC")


class ArchiveMissing(Gone):
    """A run's archived log that the store no longer holds (410): the run names
    it, its lines are lost. The key is in the server's log, for the operator."""

    def __init__(self, run_id: int):
        DomainError.__init__(self, f"the archived log of run {run_id} is missing from the store; "
                                   "its lines can no longer be read")


class TooLarge(DomainError):
    """A body or a stored result exceeds its cap (413)."""


class StorageFull(DomainError):
    """The server's disk is full (507). Permanent: a retry meets the same full
    disk, so a worker fails the run with this instead of retrying."""

    permanent = True

    def __init__(self) -> None:
        super().__init__("server storage full")


def from_os_error(error: OSError) -> DomainError | None:
    """The domain error a filesystem error stands for, when the request caused
    it or no retry can cure it; None for the rest (a server fault, a 500)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull()
    name = os.path.basename(os.fsdecode(error.filename or "")) or "a name"
    if error.errno == errno.ENAMETOOLONG:
        return BadRequest(f"{name!r} is too long a name or path for the server's filesystem")
    if error.errno == errno.EILSEQ:
        return BadRequest(f"{name!r} is not a name the server's filesystem can store")
    return None


class ShuttingDown(DomainError):
    """The server is stopping; the client should retry against its successor (503)."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; try again")


class StoreUnavailable(DomainError):
    """The S3 object store did not answer, or answered with a 5xx (503): the
    client sends the request again."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the object store is unavailable ({detail}); try again")


class DatabaseUnavailable(DomainError):
    """The database could not be reached or dropped the connection (503 with
    Retry-After): the request's transaction rolled back; send it again."""

    def __init__(self) -> None:
        super().__init__("the server lost its database connection; try again")


class NoWorkerCan(Conflict):
    """No present worker could ever run what a run asks for (a GPU, an image
    build); the message names the workers and their capacities."""


class TooMany(Conflict):
    """A user holds too many of something open at once (sign-in links)."""
