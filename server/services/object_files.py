"""Outputs, uploads and mounts when they live in the S3 object store: the
server signs and checks, the bytes go straight between the store and the
worker or the CLI (cast.protocol.objects says how).

Owns the plan of an output push (presigned PUTs or the missing parts of a
multipart upload, for the keys of the run whose lease was presented and no
other), its commit (every object checked for the manifest's size and signed
sha256, and only then recorded: a partial push is never visible), the
uploads' objects (content addressed within their owner's uploads: planned and
committed as an output push is, by `cast upload`, or sent by the server from
its temporary folder for a relayed upload; an object no upload of its owner
names any more is removed once the change that dropped it commits), the file
list a worker fetches a mount from, and what a download answers: a presigned
GET for one file, the objects as a tar for a folder.

Blob objects are also collected: an upload planned and never committed, or
a crash between a deletion's commit and its removal, leaves objects nothing
names. `collect_blobs`, a periodic pass, deletes those written more than
CAST_BLOB_GRACE_SECONDS ago (an upload still under way wrote its objects
since); the same pass aborts the multipart uploads an output push left
under a run that is final, which nothing resumes. Every removal of a blob
and every commit that names one hold the
owner's blob guard (`blob_guard`): a commit checks the store and records its
rows under it, a removal reads the references again and deletes under it, so
a commit naming a content either committed first (and the object stays) or
checks after the deletion (and is told to push again): a committed upload
never names a missing object.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cast.protocol.names import name_problem, printable
from cast.protocol.objects import (
    MAX_PARTS, MULTIPART_BYTES, FileUpload, ObjectEntry, ObjectFile, ObjectManifest, ObjectPlan, PartUpload,
    UploadManifest, empty_folders, part_count,
)
from cast.protocol.status import FINAL_STATUSES
from cast.protocol.validate import SpecError, normalize_relative_path, parse_resource, validate_upload_name
from cast.server.db import Database
from cast.server.errors import BadRequest, NameTaken, PathNotFound, TooLarge
from cast.server.models import OutputFile, Run, Upload, UploadFile
from cast.server.services import files, unique
from cast.server.services.objectstore import ObjectStore

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FINAL = [status.value for status in FINAL_STATUSES]


def _check_manifest(manifest: ObjectManifest | UploadManifest, *, max_bytes: int, what: str) -> None:
    seen: set[str] = set()
    total = 0
    for entry in manifest.files:
        try:
            clean = normalize_relative_path(entry.path, what=f"{what} path")
        except SpecError as error:
            raise BadRequest(str(error)) from None
        if clean != entry.path or entry.path in seen:
            raise BadRequest(f"{what}: '{printable(entry.path)}' is not a clean path, or is named twice")
        if problem := name_problem(entry.path):
            raise BadRequest(f"{what}: '{printable(entry.path)}' cannot be stored: {problem}")
        if not _SHA256.fullmatch(entry.sha256) or entry.size < 0:
            raise BadRequest(f"{what}: '{printable(entry.path)}' needs a size and a lowercase hex sha256")
        if part_count(entry.size) > MAX_PARTS:
            raise TooLarge(f"{what}: '{printable(entry.path)}' is larger than the store takes in one object")
        seen.add(entry.path)
        total += entry.size
    if total > max_bytes:
        raise TooLarge(f"{what} exceeds the limit of {max_bytes} bytes")


def _empty_folders(manifest: ObjectManifest | UploadManifest, *, what: str) -> list[str]:
    """The manifest's folders with nothing inside (kept as entries of their own), once checked."""
    for folder in manifest.folders:
        try:
            clean = normalize_relative_path(folder, what=f"{what} folder")
        except SpecError as error:
            raise BadRequest(str(error)) from None
        if clean != folder:
            raise BadRequest(f"{what}: the folder '{printable(folder)}' is not a clean path")
        if problem := name_problem(folder):
            raise BadRequest(f"{what}: the folder '{printable(folder)}' cannot be stored: {problem}")
    return empty_folders((entry.path for entry in manifest.files), manifest.folders)


