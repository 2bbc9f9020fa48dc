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
(`over_limit`).

`Outputs.tar_chunks` streams the files as a tar in small chunks, so an output
of any size is pushed without being held in memory; it is called again for
each push attempt. Each file is opened with cast.worker.fsops.open_regular, so
one swapped for a FIFO or a link after the walk is named in the log and left
out rather than blocking or leading out of the run.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cast.protocol.names import name_problem, printable
from cast.worker.fsops import DirCursor, Kind, open_regular, walk

Snapshot = dict[str, tuple[int, int, int]]  # relative path → (file type, size, mtime_ns)
Report = Callable[[str], None]  # writes one line to the run's log

CHUNK = 1 << 20
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
        self._not_saved = _NotSaved(report)

    @classmethod
    def collect(cls, root: Path, before: Snapshot, mount_paths: list[str], report: Report) -> "Outputs":
        outputs = cls(root, [], [], report)
        skip = frozenset(p.rstrip("/") for p in mount_paths)
        # Folders made only to hold a mount are the worker's, not the run's.
        mount_parents = {path.rsplit("/", n)[0] for path in skip for n in range(1, path.count("/") + 1)}
        refused_folder = None  # named once; below it only what is not a folder is named
        for entry in walk(root, skip=skip):
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

    def tar_chunks(self) -> Iterator[bytes]:
        """A tar of the folders and files as a stream of chunks of at most CHUNK bytes.

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
                try:
                    handle = open_regular(cursor, rel)
                except FileNotFoundError:
                    self._not_saved(rel, "removed before it could be saved")
                    continue
                except OSError as error:
                    self._not_saved(rel, error.strerror or str(error))
                    continue
                with handle:
                    yield from _file_blocks(rel, handle)
            self._not_saved.summarise()
        yield bytes(2 * _BLOCK)


def _file_blocks(rel: str, handle) -> Iterator[bytes]:
    info = os.fstat(handle.fileno())
    header = tarfile.TarInfo(rel)
    header.size = info.st_size
    header.mtime = int(info.st_mtime)
    header.mode = stat.S_IMODE(info.st_mode)
    yield header.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    remaining = header.size
    while remaining:
        data = handle.read(min(CHUNK, remaining))
        if not data:
            data = bytes(min(CHUNK, remaining))
        remaining -= len(data)
        yield data
    padding = -header.size % _BLOCK
    if padding:
        yield bytes(padding)

