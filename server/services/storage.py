"""Files on the server: run outputs, uploads and code bundles under the data dir.

THE one place that turns a path from a request into a filesystem path
(`resolve_inside`: normalised, then checked to stay inside its root), and the
one place that reads and writes tar streams: extraction accepts regular files
and folders only (no links, devices, absolute or `..` names, no name
cast.protocol.names refuses: not UTF-8, a control character, too long; each
refused by name with 400) and computes each file's sha256 while writing it (one pass: the bytes are read
once, from the request); a tree a worker staged on this filesystem is checked
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
from typing import BinaryIO

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


class _Budget:
    def __init__(self, limit: int, what: str):
        self.limit, self.what, self.used = limit, what, 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise TooLarge(f"{self.what} exceeds the limit of {self.limit} bytes")


def _copy_hashing(source: BinaryIO, target: BinaryIO, budget: _Budget) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        budget.spend(len(chunk))
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def write_file(source: BinaryIO, dest: Path, *, max_bytes: int, what: str) -> StoredFile:
    """Stream `source` into the new file `dest`, hashing as it goes."""
    with open(dest, "xb") as target:
        size, sha = _copy_hashing(source, target, _Budget(max_bytes, what))
    return StoredFile(dest.name, size, sha)


def extract_tar(source: BinaryIO, dest: Path, *, max_bytes: int, what: str) -> list[StoredFile]:
    """Extract a tar stream into the existing folder `dest`; the stored files, sorted by path."""
    budget = _Budget(max_bytes, what)
    stored: list[StoredFile] = []
    try:
        archive = tarfile.open(fileobj=source, mode="r|*")
    except tarfile.TarError as error:
        raise BadRequest(f"{what} is not a tar stream: {error}") from None
    with archive:
        try:
            for member in archive:
                name = member.name.removeprefix("./").rstrip("/")
                if name in ("", "."):
                    continue
                if not (member.isfile() or member.isdir()):
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
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    raise BadRequest(f"{what}: {member.name!r} clashes with an earlier entry of the same name") from None
                with os.fdopen(fd, "wb") as out:
                    size, sha = _copy_hashing(archive.extractfile(member), out, budget)
                stored.append(StoredFile(rel, size, sha))
        except tarfile.TarError as error:
            raise BadRequest(f"{what} is not a valid tar stream: {error}") from None
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