# --- outputs ------------------------------------------------------------------------

def plan_outputs(database: Database, *, store: ObjectStore, max_bytes: int, run_id: int,
                 manifest: ObjectManifest) -> ObjectPlan:
    """How the worker holding run `run_id`'s lease stores each file of `manifest`
    not already stored whole (a retried push uploads only what is missing)."""
    what = f"the output of run {run_id}"
    _check_manifest(manifest, max_bytes=max_bytes, what=what)
    with database.transaction(write=False) as session:
        files._check_push(session, run_id=run_id, lease_token=manifest.lease_token)
    prefix = store.run_prefix(run_id)
    return _plan(store, ((prefix + entry.path, entry) for entry in manifest.files))


def _plan(store: ObjectStore, keyed: Iterable[tuple[str, ObjectEntry]]) -> ObjectPlan:
    """A PUT, or the parts still missing, for each (key, entry) the store does not hold whole."""
    plan = ObjectPlan()
    for key, entry in keyed:
        held = store.head(key)
        if held is not None and held.size == entry.size and held.sha256 == entry.sha256:
            continue
        if entry.size <= MULTIPART_BYTES:
            plan.uploads.append(FileUpload(path=entry.path, url=store.presign_put(key, entry.sha256)))
            continue
        upload_id, held_parts = store.multipart(key, entry.sha256)
        count = part_count(entry.size)
        missing = [n for n in range(1, count + 1)
                   if held_parts.get(n) != min(MULTIPART_BYTES, entry.size - (n - 1) * MULTIPART_BYTES)]
        plan.uploads.append(FileUpload(path=entry.path, part_size=MULTIPART_BYTES,
                                       parts=[PartUpload(n, store.presign_part(key, upload_id, n)) for n in missing]))
    return plan


def _check_stored(store: ObjectStore, keyed: Iterable[tuple[str, ObjectEntry]], *, what: str) -> None:
    """Each (key, entry) in the store whole (a finished multipart upload joined first), or BadRequest."""
    for key, entry in keyed:
        if entry.size > MULTIPART_BYTES and (upload_id := store.pending_multipart(key)) is not None:
            store.complete_multipart(key, upload_id)
        held = store.head(key)
        if held is None or held.size != entry.size or held.sha256 != entry.sha256:
            raise BadRequest(f"{what}: '{printable(entry.path)}' is not in the object store whole; push it again")


def commit_outputs(database: Database, *, store: ObjectStore, max_bytes: int, run_id: int,
                   manifest: ObjectManifest) -> tuple[int, int]:
    """Make the objects the worker stored run `run_id`'s outputs, once each is
    there whole; (files, bytes). Objects under the run's prefix that the
    manifest does not name (an earlier attempt's) are removed."""
    what = f"the output of run {run_id}"
    _check_manifest(manifest, max_bytes=max_bytes, what=what)
    folders = _empty_folders(manifest, what=what)
    with database.transaction(write=False) as session:
        files._check_push(session, run_id=run_id, lease_token=manifest.lease_token)
    prefix = store.run_prefix(run_id)
    _check_stored(store, ((prefix + entry.path, entry) for entry in manifest.files), what=what)
    total = sum(entry.size for entry in manifest.files)
    with database.transaction() as session:
        run = files._check_push(session, run_id=run_id, lease_token=manifest.lease_token)
        session.execute(delete(OutputFile).where(OutputFile.run_id == run_id))
        session.add_all(OutputFile(run_id=run_id, path=e.path, size=e.size, sha256=e.sha256) for e in manifest.files)
        session.add_all(files.folder_rows(OutputFile, folders, run_id=run_id))
        run.outputs_size = total
        session.flush()
    named = {prefix + entry.path for entry in manifest.files}
    store.delete_keys(key for key in store.keys(prefix) if key not in named)
    return len(manifest.files), total


# --- uploads ------------------------------------------------------------------------

