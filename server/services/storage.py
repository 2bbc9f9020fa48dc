"""Files on the server: run outputs, uploads and code bundles under the data dir.

THE one place that turns a path from a request into a filesystem path
(`resolve_inside`: normalised, then checked to stay inside its root), and the
one place that reads and writes tar streams: extraction accepts regular files
and folders only (no links, devices, absolute or `..` names, no name
cast.protocol.names refuses: not UTF-8, a control character, too long; each
refused by name with 400) and computes each file's sha256 while writing it (one pass: each
piece of the request is hashed and written from where it was received, never copied in Python;
only the 512-byte headers go through tarfile); a tree a worker staged on this filesystem is checked
entry by entry (`verify_staged`) and then renamed into place like a tar's;
folders are sent as tar streams built on the fly, never held whole in memory.
Everything arrives in a temporary folder on the same filesystem and is renamed
into place only once complete, so a partial body is never visible. Once in
place, outputs and uploads are sealed read-only (files 0444, folders 0555, all
the way down): a worker that shares this filesystem mounts them where they lie
(see worker/mounts.py), and only the server, which makes them writable again
first, removes them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cast.protocol.names import name_problem, printable
from cast.protocol.validate import SpecError, normalize_relative_path
from cast.server.errors import BadRequest, TooLarge
from cast.server.settings import Settings

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    sha256: str


def resolve_inside(root: Path, relative: str, *, what: str = "path") -> Path:
    """`root/relative`, refusing anything that would land outside `root`."""
    if relative in ("", "."):
        return root
    try:
        clean = normalize_relative_path(relative, what=what)
    except SpecError as error:
        raise BadRequest(str(error)) from None
    candidate = root / clean
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(candidate)]) != real_root:
        raise BadRequest(f"{what} {relative!r} leaves its root")
    return candidate


def run_outputs_dir(settings: Settings, run_id: int) -> Path:
    return settings.runs_dir / str(run_id)


def upload_path(settings: Settings, name: str) -> Path:
    return resolve_inside(settings.uploads_dir, name, what="upload name")


def code_bundle_path(settings: Settings, digest: str) -> Path:
    return resolve_inside(settings.code_dir, f"{digest}.tar", what="code bundle digest")


def ensure_storage_id(settings: Settings) -> str:
    """The id a worker compares with `<storage_root>/storage-id` to detect a shared filesystem."""
    path = settings.storage_id_file
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(uuid.uuid4().hex + "\n")
        os.replace(tmp, path)
    return path.read_text().strip()


def clear_temp(settings: Settings) -> None:
    """Drop bodies left half-written by a previous process."""
    if settings.tmp_dir.is_dir():
        remove(settings.tmp_dir)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)


def drop_staged(settings: Settings, run_id: int) -> None:
    """Remove what a worker staged for run `run_id` and never had adopted (it
    died or lost its lease mid-move): no row names it."""
    for folder in settings.tmp_dir.glob(f"staged-{run_id}-*"):
        remove(folder)


def new_temp_dir(settings: Settings) -> Path:
    return Path(tempfile.mkdtemp(dir=settings.tmp_dir))


def seal(path: Path) -> None:
    """Make a stored file or folder read-only at rest: files 0444, folders 0555."""
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444, follow_symlinks=False)
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o555, follow_symlinks=False)
        os.chmod(path, 0o555)
    elif path.is_file():
        os.chmod(path, 0o444)


def _unseal_folders(path: Path) -> None:
    """Folders writable by the server again, so their entries can be removed or moved."""
    for folder, dirs, _ in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755, follow_symlinks=False)
    os.chmod(path, 0o755)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _unseal_folders(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_into_place(staged: Path, final: Path, settings: Settings) -> None:
    """Move the folder `staged` to `final`, replacing what was there (a retried push)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = new_temp_dir(settings) / "old"
        os.chmod(final, 0o755)  # moving a folder to another parent rewrites its `..`
        os.rename(final, trash)
        os.rename(staged, final)
        remove(trash.parent)
    else:
        os.rename(staged, final)


# The most read from a stream at a time. Large, so hashing and writing (both
# outside the GIL) take big pieces and the Python loop around them turns rarely.
BUFFER = 4 << 20
# The longest extended header (a pax header or a GNU long name) read: names are
# bounded far below this (cast.protocol.names).
MAX_EXTENDED_HEADER = 64 * 1024
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _Budget:
    def __init__(self, limit: int, what: str):
        self.limit, self.what, self.used = limit, what, 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise TooLarge(f"{self.what} exceeds the limit of {self.limit} bytes")


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


