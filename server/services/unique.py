"""Rows under a key two server replicas may take at the same moment.

On SQLite every write transaction holds the database's write lock, so a
service's "is the name free?" read and its insert cannot interleave with
another writer's. PostgreSQL runs at READ COMMITTED without that lock: two
replicas can both read a name as free, and the second insert fails on the
unique key. This module owns the two ways the services stay right there: an
insert that reports a taken key instead of failing the transaction, and a
lock on a key with no unique index behind it (a run's submit key).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session


def insert_once(session: Session, row) -> bool:
    """Add and flush `row` in a savepoint: False, with nothing added and the
    transaction still usable, if a row with its key exists (committed by
    another transaction since the caller looked)."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def lock_key(session: Session, *parts: str) -> None:
    """Hold, until the transaction ends, a lock on the key made of `parts`, so
    that one transaction at a time reads and then inserts under it. PostgreSQL
    only: on SQLite the write lock already does."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256("\0".join(("cast:key", *parts)).encode()).digest()
    session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
