"""The conversion of uploads an earlier cast stored in an S3 bucket under the
layout before content addressing (until 887bee8):
`<prefix>uploads/<name>/<generation>/<path>`, one object per file, each with
its sha256 signed into its metadata, the generation a digest of the upload's
manifest (a replaced upload's objects went to a new one). Their rows in the
database are as today's (a path, size and sha256 per file); only the objects
are elsewhere, so reads, which look for `blobs/<owner id>/<sha256>`, found
none.

Owns `convert`, a pass the blob collector's loop runs first (at start-up,
then every period; one replica at a time): each object an upload's row
names, checked for the row's size and sha256, is copied inside the store to
its blob key under the owner's blob guard; once every file of the upload has
its blob whole, the upload's old objects (every generation) are deleted.
A crash anywhere leaves the old objects or the blobs, and the next pass goes
on from there: it copies only what is missing and deletes only once all is
there. An upload one of whose files has neither a blob nor a matching old
object keeps its old objects, and the pass says which file it lacks. Old
objects no live upload names (a crash of the earlier version between its
store and its commit, a deletion cut short) are deleted once older than
CAST_BLOB_GRACE_SECONDS, as the collector treats blobs; so are its
multipart uploads. Replicas of the earlier version must be stopped first:
they would still write the old layout.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from contextlib import nullcontext

from sqlalchemy import select

from cast.server.db import Database
from cast.server.models import Upload, UploadFile
from cast.server.services.object_files import blob_guard
from cast.server.services.objectstore import ObjectStore, StoredObject

log = logging.getLogger(__name__)


def convert(database: Database, *, store: ObjectStore, grace_seconds: float) -> list[str]:
    """One pass over what the store holds under the earlier layout; the names
    of the uploads whose objects it converted."""
    root = store.earlier_upload_prefix
    cutoff = time.time() - grace_seconds
    objects: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # name → (key, path, written)
    for key, written in store.listing(root):
        name, _, rest = key[len(root):].partition("/")
        _generation, _, path = rest.partition("/")
        objects[name].append((key, path, written))
    converted = [name for name, held in sorted(objects.items())
                 if _convert_upload(database, store=store, name=name, held=held, cutoff=cutoff)]
    store.abort_multipart_before(root, cutoff)
    return converted


def _live_files(database: Database, name: str) -> tuple[int | None, list[tuple[str, StoredObject]]]:
    """The owner of upload `name` and its files' (path, size and sha256), if it is stored."""
    with database.transaction(write=False) as session:
        upload = session.get(Upload, name)
        if upload is None or upload.deleted_at is not None:
            return None, []
        rows = session.scalars(select(UploadFile).where(UploadFile.upload_name == name,
                                                        ~UploadFile.path.endswith("/")))
        return upload.owner_id, [(row.path, StoredObject(row.size, row.sha256)) for row in rows]


def _convert_upload(database: Database, *, store: ObjectStore, name: str, held: list[tuple[str, str, float]],
                    cutoff: float) -> bool:
    """Upload `name`'s old objects `held` converted (True), or left as they are."""
    owner_id, _rows = _live_files(database, name)
    with blob_guard(database.engine, owner_id) if owner_id is not None else nullcontext():
        # Read under the guard: a deletion or a replacement committed since
        # leaves rows that no longer name these contents.
        again, rows = _live_files(database, name)
        if again != owner_id or not rows:  # no live upload names them
            store.delete_keys(key for key, _path, written in held if written < cutoff)
            return False
        by_path: dict[str, list[str]] = defaultdict(list)
        for key, path, _written in held:
            by_path[path].append(key)
        done: set[str] = set()
        lacking: list[str] = []
        for path, wanted in rows:
            blob = store.blob_key(owner_id, wanted.sha256)
            if wanted.sha256 in done or store.head(blob) == wanted:
                done.add(wanted.sha256)
                continue
            source = next((key for key in by_path.get(path, []) if store.head(key) == wanted), None)
            if source is not None:
                store.copy(source, blob, wanted.sha256)
            if source is None or store.head(blob) != wanted:
                lacking.append(path)
                continue
            done.add(wanted.sha256)
    if lacking:
        log.warning("upload %r: no whole object of %s in the store under either layout (the next pass "
                    "looks again); its objects under %s%s/ are kept", name, lacking[:10],
                    store.earlier_upload_prefix, name)
        return False
    store.delete_keys(key for key, _path, _written in held)
    return True