class Source(Protocol):
    """What a body is read from: a request's (cast.server.api.bodies.Body), a file, a BytesIO."""

    def read1(self, size: int, /) -> bytes | memoryview: ...


class _Stream:
    """A byte stream read piece by piece as its source hands them out: a
    file's bytes are hashed and written from those pieces, never copied in
    Python; only the 512-byte headers are gathered across pieces."""

    def __init__(self, source: Source, what: str):
        self._read, self.what = source.read1, what
        self._piece = memoryview(b"")
        self.read_any = False
        self.headers = 0  # header blocks parsed

    def _fill(self) -> bool:
        """The next piece; False at the stream's end."""
        data = self._read(BUFFER)
        if not data:
            return False
        self._piece = memoryview(data).cast("B")
        self.read_any = True
        return True

    def take(self, count: int) -> memoryview:
        """Up to `count` (> 0) bytes, valid until the next call."""
        if not self._piece and not self._fill():
            raise BadRequest(f"{self.what} is not a valid tar stream: it ends inside an entry")
        piece, self._piece = self._piece[:count], self._piece[count:]
        return piece

    def exactly(self, count: int) -> bytes | None:
        """`count` bytes, or None at the stream's end before the first."""
        parts, wanted = [], count
        while wanted:
            if not self._piece and not self._fill():
                if wanted == count:
                    return None
                raise BadRequest(f"{self.what} is not a valid tar stream: it ends inside an entry")
            part, self._piece = self._piece[:wanted], self._piece[wanted:]
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)

    def skip(self, count: int) -> None:
        while count:
            count -= len(self.take(count))

    def copy_hashing(self, fd: int, count: int | None, budget: _Budget) -> tuple[int, str]:
        """Write the next `count` bytes (all that is left when None) to `fd`; their size and sha256."""
        digest, size = hashlib.sha256(), 0
        while size != count:
            if count is None and not self._piece and not self._fill():
                break
            piece = self.take(BUFFER if count is None else count - size)
            budget.spend(len(piece))
            digest.update(piece)
            _write_all(fd, piece)
            size += len(piece)
        return size, digest.hexdigest()


