"""Each mount of a lease resolved to a read-only source on this host.

Where the worker shares the server's filesystem (`<storage_root>/storage-id`
holds the lease's `storage_id`), the server's own copy (`local_path`) is used
as it is: O(1) whatever its size. The server keeps what it stores read-only
(files 0444, folders 0555, all the way down), so for a worker not running as
root one look at the copy's top decides: sealed, and not owned by the worker's
user (an owner could change the modes back). Otherwise the resource is
downloaded once into a cache keyed by the resource name (a finished run's
outputs and an upload never change) and made read-only the same way. Where
the server keeps its files in an object store (`lease.object_store`), each
file is fetched by presigned URL into the content-addressed cache of
worker/objects.py, so a file many mounts hold is fetched once per host.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from cast.protocol.worker_messages import Lease, LeaseMount
from cast.worker.client import ServerClient, ServerError, with_retries
from cast.worker.executors.base import PreparedMount
from cast.worker.fsops import remove_tree
from cast.worker.locking import file_lock
from cast.worker.objects import DEFAULT_CACHE_BYTES, ObjectCache


class MountError(Exception):
    """A mount could not be prepared; the message is shown to the user."""


def shares_server_storage(lease: Lease) -> bool:
    if not lease.storage_root or not lease.storage_id:
        return False
    try:
        return (Path(lease.storage_root) / "storage-id").read_text().strip() == lease.storage_id
    except OSError:
        return False


def make_read_only(path: Path) -> None:
    """Files 0444, folders 0555, symlinks left alone (they are not followed)."""
    if path.is_symlink():
        return
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in files:
                child = os.path.join(folder, name)
                if not os.path.islink(child):
                    os.chmod(child, 0o444)
            for name in dirs:
                child = os.path.join(folder, name)
                if not os.path.islink(child):
                    os.chmod(child, 0o555)
        os.chmod(path, 0o555)
    else:
        os.chmod(path, 0o444)


def _usable_in_place(path: Path) -> bool:
    """Whether a run may be given the server's copy at `path` itself. Root's runs
    get their sources remounted read-only (or bind-mounted read-only by Docker);
    anyone else's are held back by file modes alone, which the server sets on
    everything it stores (an older server's unsealed copy fails this look)."""
    try:
        info = path.stat()
    except OSError:
        return False
    if os.geteuid() == 0:
        return True
    return info.st_uid != os.geteuid() and not info.st_mode & 0o222


class MountCache:
    def __init__(self, root: Path, *, object_cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = root
        self.objects = ObjectCache(root / "objects", max_bytes=object_cache_bytes)

    def prepare(self, lease: Lease, client: ServerClient, should_continue=lambda: True) -> list[PreparedMount]:
        shared = shares_server_storage(lease)
        prepared = []
        for mount in lease.mounts:
            local = Path(mount.local_path) if shared and mount.local_path else None
            if local is not None and _usable_in_place(local):
                source = local
            elif lease.object_store:
                source = self._from_objects(mount, client, should_continue, run_id=lease.run_id)
            else:
                source = self._download(mount, client, should_continue)
            prepared.append(PreparedMount(source=source, path=mount.path))
        return prepared

    def _from_objects(self, mount: LeaseMount, client: ServerClient, should_continue, *, run_id: int) -> Path:
        with file_lock(self.root / "objects.lock"):
            try:
                return self.objects.mount(mount, client, should_continue, run_id=run_id)
            except (ServerError, OSError) as exc:
                raise MountError(f"cannot fetch {mount.resource}: {exc}") from exc

    def release(self, run_id: int) -> None:
        """Run `run_id` no longer uses its mounts: the object cache may evict them."""
        self.objects.release(run_id)

    def prune_objects(self, *, older_than: float | None, everything: bool) -> tuple[int, int] | None:
        """`cast cache prune` of the object store's cache: (mount folders removed,
        bytes freed), or None where this worker never used one."""
        if not self.objects.root.exists():
            return None
        with file_lock(self.root / "objects.lock"):
            return self.objects.prune(older_than=older_than, everything=everything)

    def _download(self, mount: LeaseMount, client: ServerClient, should_continue) -> Path:
        resource = mount.resource
        entry = self.root / hashlib.sha256(resource.encode()).hexdigest()[:32]
        # The data keeps the resource's basename so a mounted file is named as in its run.
        data = entry / "data" / (resource.rstrip("/").rsplit("/", 1)[-1] or "data")
        with file_lock(entry.with_suffix(".lock")):
            if (entry / "complete").exists():
                return data
            remove_tree(entry)
            (entry / "data").mkdir(parents=True)
            download = entry / "download"
            try:
                with_retries(lambda: client.download_mount(resource, download), should_continue=should_continue)
            except Exception as exc:
                remove_tree(entry)
                raise MountError(f"cannot fetch {resource}: {exc}") from exc
            if mount.kind == "dir":
                data.mkdir()
                try:
                    with tarfile.open(download, mode="r:*") as tar:
                        tar.extractall(data, filter="data")
                except (tarfile.TarError, OSError) as exc:
                    remove_tree(entry)
                    raise MountError(f"cannot unpack {resource}: {exc}") from exc
                download.unlink()
            else:
                download.rename(data)
            make_read_only(data)
            (entry / "complete").write_text(resource + "\n")
        return data

