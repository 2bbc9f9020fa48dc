"""Code bundles: tars of a client's working tree, one per owner and key.

The client's key hashes its HEAD sha and uncommitted diff, which another user
could know, so a key only names a bundle among its owner's bundles. The tar is
stored by its digest (the sha256 of the bytes received), which runs record
and workers fetch by: no user's upload can stand in for another's code.

A bundle is checked while it is received (regular files and folders only, no
links, no absolute or `..` names) so a worker can extract it safely, and it
becomes visible only once complete. Receiving takes the Database rather than
a session: a transfer may take minutes and must not hold a transaction.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from cast.server.db import Database
from cast.server.errors import BadRequest, CodeNotFound
from cast.server.models import CodeBundle, User
from cast.server.services import storage, unique
from cast.server.services.objectstore import object_store
from cast.server.settings import Settings


def find(session: Session, *, owner: User, key: str) -> CodeBundle:
    bundle = session.get(CodeBundle, (owner.id, key))
    if bundle is None:
        raise CodeNotFound(key)
    return bundle


def exists(session: Session, *, owner: User, key: str) -> bool:
    return session.get(CodeBundle, (owner.id, key)) is not None


def store(database: Database, *, settings: Settings, owner: User, key: str, source: BinaryIO) -> bool:
    """Store the bundle; False if the owner already had the key (the body is then ignored)."""
    with database.transaction(write=False) as session:
        if exists(session, owner=owner, key=key):
            return False
    staging = storage.new_temp_dir(settings)
    try:
        received = storage.write_file(source, staging / "bundle.tar", max_bytes=settings.max_code_bytes,
                                      what="code bundle")
        # Extract into scratch space: the same checks a run's outputs get.
        check = staging / "check"
        check.mkdir()
        with open(staging / "bundle.tar", "rb") as again:
            storage.extract_tar(again, check, max_bytes=settings.max_code_bytes, what="code bundle")
        if (objects := object_store(settings)) is not None:
            # Stored by digest before the row: the same bytes whoever sent them.
            objects.put_file(objects.code_key(received.sha256), staging / "bundle.tar", received.sha256)
        with database.transaction() as session:
            if exists(session, owner=owner, key=key):
                return False
            if not unique.insert_once(session, CodeBundle(owner_id=owner.id, key=key, digest=received.sha256,
                                                          size=received.size)):
                return False  # another replica stored it since
            if objects is None:
                # Same digest, same bytes: replacing another owner's copy changes nothing.
                os.replace(staging / "bundle.tar", storage.code_bundle_path(settings, received.sha256))
        return True
    except tarfile.TarError as error:
        raise BadRequest(f"code bundle is not a tar: {error}") from None
    finally:
        storage.remove(staging)


def owned_path(session: Session, *, settings: Settings, owner: User, key: str) -> Path:
    """The file of one of `owner`'s bundles, by the client's key."""
    return storage.code_bundle_path(settings, find(session, owner=owner, key=key).digest)


def object_url(settings: Settings, digest: str) -> str | None:
    """With an object store, a presigned GET of the bundle `digest` (the caller
    checked who may read it); None with the filesystem store."""
    objects = object_store(settings)
    return None if objects is None else objects.presign_get(objects.code_key(digest))


def path_by_digest(session: Session, *, settings: Settings, digest: str) -> Path:
    """The file a run's `code_digest` names (for workers)."""
    if session.scalars(select(CodeBundle.key).where(CodeBundle.digest == digest).limit(1)).first() is None:
        raise CodeNotFound(digest)
    return storage.code_bundle_path(settings, digest)