def _distinct(store: ObjectStore, owner_id: int, entries: Iterable) -> list[tuple[str, ObjectEntry]]:
    """(key, entry) once per content: the first entry of each sha256 names it."""
    keyed: dict[str, ObjectEntry] = {}
    for entry in entries:
        keyed.setdefault(entry.sha256, ObjectEntry(entry.path, entry.size, entry.sha256))
    return [(store.blob_key(owner_id, sha), entry) for sha, entry in keyed.items()]


def _check_upload(manifest: UploadManifest, *, name: str, max_bytes: int) -> tuple[str, list[str]]:
    """The upload's description in messages and its empty folders, once checked."""
    validate_upload_name(name)
    what = f"upload {name!r}"
    if manifest.kind not in ("file", "dir"):
        raise BadRequest(f"{what}: kind must be 'file' or 'dir', not {printable(manifest.kind)!r}")
    if manifest.kind == "file" and ([e.path for e in manifest.files] != [name] or manifest.folders):
        raise BadRequest(f"{what}: a file upload is one file, named as the upload")
    _check_manifest(manifest, max_bytes=max_bytes, what=what)
    return what, _empty_folders(manifest, what=what)


def plan_upload(database: Database, *, store: ObjectStore, max_bytes: int, owner, name: str,
                manifest: UploadManifest) -> ObjectPlan:
    """How the CLI stores each content of `manifest` that `owner`'s uploads do
    not hold yet (refused at once if the name is not free to take)."""
    _check_upload(manifest, name=name, max_bytes=max_bytes)
    with database.transaction(write=False) as session:
        files._taken_name(session, name=name, owner=owner, replace=manifest.replace)
    return _plan(store, _distinct(store, owner.id, manifest.files))


def commit_upload(database: Database, *, store: ObjectStore, max_bytes: int, owner, name: str,
                  manifest: UploadManifest) -> Upload:
    """Record `uploads/NAME` from objects the CLI stored, once each is there whole.
    Only `owner`'s own objects can be named: their keys derive from the owner,
    and only a plan for that owner signs a URL for them."""
    what, folders = _check_upload(manifest, name=name, max_bytes=max_bytes)
    with blob_guard(database.engine, owner.id):
        _check_stored(store, _distinct(store, owner.id, manifest.files), what=what)
        return _record_upload(database, store=store, owner=owner, name=name, kind=manifest.kind,
                              entries=manifest.files, folders=folders, replace=manifest.replace)


# One process serves a SQLite database: a lock in it guards every owner's blobs
# (re-entered by an admin's replacing of another user's upload).
_LOCAL_GUARD = threading.RLock()


