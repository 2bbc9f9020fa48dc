"""Code bundles: tars of a client's working tree, stored once per content key.

A bundle is checked while it is received (regular files and folders only, no
links, no absolute or `..` names) so a worker can extract it safely, and it
becomes visible only once complete.
"""

from __future__ import annotations

import os
import tarfile
from typing import BinaryIO

from cast.server.db import Database
from cast.server.errors import BadRequest, CodeNotFound
from cast.server.models import CodeBundle, User
from cast.server.services import storage
from cast.server.settings import Settings


def exists(database: Database, *, key: str) -> bool:
    with database.session(write=False) as session:
        return session.get(CodeBundle, key) is not None


def store(database: Database, *, settings: Settings, owner: User, key: str, source: BinaryIO) -> bool:
    """Store the bundle; False if the key was already there (the body is then ignored)."""
    if exists(database, key=key):
        return False
    staging = storage.new_temp_dir(settings)
    try:
        bundle = storage.write_file(source, staging / "bundle.tar", max_bytes=settings.max_code_bytes,
                                    what="code bundle")
        # Extract into scratch space: the same checks a run's outputs get.
        check = staging / "check"
        check.mkdir()
        with open(staging / "bundle.tar", "rb") as again:
            storage.extract_tar(again, check, max_bytes=settings.max_code_bytes, what="code bundle")
        with database.session(write=True) as session:
            if session.get(CodeBundle, key) is not None:
                return False
            session.add(CodeBundle(key=key, owner_id=owner.id, size=bundle.size))
            session.flush()
            os.replace(staging / "bundle.tar", storage.code_bundle_path(settings, key))
            session.commit()
        return True
    except tarfile.TarError as error:
        raise BadRequest(f"code bundle is not a tar: {error}") from None
    finally:
        storage.remove(staging)


def path(database: Database, *, settings: Settings, key: str):
    if not exists(database, key=key):
        raise CodeNotFound(key)
    return storage.code_bundle_path(settings, key)
