"""Tar archives as streams: written file by file while being sent, read and
extracted while being received, never held whole in memory.

Owns the folder format of uploads, code bundles and `cast cp` downloads.
Writing builds the tar blocks by hand (a header, the file's bytes, padding)
instead of going through `tarfile.TarFile`, which would need a thread or a
whole file in a buffer to turn into an iterator of chunks.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

BLOCK = 512
READ_SIZE = 1 << 20
SEND_SIZE = 256 * 1024


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file_blocks(path: str, size: int, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    """Exactly `size` bytes of the file (zero-filled if it shrank meanwhile), then padding."""
    remaining = size
    with open(path, "rb") as handle:
        while remaining:
            data = handle.read(min(READ_SIZE, remaining))
            if not data:
                data = b"\0" * remaining
            remaining -= len(data)
            if on_bytes:
                on_bytes(len(data))
            yield data
    if size % BLOCK:
        yield b"\0" * (BLOCK - size % BLOCK)


def tar_chunks(members: Iterable[tuple[str, str]], *, follow_symlinks: bool,
               on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """A tar of `(path on disk, name in the archive)` pairs, in chunks of about SEND_SIZE.

    With `follow_symlinks` a link to a file is stored as that file's bytes;
    without, links are stored as links (as git tracks them). Sockets, devices
    and dangling links are left out.
    """
    buffer: list[bytes] = []
    buffered = 0
    for path, arcname in members:
        try:
            st = os.stat(path) if follow_symlinks else os.lstat(path)
        except OSError:
            continue
        info = tarfile.TarInfo(arcname)
        info.mtime = int(st.st_mtime)
        info.mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            pieces: Iterable[bytes] = ()
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
            pieces = ()
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            pieces = _file_blocks(path, st.st_size, on_bytes)
        else:
            continue
        header = _header(info)
        buffer.append(header)
        buffered += len(header)
        for piece in pieces:
            buffer.append(piece)
            buffered += len(piece)
            if buffered >= SEND_SIZE:
                yield b"".join(buffer)
                buffer, buffered = [], 0
    buffer.append(b"\0" * (2 * BLOCK))
    yield b"".join(buffer)


def walk_folder(root: Path) -> tuple[list[tuple[str, str]], int, list[str]]:
    """The members of a folder upload, their total size, and what was skipped.

    Files are named relative to `root`; empty folders are kept; links to
    files are followed; links to folders are skipped (they could loop or
    reach outside the folder).
    """
    members: list[tuple[str, str]] = []
    skipped: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        relative_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            arcname = os.path.normpath(os.path.join(relative_dir, name))
            if os.path.islink(full):
                skipped.append(arcname)
                dirnames.remove(name)
            else:
                members.append((full, arcname))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                skipped.append(os.path.normpath(os.path.join(relative_dir, name)))
                continue
            if stat.S_ISREG(st.st_mode):
                members.append((full, os.path.normpath(os.path.join(relative_dir, name))))
                total += st.st_size
        dirnames.sort()
    return members, total, skipped


def extract_stream(source, destination: Path, *, on_bytes: Callable[[int], None] | None = None) -> int:
    """Extract a streamed tar into `destination`, refusing anything unsafe
    (absolute names, `..`, links leaving the folder, devices): the "data"
    filter of tarfile. `on_bytes` hears each file's size once it is written.
    Returns the number of members extracted."""
    destination.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(fileobj=source, mode="r|") as archive:
        for member in archive:
            archive.extract(member, destination, filter="data")
            count += 1
            if on_bytes and member.isfile():
                on_bytes(member.size)
    return count