@contextmanager
def blob_guard(engine: Engine, owner_id: int) -> Iterator[None]:
    """Held by a commit from its check of the store until its rows commit, and
    by a removal of blobs from its reading of the references until the
    objects are deleted: one at a time for `owner_id`'s blobs (on PostgreSQL
    across replicas, a session advisory lock on a connection of its own; no
    database transaction is held while the store answers)."""
    if engine.dialect.name != "postgresql":
        with _LOCAL_GUARD:
            yield
        return
    key = int.from_bytes(hashlib.sha256(f"cast:blobs\0{int(owner_id)}".encode()).digest()[:8], "big", signed=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(select(func.pg_advisory_lock(key)))
        try:
            yield
        finally:
            with suppress(DBAPIError):  # a lost connection has released it
                connection.execute(select(func.pg_advisory_unlock(key)))


def remove_unnamed_blobs(engine: Engine, *, store: ObjectStore, owner_id: int, shas: Iterable[str]) -> list[str]:
    """Delete the objects of `owner_id`'s contents among `shas` that no upload
    names, the references read under the owner's blob guard; the keys deleted."""
    shas = list(shas)
    if not shas:
        return []
    with blob_guard(engine, owner_id):
        with Session(engine) as session, session.begin():
            keys = unreferenced_blobs(session, store=store, owner_id=owner_id, shas=shas)
        store.delete_keys(keys)
    return keys


_BLOB = re.compile(r"(\d{1,18})/([0-9a-f]{64})")


def collect_blobs(database: Database, *, store: ObjectStore, grace_seconds: float) -> list[str]:
    """One pass of the blob collector: delete the blob objects no upload names
    that were written more than `grace_seconds` ago, and abort multipart
    uploads of blobs begun before then and those of final runs' pushes; the
    keys deleted."""
    cutoff = time.time() - grace_seconds
    stale: dict[int, list[str]] = {}
    for key, written in store.listing(store.blob_prefix):
        if written < cutoff and (match := _BLOB.fullmatch(key[len(store.blob_prefix):])):
            stale.setdefault(int(match[1]), []).append(match[2])
    removed = []
    for owner_id, shas in sorted(stale.items()):
        removed += remove_unnamed_blobs(database.engine, store=store, owner_id=owner_id, shas=shas)
    store.abort_multipart_before(store.blob_prefix, cutoff)
    _abort_pushes_of_final_runs(database, store)
    return removed


_RUN_KEY = re.compile(r"(\d{1,18})/")


def _abort_pushes_of_final_runs(database: Database, store: ObjectStore) -> None:
    """Abort the multipart uploads a push of outputs left under a run that is
    final (a push that failed for good): no worker pushes to it again, and
    the store keeps an upload's parts until it is aborted. A run still going
    (or interrupted, to be tried again) keeps its upload, which its next push resumes."""

    def abandoned(key: str, _initiated: float) -> bool:
        if (match := _RUN_KEY.match(key[len(store.runs_prefix):])) is None:
            return False
        with database.transaction(write=False) as session:
            status = session.scalar(select(Run.status).where(Run.id == int(match[1])))
        return status is None or status in _FINAL

    store.abort_multipart_where(store.runs_prefix, abandoned)


def unreferenced_blobs(session: Session, *, store: ObjectStore, owner_id: int, shas: Iterable[str]) -> list[str]:
    """The keys of the contents among `shas` that no upload of `owner_id` names
    (as `session`'s flushed changes leave them)."""
    candidates = sorted(set(shas) - {""})  # "": an empty folder's row
    named: set[str] = set()
    for start in range(0, len(candidates), 500):
        batch = candidates[start:start + 500]
        named.update(session.scalars(
            select(UploadFile.sha256).join(Upload, Upload.name == UploadFile.upload_name)
            .where(Upload.owner_id == owner_id, UploadFile.sha256.in_(batch)).distinct()))
    return [store.blob_key(owner_id, sha) for sha in candidates if sha not in named]


def _record_upload(database: Database, *, store: ObjectStore, owner, name: str, kind: str, entries,
                   folders: list[str], replace: bool) -> Upload:
    """Commit the rows of `uploads/NAME` (its objects are stored), taking the
    place of a replaced upload; then the objects only that one named are
    removed. The caller holds the owner's blob guard."""
    with database.transaction() as session:
        # Checked again under the write lock: a run may have mounted it meanwhile.
        replaced: list[str] = []
        if (existing := files._taken_name(session, name=name, owner=owner, replace=replace)) is not None:
            replaced = list(session.scalars(select(UploadFile.sha256).where(UploadFile.upload_name == name)))
            session.execute(delete(UploadFile).where(UploadFile.upload_name == name))
            session.delete(existing)
            session.flush()
        upload = Upload(name=name, owner_id=owner.id, kind=kind, size=sum(f.size for f in entries), files=len(entries))
        if not unique.insert_once(session, upload):  # another replica took the name since
            raise NameTaken(f"upload {name!r} already exists")
        session.add_all(UploadFile(upload_name=name, path=f.path, size=f.size, sha256=f.sha256) for f in entries)
        session.add_all(files.folder_rows(UploadFile, folders, upload_name=name))
        session.flush()
        mine = existing is None or existing.owner_id == owner.id
        dropped = unreferenced_blobs(session, store=store, owner_id=owner.id, shas=replaced) if mine else []
    if mine:
        store.delete_keys(dropped)
    else:  # an admin replaced another user's upload: that user's blobs, under their guard
        remove_unnamed_blobs(database.engine, store=store, owner_id=existing.owner_id, shas=replaced)
    return upload


def store_upload(database: Database, *, store: ObjectStore, owner, name: str, kind: str, stored, content,
                 replace: bool) -> Upload:
    """Record `uploads/NAME` whose files the server received into `content`
    (a relayed upload): the contents the store lacks are sent first, then the
    rows committed."""
    paths = {item.sha256: (content if kind == "file" else content / item.path) for item in stored}
    folders = [] if kind == "file" else files.empty_folders_in(content)
    with blob_guard(database.engine, owner.id):
        for key, entry in _distinct(store, owner.id, stored):
            held = store.head(key)
            if held is None or held.size != entry.size or held.sha256 != entry.sha256:
                store.put_file(key, paths[entry.sha256], entry.sha256)
        return _record_upload(database, store=store, owner=owner, name=name, kind=kind, entries=stored,
                              folders=folders, replace=replace)


# --- reads --------------------------------------------------------------------------

def _rows_and_keys(session: Session, store: ObjectStore,
                   resource: str) -> tuple[list[tuple[str, int, str, str]], list[str], str]:
    """(path, size, sha256, key) of every file of `resource`, its empty folders, and its kind."""
    try:
        parsed = parse_resource(resource)
    except SpecError as error:
        raise BadRequest(str(error)) from None
    if parsed.kind == "runs":
        rows = list(session.scalars(select(OutputFile).where(OutputFile.run_id == parsed.run_id)))
        prefix = store.run_prefix(parsed.run_id)
        key_of = lambda row: prefix + row.path  # noqa: E731
    else:
        upload = session.get(Upload, parsed.name)
        if upload is None or upload.deleted_at is not None:
            raise PathNotFound(resource)
        rows = list(session.scalars(select(UploadFile).where(UploadFile.upload_name == upload.name)))
        key_of = lambda row: store.blob_key(upload.owner_id, row.sha256)  # noqa: E731
    # An empty folder's row is its path and a trailing '/' (files.folder_rows).
    keyed = [(r.path, r.size, r.sha256, key_of(r)) for r in rows if not r.path.endswith("/")]
    folders = [r.path[:-1] for r in rows if r.path.endswith("/")]
    if parsed.kind != "runs" and upload.kind == "file":
        return [("", size, sha, key) for _, size, sha, key in keyed], [], "file"
    return _select(keyed, folders, parsed.subpath, resource)


def _select(keyed, folders: list[str], sub: str, resource: str):
    if not sub:
        return keyed, folders, "dir"
    exact = [("", *rest) for path, *rest in keyed if path == sub]
    if exact:
        return exact, [], "file"
    inside = [(path[len(sub) + 1:], *rest) for path, *rest in keyed if path.startswith(sub + "/")]
    inner = [folder[len(sub) + 1:] for folder in folders if folder.startswith(sub + "/")]
    if not inside and not inner and sub not in folders:
        raise PathNotFound(resource)
    return inside, inner, "dir"


def mount_files(session: Session, *, store: ObjectStore, resource: str) -> tuple[list[ObjectFile], list[str]]:
    """The files a worker fetches to mount `resource`, each with a presigned
    GET, and the empty folders it makes."""
    keyed, folders, _kind = _rows_and_keys(session, store, resource)
    return [ObjectFile(path=path, size=size, sha256=sha, url=store.presign_get(key))
            for path, size, sha, key in keyed], folders


def download(session: Session, *, store: ObjectStore, resource: str, name: str):
    """A presigned GET (str) for one file, or the (name, key, size) entries of
    a folder's tar (an empty folder's key is None)."""
    keyed, folders, kind = _rows_and_keys(session, store, resource)
    if kind == "file":
        return store.presign_get(keyed[0][3], filename=name.rstrip("/").rsplit("/", 1)[-1] or "file")
    return sorted([(path, key, size) for path, size, _sha, key in keyed] + [(folder, None, 0) for folder in folders])

