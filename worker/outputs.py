"""A run's outputs: the files it created or changed in its working directory.

`snapshot` records every entry (path → type, size, mtime) after the code is
placed; `Outputs.collect` goes through the working dir after the command
(cast.worker.fsops.walk: no link followed, nothing but folders opened) and
keeps the regular files that are new or differ from the snapshot, and the new
folders (so an empty one is kept) — never the unchanged checkout, never what
lies under a mount. Every other new or changed entry is named in the run's log
(stream `cast`) with why it is not saved: a link (not followed), a FIFO,
socket or device (never opened), a name the server would refuse
(cast.protocol.names), another filesystem mounted in the working dir, a
folder that cannot be read. A hardlink is saved as the file's content; a
sparse file as its full length of bytes, which counts against the server's
output cap: files over the cap the lease names are not sent at all
(`over_limit`). A walk or a push asked to stop (`cancelled`: the run was
killed meanwhile) stops at its next entry (`PushCancelled`), a staging
folder removed with what it held, so a large tree does not keep a killed
run's slot or the server's storage.

`Outputs.tar` streams the files as a tar: headers and small files as bytes,
each larger file as a `FileSpan` the client sends from the file (sendfile), so
an output of any size is pushed without being held in or copied through
memory; it is called again for each push attempt. Each file is opened with
cast.worker.fsops.open_regular, so one swapped for a FIFO or a link after the
walk is named in the log and left out rather than blocking or leading out of
the run.

Where the worker shares the server's storage on the working dir's filesystem,
`Outputs.sender` stages instead of streaming: each file is hashed in place
(one read) and renamed into `<storage_root>/tmp/staged-…` through descriptors
(no link followed, a swapped entry is found and dropped), and the server adopts
that folder (cast.protocol.outputs). A file with another link to its inode (a
hardlink to a file outside the run) or owned by another user is copied
instead (a reflink where the filesystem has them), hashed as it is copied.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cast.protocol.worker_messages import Lease
from cast.protocol.names import name_problem, printable
from cast.protocol.outputs import STAGING_FOLDER, StagedFile, StagedOutputs, staging_name
from cast.worker.client import FileSpan, ServerClient
from cast.worker.fsops import DirCursor, Kind, open_output, open_regular, remove_tree, walk
from cast.worker.mounts import shares_server_storage
from cast.worker.objects import ObjectPush, PushCancelled

Snapshot = dict[str, tuple[int, int, int]]  # relative path → (file type, size, mtime_ns)
Report = Callable[[str], None]  # writes one line to the run's log
Cancelled = Callable[[], bool]  # True once the run was killed: what it wrote is not saved

# Large, so the loops around reading and hashing a staged file turn rarely (docs/benchmarks.md, Outputs).
CHUNK = 4 << 20
# A staged manifest longer than this goes as a tar instead: the server caps JSON
# bodies (CAST_MAX_JSON_BODY_BYTES, 16 MiB by default), not tar streams.
MAX_MANIFEST_BYTES = 8 << 20
# A file up to this size goes into the tar as bytes read at once (the client
# gathers many into one write); a larger one as a span sent from the file.
SMALL_FILE = 64 << 10
FICLONE = 0x40049409  # linux/fs.h: share a file's blocks with another file (btrfs, XFS)
MAX_NAMED = 100  # entries named one by one in the log; the rest are counted
_BLOCK = tarfile.BLOCKSIZE


def _fingerprint(info) -> tuple[int, int, int]:
    return stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns


def snapshot(root: Path) -> Snapshot:
    return {entry.path: _fingerprint(entry.info) for entry in walk(root) if entry.info is not None}


class _NotSaved:
    """Names entries that are not saved, each once, the first MAX_NAMED one by one."""

    def __init__(self, report: Report):
        self._report = report
        self._named: set[str] = set()
        self._uncounted = 0

    def __call__(self, path: str, why: str) -> None:
        if path in self._named:
            return
        if len(self._named) >= MAX_NAMED:
            self._uncounted += 1
            return
        self._named.add(path)
        self._report(f"not saved: {printable(path)}: {why}")

    def summarise(self) -> None:
        if self._uncounted:
            self._report(f"not saved: {self._uncounted} more entries, not named one by one")
            self._uncounted = 0


class Outputs:
    """The files and new folders of one run to save, and the log their omissions go to."""

    def __init__(self, root: Path, files: list[str], folders: list[str], report: Report):
        self.root = root
        self.files = files
        self.folders = folders
        self.size = 0  # the files' bytes as listed, holes of sparse files included
        self._staged: list[StagedFile] = []  # what `stage` moved or copied so far
        self._next = 0  # the index in `files` that `stage` goes on from
        self._not_saved = _NotSaved(report)

    @classmethod
    def collect(cls, root: Path, before: Snapshot, mount_paths: list[str], report: Report,
                cancelled: Cancelled = lambda: False) -> "Outputs | None":
        """The run's outputs, or None once `cancelled` says so (asked at each entry)."""
        outputs = cls(root, [], [], report)
        skip = frozenset(p.rstrip("/") for p in mount_paths)
        # Folders made only to hold a mount are the worker's, not the run's.
        mount_parents = {path.rsplit("/", n)[0] for path in skip for n in range(1, path.count("/") + 1)}
        refused_folder = None  # named once; below it only what is not a folder is named
        for entry in walk(root, skip=skip):
            if cancelled():
                return None
            if entry.info is not None and before.get(entry.path) == _fingerprint(entry.info):
                continue
            problem = name_problem(entry.path)
            if entry.kind is Kind.DIR:
                if problem is None:
                    if entry.path not in before and entry.path not in mount_parents:
                        outputs.folders.append(entry.path)
                elif refused_folder is None or not entry.path.startswith(refused_folder + "/"):
                    refused_folder = entry.path
                    outputs._not_saved(entry.path, f"a folder, and {problem}")
            elif problem is not None:
                outputs._not_saved(entry.path, problem)
            elif entry.kind is Kind.FILE:
                outputs.files.append(entry.path)
                outputs.size += entry.info.st_size
            elif entry.kind is Kind.UNREADABLE:
                outputs._not_saved(entry.path, f"{entry.kind.value}: {entry.error}")
            else:
                outputs._not_saved(entry.path, entry.kind.value)
        outputs._not_saved.summarise()
        return outputs

    def over_limit(self, limit: int | None, *, what: str) -> str | None:
        """Why a server that keeps at most `limit` bytes of outputs would refuse
        these, in its own words, or None."""
        if limit is None or self.size <= limit:
            return None
        return f"{what} exceeds the limit of {limit} bytes"

    def manifest_bytes(self) -> int:
        """About how long the staged manifest's JSON would be (escapes aside)."""
        return sum(len(path) + 120 for path in self.files) + sum(len(path) + 4 for path in self.folders)

    def sender(self, lease: Lease, cancelled: Cancelled = lambda: False) -> Callable[[ServerClient, int, str], dict]:
        """What pushes these outputs to the server of `lease` (the outbox calls
        it); a staging stops once `cancelled` says so."""
        return _Push(self, lease, cancelled)

    def stage(self, staging: Path, lease_token: str, cancelled: Cancelled = lambda: False) -> StagedOutputs:
        """Move or copy the files into the folder `staging` on the server's
        filesystem; the manifest to send. Called again after a failed attempt,
        it carries on where it stopped. Once `cancelled` says so, the folder
        is removed with what it held and `PushCancelled` raised."""
        with DirCursor(self.root) as cursor:
            for folder in self.folders:
                (staging / folder).mkdir(parents=True, exist_ok=True)
            while self._next < len(self.files):
                if cancelled():
                    remove_tree(staging)
                    raise PushCancelled(f"staging {staging.name} stopped: the run was killed")
                rel = self.files[self._next]
                try:
                    self._staged.append(_stage_file(cursor, rel, staging))
                except FileNotFoundError:
                    self._not_saved(rel, "removed before it could be saved")
                except OSError as error:
                    self._not_saved(rel, error.strerror or str(error))
                self._next += 1
            self._not_saved.summarise()
        return StagedOutputs(lease_token=lease_token, staging=staging.name, files=list(self._staged),
                             folders=list(self.folders))

    def tar(self) -> Iterator[bytes | FileSpan]:
        """A tar of the folders and files, as bytes and spans of open files
        (each valid until the next item is asked for).

        Each file's size is fixed by its header; should it shrink while being read
        the rest is zero-filled, should it grow the extra is not read, so the
        archive is always well formed.
        """
        with DirCursor(self.root) as cursor:
            for folder in self.folders:
                header = tarfile.TarInfo(folder)
                header.type, header.mode = tarfile.DIRTYPE, 0o755
                yield header.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
            for rel in self.files:
                if (handle := open_output(cursor, rel, self._not_saved)) is None:
                    continue
                with handle:
                    yield from _file_blocks(rel, handle)
            self._not_saved.summarise()
        yield bytes(2 * _BLOCK)


