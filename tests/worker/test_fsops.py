"""cast.worker.fsops: removing, walking and reading a tree a run made, as hostile ground."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from cast.worker.fsops import DirCursor, Kind, open_regular, remove_tree, walk
from tests.reliability.helpers import canary_tree, modes_and_contents

NOBODY = 65534
LONG_NAME = "d" * 200  # 25 levels of these make a path past PATH_MAX (4096)


@pytest.fixture
def canary(tmp_path) -> Path:
    return canary_tree(tmp_path / "canary")


def _deep_chain(top: Path, levels: int) -> str:
    """Folders `levels` deep under `top` (made relative to descriptors: the full
    path is too long for one syscall) with a file at the bottom; its path."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(LONG_NAME, dir_fd=fd)
            child = os.open(LONG_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"at the bottom\n")
        os.close(file_fd)
    finally:
        os.close(fd)
    return "/".join([LONG_NAME] * levels + ["bottom.txt"])


def test_removing_never_follows_or_chmods_through_a_link(tmp_path, canary):
    before = modes_and_contents(canary)
    tree = tmp_path / "run"
    (tree / "sub").mkdir(parents=True)
    (tree / "to-private").symlink_to(canary / "private")
    (tree / "to-sticky").symlink_to(canary / "sticky")
    (tree / "sub" / "to-file").symlink_to(canary / "file.txt")
    (tree / "sub" / "up").symlink_to("../..")
    (tree / "locked").mkdir()
    (tree / "locked" / "inside.txt").write_text("x")
    os.chmod(tree / "locked", 0)
    os.chmod(tree / "sub", 0o500)

    remove_tree(tree)

    assert not tree.exists() and not tree.is_symlink()
    assert modes_and_contents(canary) == before


def test_a_tree_deeper_than_path_max_is_removed(tmp_path):
    tree = tmp_path / "run"
    tree.mkdir()
    path = _deep_chain(tree, 25)
    assert len(str(tree / path)) > 4096

    remove_tree(tree)

    assert not tree.exists()


def test_what_a_non_root_owner_made_unreadable_is_removed_by_that_owner():
    top = Path(tempfile.mkdtemp())
    try:
        os.chmod(top, 0o755)
        tree = top / "run"
        (tree / "a" / "b").mkdir(parents=True)
        (tree / "a" / "b" / "f.txt").write_text("x")
        for path in [tree, *tree.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        os.chown(top, NOBODY, NOBODY)
        os.chmod(tree / "a" / "b", 0)
        os.chmod(tree / "a", 0)
        os.seteuid(NOBODY)
        try:
            remove_tree(tree)
        finally:
            os.seteuid(0)
        assert not tree.exists()
    finally:
        shutil.rmtree(top)


def test_a_link_a_file_or_nothing_at_all(tmp_path, canary):
    link = tmp_path / "link"
    link.symlink_to(canary / "private")
    remove_tree(link)
    assert not link.is_symlink() and (canary / "private" / "secret.txt").exists()

    single = tmp_path / "single.txt"
    single.write_text("x")
    remove_tree(single)
    assert not single.exists()

    remove_tree(tmp_path / "missing")
    remove_tree(tmp_path / "missing-parent" / "missing")


def test_a_filesystem_mounted_inside_the_tree_is_neither_entered_nor_removed(tmp_path):
    tree = tmp_path / "run"
    mount_point = tree / "sub" / "mnt"
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    try:
        (mount_point / "kept.txt").write_text("kept\n")
        with pytest.raises(OSError, match="another filesystem is mounted at 'sub/mnt'"):
            remove_tree(tree)
        assert (mount_point / "kept.txt").read_text() == "kept\n"
        kinds = {entry.path: entry.kind for entry in walk(tree)}
        assert kinds == {"sub": Kind.DIR, "sub/mnt": Kind.MOUNT}
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
    remove_tree(tree)
    assert not tree.exists()


def test_the_walk_names_every_kind_and_opens_only_folders(tmp_path, canary):
    tree = tmp_path / "run"
    (tree / "dir" / "deeper").mkdir(parents=True)
    (tree / "dir" / "deeper" / "file.txt").write_text("x")
    (tree / "dir" / "linked").symlink_to(canary / "private")
    os.mkfifo(tree / "fifo")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tree / "socket"))
    os.mknod(tree / "device", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (tree / "mounted").mkdir()
    (tree / "mounted" / "inside.txt").write_text("not listed")

    entries = list(walk(tree, skip=frozenset({"mounted"})))

    assert [(e.path, e.kind) for e in entries] == [
        ("device", Kind.DEVICE),
        ("dir", Kind.DIR),
        ("dir/deeper", Kind.DIR),
        ("dir/deeper/file.txt", Kind.FILE),
        ("dir/linked", Kind.SYMLINK),
        ("fifo", Kind.FIFO),
        ("socket", Kind.SOCKET),
    ]


def test_the_walk_goes_past_path_max_and_names_the_bottom_file(tmp_path):
    tree = tmp_path / "run"
    tree.mkdir()
    (tree / "first.txt").write_text("1")
    path = _deep_chain(tree, 25)
    (tree / "last.txt").write_text("2")

    files = [e.path for e in walk(tree) if e.kind is Kind.FILE]

    assert files == [path, "first.txt", "last.txt"]  # depth first, names sorted


def test_a_folder_moved_during_the_walk_stops_it_rather_than_leading_elsewhere(tmp_path):
    tree = tmp_path / "run"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "z").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    entries = walk(tree)
    assert next(entries).path == "a"
    assert next(entries).path == "a/b"
    os.rename(tree / "a", elsewhere / "a")  # the walk holds a/b; its ".." is now elsewhere/a
    with pytest.raises(OSError, match="moved"):
        list(entries)


def test_only_a_regular_file_is_ever_opened(tmp_path, canary):
    tree = tmp_path / "run"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.txt").write_text("data\n")
    os.mkfifo(tree / "sub" / "fifo")  # opening it for reading would block until a writer came
    (tree / "sub" / "link").symlink_to(canary / "file.txt")
    (tree / "dirlink").symlink_to(canary)

    with DirCursor(tree) as cursor:
        with open_regular(cursor, "sub/data.txt") as handle:
            assert handle.read() == b"data\n"
        with pytest.raises(OSError, match="a FIFO"):
            open_regular(cursor, "sub/fifo")
        with pytest.raises(OSError, match="a symbolic link"):
            open_regular(cursor, "sub/link")
        with pytest.raises(OSError):  # a link on the way is not followed either
            open_regular(cursor, "dirlink/file.txt")
        with pytest.raises(FileNotFoundError):
            open_regular(cursor, "sub/gone.txt")
