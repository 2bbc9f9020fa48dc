"""A worker's side of the S3 object store (a lease with `object_store`): the
output push straight to the store, and the content-addressed cache that
mounts are made from. The control plane only signs and checks
(cast.protocol.objects); no byte of a file passes through it.

The push hashes each file once, asks the server for a plan, uploads what the
plan lists (one PUT, or the missing parts of a multipart upload) and commits;
the outbox calls it again after a failure, and the new plan lists only what
the store does not hold yet, so a push cut off by an outage resumes.

The cache keeps every fetched file under `<cache>/sha256/<aa>/<digest>`,
checked against its sha256 as it arrives, so a dataset mounted by many runs on
this host is fetched once; each mount is a sealed folder of hardlinks to the
cached files (a copy where a link cannot be made), kept by resource and
rebuilt from the cache. A run pins the folders it mounted (a shared lock on
the folder's marker, held until the run releases it or its worker dies), and
the cache stays within its bound (`--cache-bytes`): after each mount the
unpinned folders used longest ago are dropped, with the cached files only they
linked, until it fits. `prune` (`cast cache prune`) drops the unpinned
folders not used for a while and every cached file that no folder links.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from cast.protocol.worker_messages import LeaseMount
from cast.protocol.objects import SHA256_HEADER, ObjectEntry, ObjectFile, ObjectManifest
from cast.worker.client import Refused, ServerClient, ServerUnavailable, with_retries
from cast.worker.fsops import DirCursor, open_output, open_regular, remove_tree

CHUNK = 1 << 20
DEFAULT_CACHE_BYTES = 20 << 30


def _store_call(send: Callable[[], httpx.Response], what: str) -> httpx.Response:
    """One request to the store: an outage or a 5xx is retried by the caller
    (the outbox), as is a 403 (a presigned URL that expired: the next plan signs
    new ones); anything else is refused."""
    try:
        response = send()
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"cannot reach the object store ({what}): {exc}") from exc
    if response.status_code >= 500 or response.status_code in (403, 408, 429):
        raise ServerUnavailable(f"the object store answered {response.status_code} ({what})",
                                (response.status_code, response.text[:200]))
    if response.status_code >= 400:
        raise Refused(response.status_code, f"the object store refused {what}: {response.text[:200]}")
    return response


def _slice(path_handle, offset: int, length: int) -> Iterator[bytes]:
    path_handle.seek(offset)
    left = length
    while left > 0:
        chunk = path_handle.read(min(CHUNK, left))
        if not chunk:  # shrank since it was hashed: the size check at commit refuses it
            return
        left -= len(chunk)
        yield chunk


class PushCancelled(Exception):
    """An output push stopped half-way: its run was killed (nothing of it will be kept)."""


class ObjectPush:
    """The push of one run's outputs to the object store, called again for
    each attempt (the outbox's sender): files hashed once, then plan, upload,
    commit; stopped before the next file once `cancelled` says so."""

    def __init__(self, root: Path, files: list[str], folders: list[str], not_saved: Callable[[str, str], None],
                 cancelled: Callable[[], bool] = lambda: False):
        self._root, self._files, self._folders = root, files, folders
        self._not_saved = not_saved
        self._cancelled = cancelled
        self._entries: list[ObjectEntry] | None = None
        self._store = httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0))

    def _hash(self) -> list[ObjectEntry]:
        entries = []
        with DirCursor(self._root) as cursor:
            for rel in self._files:
                self._check()
                if (handle := open_output(cursor, rel, self._not_saved)) is None:
                    continue
                with handle:
                    digest, size = hashlib.sha256(), 0
                    while chunk := handle.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                entries.append(ObjectEntry(rel, size, digest.hexdigest()))
        return entries

    def __call__(self, client: ServerClient, run_id: int, lease_token: str) -> dict:
        if self._entries is None:
            self._entries = self._hash()
        manifest = ObjectManifest(lease_token=lease_token, files=self._entries, folders=list(self._folders))
        plan = client.plan_outputs(run_id, manifest)
        by_path = {entry.path: entry for entry in self._entries}
        with DirCursor(self._root) as cursor:
            for upload in plan.uploads:
                self._check()
                entry = by_path[upload.path]
                with open_regular(cursor, upload.path) as handle:
                    if upload.url is not None:
                        _store_call(lambda: self._store.put(
                            upload.url, content=_slice(handle, 0, entry.size),
                            headers={"Content-Length": str(entry.size), SHA256_HEADER: entry.sha256}),
                            f"the upload of {upload.path}")
                    for part in upload.parts:
                        offset = (part.number - 1) * upload.part_size
                        length = min(upload.part_size, entry.size - offset)
                        _store_call(lambda: self._store.put(
                            part.url, content=_slice(handle, offset, length), headers={"Content-Length": str(length)}),
                            f"part {part.number} of {upload.path}")
        return client.commit_outputs(run_id, manifest)

    def _check(self) -> None:
        if self._cancelled():
            raise PushCancelled("the output push stopped: the run was killed")


# --- the content-addressed cache for mounts -------------------------------------------

class ObjectCache:
    """Fetched files by sha256, and the sealed mount folders made from them."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = root
        self.blobs = root / "sha256"
        self.mounts = root / "mounts"
        self.max_bytes = max_bytes
        self._http: httpx.Client | None = None  # made at the first fetch: most workers never fetch
        self._pins: dict[int, list] = {}  # run id → open markers, each holding a shared lock

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def _fetch(self, item: ObjectFile) -> None:
        """The file `item` in the cache, fetched only if missing."""
        target = self.blob(item.sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{item.sha256}.{os.getpid()}.part")
        digest, size = hashlib.sha256(), 0
        if self._http is None:
            self._http = httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0))
        try:
            with self._http.stream("GET", item.url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ServerUnavailable(f"the object store answered {response.status_code}",
                                            (response.status_code, response.text[:200]))
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ServerUnavailable(f"cannot reach the object store: {exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if size != item.size or digest.hexdigest() != item.sha256:
            partial.unlink(missing_ok=True)
            raise Refused(502, f"{item.path or 'the file'} arrived with {size} bytes and another sha256 "
                               "than its manifest says")
        os.chmod(partial, 0o444)
        os.replace(partial, target)

    def mount(self, mount: LeaseMount, client: ServerClient, should_continue=lambda: True, *,
              run_id: int) -> Path:
        """A sealed folder (or file) holding `mount`'s resource, made from the
        cache and pinned for run `run_id`; the cache is then brought within its
        bound. The caller holds the cache's lock."""
        files, folders = with_retries(lambda: client.mount_objects(mount.resource), should_continue=should_continue)
        for item in files:
            with_retries(lambda: self._fetch(item), should_continue=should_continue)
        key = hashlib.sha256("\n".join([*(f"{f.path}\0{f.sha256}" for f in sorted(files, key=lambda f: f.path)),
                                         *(f"{empty}/" for empty in sorted(folders))])
                             .encode() + mount.resource.encode()).hexdigest()[:32]
        folder = self.mounts / key
        name = mount.resource.rstrip("/").rsplit("/", 1)[-1] or "data"
        data = folder / name
        if not (folder / "complete").exists():
            remove_tree(folder)
            folder.mkdir(parents=True)
            if mount.kind == "file":
                _link_or_copy(self.blob(files[0].sha256), data)
            else:
                data.mkdir()
                for item in files:
                    target = data / item.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(self.blob(item.sha256), target)
                for empty in folders:
                    (data / empty).mkdir(parents=True, exist_ok=True)
                for child in sorted(data.rglob("*"), reverse=True):
                    if child.is_dir():
                        os.chmod(child, 0o555)
                os.chmod(data, 0o555)
            (folder / "complete").write_text(mount.resource + "\n")
        os.utime(folder / "complete")
        marker = open(folder / "complete", "rb")
        fcntl.flock(marker, fcntl.LOCK_SH)
        self._pins.setdefault(run_id, []).append(marker)
        self.evict()
        return data

    def release(self, run_id: int) -> None:
        """Unpin what run `run_id` mounted (it ended)."""
        for marker in self._pins.pop(run_id, ()):
            marker.close()

    @staticmethod
    def _pinned(folder: Path) -> bool:
        """Whether a live run (of any worker on this cache) holds `folder`."""
        try:
            with open(folder / "complete", "rb") as marker:
                fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except FileNotFoundError:
            return False
        return False

    def evict(self) -> int:
        """Drop the unpinned mount folders used longest ago, and the cached
        files only they linked, until the cached files fit `max_bytes`; bytes freed."""
        freed = self._drop_unlinked()
        blobs = {(info := blob.stat()).st_ino: (blob, info.st_size) for blob in self.blobs.glob("*/*")}
        total = sum(size for _, size in blobs.values())
        used = []
        for folder in (self.mounts.glob("*") if self.mounts.is_dir() else ()):
            try:
                used.append(((folder / "complete").stat().st_mtime, folder))
            except FileNotFoundError:
                used.append((0.0, folder))  # never completed: a leftover
        for _, folder in sorted(used):
            if total <= self.max_bytes:
                break
            if self._pinned(folder):
                continue
            linked = {path.lstat().st_ino for path in folder.rglob("*") if path.is_file() and not path.is_symlink()}
            remove_tree(folder)
            for inode in linked & blobs.keys():
                blob, size = blobs.pop(inode)
                if blob.stat().st_nlink == 1:
                    blob.unlink()
                    total -= size
                    freed += size
        return freed

    def prune(self, *, older_than: float | None = None, everything: bool = False) -> tuple[int, int]:
        """Drop the mount folders not used for `older_than` seconds (all of them
        with `everything`) that no live run holds, then every cached file no
        folder links any more; (folders removed, bytes freed). The caller holds
        the cache's lock."""
        cutoff = time.time() - (older_than or 0)
        removed = 0
        for folder in (self.mounts.glob("*") if self.mounts.is_dir() else ()):
            marker = folder / "complete"
            if self._pinned(folder):
                continue
            if everything or not marker.exists() or marker.stat().st_mtime < cutoff:
                remove_tree(folder)
                removed += 1
        return removed, self._drop_unlinked()

    def _drop_unlinked(self) -> int:
        freed = 0
        for blob in self.blobs.glob("*/*"):
            info = blob.stat()
            if info.st_nlink == 1:
                blob.unlink()
                freed += info.st_size
        return freed


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        os.chmod(target, 0o444)