class _Push:
    """The push of one run's outputs, called again for each attempt: staged on
    the server's filesystem when the worker shares it, else a tar over HTTP.
    Files are staged once; a retry only asks the server again."""

    def __init__(self, outputs: Outputs, lease: Lease, cancelled: Cancelled):
        self._outputs, self._lease, self._cancelled = outputs, lease, cancelled
        self._staging: Path | None = None
        self._decided = False
        self._objects: ObjectPush | None = None  # the push straight to the server's object store

    def __call__(self, client: ServerClient, run_id: int, lease_token: str) -> dict:
        if self._lease.object_store:
            if self._objects is None:
                outputs = self._outputs
                self._objects = ObjectPush(outputs.root, outputs.files, outputs.folders, outputs._not_saved,
                                           self._cancelled)
            return self._objects(client, run_id, lease_token)
        if not self._decided:
            self._decided = True
            if self._outputs.manifest_bytes() <= MAX_MANIFEST_BYTES:
                self._staging = _new_staging_folder(self._lease, self._outputs.root)
        if self._staging is None:
            return client.push_outputs(run_id, lease_token, self._outputs.tar())
        return client.adopt_outputs(run_id, self._outputs.stage(self._staging, lease_token, self._cancelled))


def _new_staging_folder(lease: Lease, root: Path) -> Path | None:
    """A new folder in the server's temporary folder, or None when the worker
    does not share the server's storage or it lies on another filesystem than
    the working dir (a rename could not move a file there)."""
    if not shares_server_storage(lease):
        return None
    parent = Path(lease.storage_root) / STAGING_FOLDER
    folder = parent / staging_name(lease.run_id)
    try:
        if os.stat(parent).st_dev != os.stat(root).st_dev:
            return None
        os.mkdir(folder, 0o700)
    except OSError:
        return None
    return folder


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    os.lseek(fd, 0, os.SEEK_SET)
    while count := os.readv(fd, [view]):
        digest.update(view[:count])
    return digest.hexdigest()


