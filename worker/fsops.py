"""Every filesystem operation the worker does on a tree a run made.

A run's working dir is hostile ground: it may hold symlinks out of the run
(to the worker's files, to the host's), FIFOs, sockets and devices, folders
the run made unreadable, and chains of folders deeper than PATH_MAX, and a
process of the run may still be changing it. So nothing here opens a path by
its full name below the tree's top: each folder is opened relative to its
parent's file descriptor with O_NOFOLLOW | O_DIRECTORY, entries are looked at
with lstat, unlinked with dir_fd, and a folder's mode is changed only through
a descriptor of that folder itself (never through a link). Going back up a
tree opens ".." and checks that it is the folder recorded on the way down, so
only one descriptor is held whatever the depth. No operation crosses into
another filesystem mounted inside the tree.

Owns `remove_tree` (both executors, the agent's cleanup, the caches), `walk`
(the no-follow listing that outputs are chosen from) and `open_regular`
(which opens a regular file and nothing else: never a FIFO, socket or device,
even one swapped in after the walk).
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChanged(OSError):
    """A folder was moved or replaced while the worker went through the tree."""


class Kind(enum.Enum):
    FILE = "a regular file"
    DIR = "a folder"
    SYMLINK = "a symbolic link (links are not followed)"
    FIFO = "a FIFO (never opened)"
    SOCKET = "a socket (never opened)"
    DEVICE = "a device (never opened)"
    MOUNT = "another filesystem mounted in the working dir (not entered)"
    UNREADABLE = "a folder that cannot be read"


def kind_of(info: os.stat_result) -> Kind:
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    if stat.S_ISFIFO(mode):
        return Kind.FIFO
    if stat.S_ISSOCK(mode):
        return Kind.SOCKET
    return Kind.DEVICE


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _open_dir(name: str, dir_fd: int) -> int:
    """Open the folder `name` of `dir_fd`, never through a link. A folder its
    owner made unreadable is given u+rwx first, through an O_PATH descriptor of
    that very folder (its /proc/self/fd link names the inode, not a path)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        handle = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            mode = stat.S_IMODE(os.fstat(handle).st_mode)
            os.chmod(f"/proc/self/fd/{handle}", mode | stat.S_IRWXU)
        finally:
            os.close(handle)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _up(fd: int, expected: tuple[int, int]) -> int:
    """The parent of folder `fd`, checked to be the folder we came down from."""
    parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
    if _identity(os.fstat(parent)) != expected:
        os.close(parent)
        raise TreeChanged(errno.ESTALE, "a folder was moved while the worker went through the tree")
    return parent


def _make_writable(fd: int, info: os.stat_result) -> None:
    """Let the worker remove a folder's entries (a run may leave it read-only)."""
    if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)


# --- removing -------------------------------------------------------------------

