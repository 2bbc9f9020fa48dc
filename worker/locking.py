"""File locks shared by the worker's caches (environments, the package cache,
git mirrors, code bundles, mounts): one builder per cache entry, across
threads and processes."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, *, shared: bool = False):
    """Hold a lock on `path` (created if missing) for the block: exclusive, or
    `shared` with other shared holders (builds using a cache that an exclusive
    holder may clear)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_lock(path: Path):
    """An open file holding an exclusive lock on `path` for as long as it stays
    open, or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle
