"""A run's outputs: the files it created or changed in its working directory.

`snapshot` records every file (path → size, mtime) after the code is placed;
`changed_files` lists, after the command, the files that are new or differ
from the snapshot — never the unchanged checkout, never what lies under a
mount, never through a symlink. `tar_chunks` streams those files as a tar in
small chunks, so an output of any size is pushed without being held in memory.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Iterator

Snapshot = dict[str, tuple[int, int]]  # relative path → (size, mtime_ns)

CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


def _regular_files(root: Path, skip: set[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, stat) of regular files under root, not descending into
    symlinks or the `skip` paths."""
    for folder, dirs, files in os.walk(root):  # os.walk does not follow symlinks
        rel_folder = os.path.relpath(folder, root)
        prefix = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = [d for d in dirs if prefix + d not in skip]
        for name in files:
            rel = prefix + name
            if rel in skip:
                continue
            info = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(info.st_mode):
                yield rel, info


def snapshot(root: Path) -> Snapshot:
    return {rel: (info.st_size, info.st_mtime_ns) for rel, info in _regular_files(root, set())}


def changed_files(root: Path, before: Snapshot, mount_paths: list[str]) -> list[str]:
    skip = {p.rstrip("/") for p in mount_paths}
    return sorted(
        rel for rel, info in _regular_files(root, skip)
        if before.get(rel) != (info.st_size, info.st_mtime_ns)
    )


def tar_chunks(root: Path, files: list[str]) -> Iterator[bytes]:
    """A tar of `files` (relative to root) as a stream of chunks of at most CHUNK bytes.

    Each file's size is fixed by its header; should it shrink while being read
    the rest is zero-filled, should it grow the extra is not read, so the
    archive is always well formed.
    """
    for rel in files:
        path = root / rel
        try:
            handle = open(path, "rb")
        except OSError:  # removed since it was listed
            continue
        with handle:
            info = os.fstat(handle.fileno())
            header = tarfile.TarInfo(rel)
            header.size = info.st_size
            header.mtime = int(info.st_mtime)
            header.mode = stat.S_IMODE(info.st_mode)
            yield header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
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
    yield bytes(2 * _BLOCK)