def _stage_file(cursor: DirCursor, rel: str, staging: Path) -> StagedFile:
    """Move the run's file `rel` into `staging` (one read: its hash), or copy it
    when it may not be moved: another link to its inode (a hardlink to a file
    outside the working dir must not be sealed and kept), or another owner
    when the worker is not root (the server could not seal it; a root worker
    hands the moved file to itself, as its runs have uids of their own)."""
    folder, _, name = rel.rpartition("/")
    with open_regular(cursor, rel) as handle:
        info = os.fstat(handle.fileno())
        target = staging / folder
        target.mkdir(parents=True, exist_ok=True)
        dest = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if info.st_nlink == 1 and os.geteuid() in (0, info.st_uid):
                return _move(handle.fileno(), info, cursor.folder(folder), dest, rel, name, staging)
            return _copy(handle.fileno(), dest, rel, name)
        finally:
            os.close(dest)


def _move(fd: int, info: os.stat_result, source_dir: int, dest_dir: int, rel: str, name: str,
          staging: Path) -> StagedFile:
    sha = _sha256(fd)
    os.rename(name, name, src_dir_fd=source_dir, dst_dir_fd=dest_dir)
    after = os.stat(name, dir_fd=dest_dir, follow_symlinks=False)
    if (after.st_dev, after.st_ino) != (info.st_dev, info.st_ino):
        remove_tree(staging / rel)  # whatever the run put in its place, it is not kept
        raise OSError(errno.ESTALE, "it was replaced while being saved")
    if after.st_uid != os.geteuid():
        os.fchown(fd, os.geteuid(), os.getegid())
    if (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns):
        sha = _sha256(fd)  # written to through a descriptor still open: hash what was moved
    return StagedFile(rel, after.st_size, sha)


def _copy(fd: int, dest_dir: int, rel: str, name: str) -> StagedFile:
    out = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dest_dir)
    try:
        try:
            fcntl.ioctl(out, FICLONE, fd)  # shares the blocks; hashed below from the clone, which cannot change
            return StagedFile(rel, os.fstat(out).st_size, _sha256(out))
        except OSError:
            os.ftruncate(out, 0)
        digest, size = hashlib.sha256(), 0
        view = memoryview(bytearray(CHUNK))
        os.lseek(fd, 0, os.SEEK_SET)
        while count := os.readv(fd, [view]):
            digest.update(view[:count])
            _write_all(out, view[:count])
            size += count
        return StagedFile(rel, size, digest.hexdigest())
    finally:
        os.close(out)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _file_blocks(rel: str, handle) -> Iterator[bytes | FileSpan]:
    info = os.fstat(handle.fileno())
    header = tarfile.TarInfo(rel)
    header.size = info.st_size
    header.mtime = int(info.st_mtime)
    header.mode = stat.S_IMODE(info.st_mode)
    yield header.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    if header.size > SMALL_FILE:
        yield FileSpan(handle, header.size)
    elif header.size:
        data = os.pread(handle.fileno(), header.size, 0)
        yield data + bytes(header.size - len(data))
    padding = -header.size % _BLOCK
    if padding:
        yield bytes(padding)