def write_file(source: Source, dest: Path, *, max_bytes: int, what: str) -> StoredFile:
    """Stream `source` into the new file `dest`, hashing as it goes."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        size, sha = _Stream(source, what).copy_hashing(fd, None, _Budget(max_bytes, what))
    finally:
        os.close(fd)
    return StoredFile(dest.name, size, sha)


def _pax_records(data: bytes, what: str) -> dict[str, str]:
    """The records (`<length> <key>=<value>\\n`) of a pax extended header."""
    records, at = {}, 0
    while at < len(data) and data[at]:
        space = data.find(b" ", at)
        length = int(data[at:space]) if 0 < space - at < 10 and data[at:space].isdigit() else 0
        end = at + length
        if end <= space or end > len(data) or data[end - 1:end] != b"\n":
            raise BadRequest(f"{what} is not a valid tar stream: a malformed pax header")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals:
            raise BadRequest(f"{what} is not a valid tar stream: a malformed pax header")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        at = end
    return records


def _next_member(stream: _Stream) -> tarfile.TarInfo | None:
    """The next member's header with its pax or GNU long name applied; None at the archive's end.

    Only the header blocks go through tarfile (`TarInfo.frombuf`: checksum and
    fields); its per-block reading of the data is what this module replaces."""
    overrides: dict[str, str] = {}
    while True:
        block = stream.exactly(tarfile.BLOCKSIZE)
        if block is None:
            if not stream.read_any:
                raise BadRequest(f"{stream.what} is not a tar stream: it is empty")
            return None
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:
            return None
        except tarfile.HeaderError as error:
            kind = "a valid tar stream" if stream.headers else "a tar stream"
            raise BadRequest(f"{stream.what} is not {kind}: {error}") from None
        stream.headers += 1
        if info.type not in _EXTENDED_TYPES:
            break
        if info.size > MAX_EXTENDED_HEADER:
            raise BadRequest(f"{stream.what}: an extended header of {info.size} bytes is longer than "
                             f"{MAX_EXTENDED_HEADER}")
        data = stream.exactly(info.size + -info.size % tarfile.BLOCKSIZE)
        if data is None:
            raise BadRequest(f"{stream.what} is not a valid tar stream: it ends after an extended header")
        data = data[:info.size]
        if info.type == tarfile.XHDTYPE:
            overrides.update(_pax_records(data, stream.what))
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            overrides["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        # A global pax header and a GNU long link name say nothing a stored file keeps.
    if "path" in overrides:
        info.name = overrides["path"]
    if "size" in overrides:
        if not overrides["size"].isdigit():
            raise BadRequest(f"{stream.what} is not a valid tar stream: a malformed pax size")
        info.size = int(overrides["size"])
    return info


def extract_tar(source: Source, dest: Path, *, max_bytes: int, what: str) -> list[StoredFile]:
    """Extract a tar stream into the existing folder `dest`; the stored files, sorted by path."""
    budget = _Budget(max_bytes, what)
    stream = _Stream(source, what)
    stored: list[StoredFile] = []
    while (member := _next_member(stream)) is not None:
        name = member.name.removeprefix("./").rstrip("/")
        is_file = member.type in _FILE_TYPES
        if name in ("", "."):
            if is_file:  # as in tarfile, only a file's header is followed by data
                stream.skip(member.size + -member.size % tarfile.BLOCKSIZE)
            continue
        if not (is_file or member.isdir()):
            raise BadRequest(f"{what}: {member.name!r} is not a regular file or folder; links and devices are refused")
        if problem := name_problem(name):
            raise BadRequest(f"{what}: '{printable(name)}' cannot be stored: {problem}")
        target = resolve_inside(dest, name, what=f"{what} member")
        rel = target.relative_to(dest).as_posix()
        try:
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o755 if member.mode & 0o111 else 0o644
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise BadRequest(f"{what}: {member.name!r} clashes with an earlier entry of the same name") from None
        try:
            size, sha = stream.copy_hashing(fd, member.size, budget)
        finally:
            os.close(fd)
        stream.skip(-member.size % tarfile.BLOCKSIZE)
        stored.append(StoredFile(rel, size, sha))
    stored.sort(key=lambda f: f.path)
    return stored


def verify_staged(folder: Path, files: dict[str, tuple[int, str]], folders: set[str], *,
                  max_bytes: int, what: str) -> list[StoredFile]:
    """The stored files of a tree a worker staged in `folder`, refusing (400) any
    entry but the folders and files its manifest `files` (path → (size,
    sha256)) and `folders` name: no link, FIFO or device, no refused name, no
    file with another link to its inode (a hardlink to a file outside would be
    sealed and kept with it), none owned by another user, none whose size
    differs. The sha256 is the worker's: see docs/reliability.md."""
    budget = _Budget(max_bytes, what)
    device, uid = os.lstat(folder).st_dev, os.geteuid()
    stored: list[StoredFile] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(folder / prefix if prefix else folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                info = entry.stat(follow_symlinks=False)
                if problem := name_problem(rel):
                    raise BadRequest(f"{what}: '{printable(rel)}' cannot be stored: {problem}")
                if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                    pending.append(rel + "/")
                    continue
                expected = files.get(rel)
                if not stat.S_ISREG(info.st_mode) or expected is None:
                    raise BadRequest(f"{what}: '{printable(rel)}' is not a file the manifest names")
                if info.st_nlink != 1 or info.st_uid != uid:
                    raise BadRequest(f"{what}: '{printable(rel)}' is linked elsewhere or owned by another user")
                if info.st_size != expected[0]:
                    raise BadRequest(f"{what}: '{printable(rel)}' holds {info.st_size} bytes, not {expected[0]}")
                budget.spend(info.st_size)
                stored.append(StoredFile(rel, info.st_size, expected[1]))
    missing = set(files) - {f.path for f in stored}
    missing |= {name for name in folders if not (folder / name).is_dir() or (folder / name).is_symlink()}
    if missing:
        raise BadRequest(f"{what}: '{printable(min(missing))}' is named but was not staged")
    stored.sort(key=lambda f: f.path)
    return stored


def _tar_header(path: Path, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    st = path.stat()
    info.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = st.st_size, (0o755 if st.st_mode & 0o111 else 0o644)
    return info


def tar_folder(folder: Path) -> Iterator[bytes]:
    """A tar stream of `folder`'s contents (names relative to it), produced chunk by chunk."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        base = Path(dirpath)
        for entry in [*sorted(dirnames), *sorted(filenames)]:
            path = base / entry
            if path.is_symlink():
                continue
            name = path.relative_to(folder).as_posix()
            info = _tar_header(path, name)
            yield info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
            if info.isdir():
                continue
            with open(path, "rb") as source:
                remaining = info.size
                while remaining > 0:
                    chunk = source.read(min(CHUNK, remaining))
                    if not chunk:  # the file shrank while being sent: pad to the promised size
                        chunk = b"\0" * remaining
                    remaining -= len(chunk)
                    yield chunk
            if info.size % tarfile.BLOCKSIZE:
                yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
