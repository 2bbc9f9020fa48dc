"""Outputs, uploads and mounts when they live in the S3 object store: the
server signs and checks, the bytes go straight between the store and the
worker or the CLI (cast.protocol.objects says how).

Owns the plan of an output push (presigned PUTs or the missing parts of a
multipart upload, for the keys of the run whose lease was presented and no
other), its commit (every object checked for the manifest's size and signed
sha256, and only then recorded: a partial push is never visible), the
uploads' objects (sent by the server from its temporary folder, under a key
generation so a replaced upload's objects are swapped only on commit), the
file list a worker fetches a mount from, and what a download answers: a
presigned GET for one file, the objects as a tar for a folder.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cast.protocol.names import name_problem, printable
from cast.protocol.objects import (
    MAX_PARTS, MULTIPART_BYTES, FileUpload, ObjectFile, ObjectManifest, ObjectPlan, PartUpload,
    part_count,
)
from cast.protocol.validate import SpecError, normalize_relative_path, parse_resource
from cast.server.db import Database
from cast.server.errors import BadRequest, NameTaken, PathNotFound, TooLarge
from cast.server.models import OutputFile, Upload, UploadFile
from cast.server.services import files, unique
from cast.server.services.objectstore import ObjectStore

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_manifest(manifest: ObjectManifest, *, max_bytes: int, what: str) -> None:
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
    plan = ObjectPlan()
    for entry in manifest.files:
        key = prefix + entry.path
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


def commit_outputs(database: Database, *, store: ObjectStore, max_bytes: int, run_id: int,
                   manifest: ObjectManifest) -> tuple[int, int]:
    """Make the objects the worker stored run `run_id`'s outputs, once each is
    there whole; (files, bytes). Objects under the run's prefix that the
    manifest does not name (an earlier attempt's) are removed."""
    what = f"the output of run {run_id}"
    _check_manifest(manifest, max_bytes=max_bytes, what=what)
    with database.transaction(write=False) as session:
        files._check_push(session, run_id=run_id, lease_token=manifest.lease_token)
    prefix = store.run_prefix(run_id)
    for entry in manifest.files:
        key = prefix + entry.path
        if entry.size > MULTIPART_BYTES and (upload_id := store.pending_multipart(key)) is not None:
            store.complete_multipart(key, upload_id)
        held = store.head(key)
        if held is None or held.size != entry.size or held.sha256 != entry.sha256:
            raise BadRequest(f"{what}: '{printable(entry.path)}' is not in the object store whole; push it again")
    total = sum(entry.size for entry in manifest.files)
    with database.transaction() as session:
        run = files._check_push(session, run_id=run_id, lease_token=manifest.lease_token)
        session.execute(delete(OutputFile).where(OutputFile.run_id == run_id))
        session.add_all(OutputFile(run_id=run_id, path=e.path, size=e.size, sha256=e.sha256) for e in manifest.files)
        run.outputs_size = total
        session.flush()
    named = {prefix + entry.path for entry in manifest.files}
    store.delete_keys(key for key in store.keys(prefix) if key not in named)
    return len(manifest.files), total


# --- uploads ------------------------------------------------------------------------

def upload_generation(rows) -> str:
    """The key folder of an upload's objects, from its manifest: a replaced
    upload's objects go to a new folder, so the old ones serve until the commit."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        digest.update(f"{row.path}\0{row.size}\0{row.sha256}\n".encode())
    return digest.hexdigest()[:16]


def upload_key(store: ObjectStore, name: str, generation: str, path: str) -> str:
    return f"{store.upload_prefix(name)}{generation}/{path}"


def put_upload(store: ObjectStore, *, name: str, stored, source_root, kind: str) -> str:
    """Send a received upload's files from the server's temporary folder to the
    store (before its rows commit); their generation."""
    generation = upload_generation(stored)
    for item in stored:
        local = source_root if kind == "file" else source_root / item.path
        store.put_file(upload_key(store, name, generation, item.path), local, item.sha256)
    return generation


def drop_other_generations(store: ObjectStore, *, name: str, keep: str | None) -> None:
    prefix = store.upload_prefix(name)
    keep_prefix = f"{prefix}{keep}/" if keep else None
    store.delete_keys(k for k in store.keys(prefix) if keep_prefix is None or not k.startswith(keep_prefix))


# --- reads --------------------------------------------------------------------------

def _rows_and_keys(session: Session, store: ObjectStore, resource: str) -> tuple[list[tuple[str, int, str, str]], str]:
    """(path, size, sha256, key) of every file of `resource`, and its kind."""
    try:
        parsed = parse_resource(resource)
    except SpecError as error:
        raise BadRequest(str(error)) from None
    if parsed.kind == "runs":
        rows = list(session.scalars(select(OutputFile).where(OutputFile.run_id == parsed.run_id)))
        prefix = store.run_prefix(parsed.run_id)
        keyed = [(r.path, r.size, r.sha256, prefix + r.path) for r in rows]
    else:
        upload = session.get(Upload, parsed.name)
        if upload is None or upload.deleted_at is not None:
            raise PathNotFound(resource)
        rows = list(session.scalars(select(UploadFile).where(UploadFile.upload_name == upload.name)))
        generation = upload_generation(rows)
        keyed = [(r.path, r.size, r.sha256, upload_key(store, upload.name, generation, r.path)) for r in rows]
        if upload.kind == "file":
            return [("", size, sha, key) for _, size, sha, key in keyed], "file"
    return _select(keyed, parsed.subpath, resource)


def _select(keyed, sub: str, resource: str):
    if not sub:
        return keyed, "dir"
    exact = [("", *rest) for path, *rest in keyed if path == sub]
    if exact:
        return exact, "file"
    inside = [(path[len(sub) + 1:], *rest) for path, *rest in keyed if path.startswith(sub + "/")]
    if not inside:
        raise PathNotFound(resource)
    return inside, "dir"


def mount_files(session: Session, *, store: ObjectStore, resource: str) -> list[ObjectFile]:
    """The files a worker fetches to mount `resource`, each with a presigned GET."""
    keyed, _kind = _rows_and_keys(session, store, resource)
    return [ObjectFile(path=path, size=size, sha256=sha, url=store.presign_get(key)) for path, size, sha, key in keyed]


def download(session: Session, *, store: ObjectStore, resource: str, name: str):
    """A presigned GET (str) for one file, or the (name, key, size) entries of a folder's tar."""
    keyed, kind = _rows_and_keys(session, store, resource)
    if kind == "file":
        return store.presign_get(keyed[0][3], filename=name.rstrip("/").rsplit("/", 1)[-1] or "file")
    return [(path, key, size) for path, size, _sha, key in sorted(keyed)]


def store_upload(database: Database, *, store: ObjectStore, owner, name: str, kind: str, stored, content,
                 replace: bool) -> Upload:
    """Record `uploads/NAME` whose files the server received into `content`:
    its objects are sent under a new generation first, its rows then committed,
    and only then the replaced upload's objects removed."""
    generation = put_upload(store, name=name, stored=stored, source_root=content, kind=kind)
    with database.transaction() as session:
        # Checked again under the write lock: a run may have mounted it meanwhile.
        if (existing := files._taken_name(session, name=name, owner=owner, replace=replace)) is not None:
            session.execute(delete(UploadFile).where(UploadFile.upload_name == name))
            session.delete(existing)
            session.flush()
        upload = Upload(name=name, owner_id=owner.id, kind=kind, size=sum(f.size for f in stored), files=len(stored))
        if not unique.insert_once(session, upload):  # another replica took the name since
            raise NameTaken(f"upload {name!r} already exists")
        session.add_all(UploadFile(upload_name=name, path=f.path, size=f.size, sha256=f.sha256) for f in stored)
        session.flush()
    drop_other_generations(store, name=name, keep=generation)
    return upload