@dataclass
class _Level:
    name: str  # in its parent folder
    identity: tuple[int, int]
    folders: list[str] | None = None  # what remains to empty, once the files are gone


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it; a link is removed, never followed.

    Missing is fine. Raises OSError when something cannot be removed: a
    filesystem mounted inside the tree, or a folder moved meanwhile.
    """
    path = Path(path)
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_entry(parent, path.name)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def _remove_entry(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    try:
        top = _open_dir(name, dir_fd)
    except (NotADirectoryError, OSError) as error:
        if isinstance(error, NotADirectoryError) or error.errno == errno.ELOOP:
            os.unlink(name, dir_fd=dir_fd)  # swapped for a link or a file meanwhile
            return
        raise
    try:
        _empty(top)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=dir_fd)


def _unlink_all_but_folders(fd: int) -> list[str]:
    folders = []
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
        except IsADirectoryError:
            folders.append(name)
        except FileNotFoundError:
            pass
    return folders


def _empty(top: int) -> None:
    """Remove everything inside the open folder `top`, depth first, one descriptor at a time."""
    info = os.fstat(top)
    _make_writable(top, info)
    device = info.st_dev
    levels = [_Level("", _identity(info))]
    current = os.dup(top)
    try:
        while True:
            level = levels[-1]
            if level.folders is None:
                level.folders = _unlink_all_but_folders(current)
            if level.folders:
                name = level.folders.pop()
                try:
                    child = _open_dir(name, current)
                except FileNotFoundError:
                    continue
                except (NotADirectoryError, OSError) as error:
                    if isinstance(error, NotADirectoryError) or error.errno == errno.ELOOP:
                        level.folders = None  # a file or link now: the rescan unlinks it
                        continue
                    raise
                child_info = os.fstat(child)
                if child_info.st_dev != device:
                    os.close(child)
                    where = "/".join([*(lv.name for lv in levels[1:]), name])
                    raise OSError(errno.EXDEV, f"another filesystem is mounted at {where!r}; not removed")
                _make_writable(child, child_info)
                levels.append(_Level(name, _identity(child_info)))
                os.close(current)
                current = child
                continue
            if len(levels) == 1:
                return
            parent = _up(current, levels[-2].identity)
            os.close(current)
            current = parent
            os.rmdir(levels.pop().name, dir_fd=current)
    finally:
        os.close(current)


# --- walking --------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    path: str  # relative to the walk's root, '/'-separated; for names and reports, never opened as a path
    kind: Kind
    info: os.stat_result | None  # lstat's answer; None for an UNREADABLE folder
    error: str | None = None  # why an UNREADABLE folder could not be read


@dataclass
class _WalkLevel:
    prefix: str
    identity: tuple[int, int]
    names: list[str] = field(default_factory=list)  # still to visit, in reverse order


def walk(root: Path, *, skip: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """Every entry under `root` (not root itself), folders before their contents,
    names in sorted order; never follows a link, never enters another
    filesystem, never opens anything but folders. Entries whose path is in
    `skip` are left out with everything under them."""
    current = os.open(root, _DIR_FLAGS)
    try:
        top_info = os.fstat(current)
        device = top_info.st_dev
        levels = [_WalkLevel("", _identity(top_info), sorted(os.listdir(current), reverse=True))]
        while levels:
            level = levels[-1]
            if not level.names:
                levels.pop()
                if levels:
                    parent = _up(current, levels[-1].identity)
                    os.close(current)
                    current = parent
                continue
            name = level.names.pop()
            path = level.prefix + name
            if path in skip:
                continue
            try:
                info = os.stat(name, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = kind_of(info)
            if kind is Kind.DIR and info.st_dev != device:
                kind = Kind.MOUNT
            if kind is not Kind.DIR:
                yield Entry(path, kind, info)
                continue
            try:
                child, names = _list_dir(name, current, _identity(info))
            except FileNotFoundError:
                continue
            except OSError as error:
                yield Entry(path, Kind.UNREADABLE, None, error.strerror or str(error))
                continue
            yield Entry(path, Kind.DIR, info)
            levels.append(_WalkLevel(path + "/", _identity(info), names))
            os.close(current)
            current = child
    finally:
        os.close(current)


def _list_dir(name: str, dir_fd: int, identity: tuple[int, int]) -> tuple[int, list[str]]:
    """The open folder `name` (checked to be the one lstat saw) and its names, reversed."""
    child = _open_dir(name, dir_fd)
    try:
        if _identity(os.fstat(child)) != identity:
            raise TreeChanged(errno.ESTALE, "replaced while being listed")
        return child, sorted(os.listdir(child), reverse=True)
    except BaseException:
        os.close(child)
        raise


# --- reading --------------------------------------------------------------------

class DirCursor:
    """Opens folders under a root one component at a time, never through a link,
    keeping the last folder open (files of one folder come one after another)."""

    def __init__(self, root: Path):
        self._root = os.open(root, _DIR_FLAGS)
        self._folder: str | None = None
        self._fd: int | None = None

    def close(self) -> None:
        self._drop()
        os.close(self._root)

    def __enter__(self) -> "DirCursor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._folder, self._fd = None, None

    def folder(self, relative: str) -> int:
        """A descriptor of the folder `relative` ("" for the root), valid until the next call."""
        if relative == self._folder and self._fd is not None:
            return self._fd
        self._drop()
        fd = os.dup(self._root)
        try:
            for part in relative.split("/") if relative else []:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOTDIR, errno.ELOOP):
                raise OSError(error.errno, "a folder on its path was replaced after it was listed "
                                           "(links are not followed)") from None
            raise
        self._folder, self._fd = relative, fd
        return fd


def open_regular(cursor: DirCursor, relative: str):
    """The regular file at `relative` opened for reading, or OSError.

    The entry is first opened with O_PATH (which opens nothing: no FIFO blocks,
    no device acts) and checked to be a regular file; only then is that same
    inode opened for reading through /proc/self/fd, so a FIFO or device swapped
    in after the walk is never opened.
    """
    folder, _, name = relative.rpartition("/")
    handle = os.open(name, _PATH_FLAGS, dir_fd=cursor.folder(folder))
    try:
        kind = kind_of(os.fstat(handle))
        if kind is not Kind.FILE:
            raise OSError(errno.EINVAL, f"it became {kind.value} after it was listed")
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(handle)
    return os.fdopen(fd, "rb")


def open_output(cursor: DirCursor, relative: str, not_saved: Callable[[str, str], None]):
    """`open_regular`, or None once `not_saved(relative, why)` has said why an
    output cannot be read: it went away since it was listed, or the system refused it."""
    try:
        return open_regular(cursor, relative)
    except FileNotFoundError:
        not_saved(relative, "removed before it could be saved")
    except OSError as error:
        not_saved(relative, error.strerror or str(error))
    return None
