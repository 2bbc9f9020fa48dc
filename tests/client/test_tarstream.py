"""cast.client.tarstream on real files: the streamed tar reads back as the
files it was made of, a folder walk keeps what an upload keeps, and
extraction refuses what would leave its folder."""

from __future__ import annotations

import io
import os
import socket
import tarfile

import pytest

from cast.client.tarstream import READ_SIZE, SEND_SIZE, extract_stream, tar_chunks, walk_folder


def _read_back(chunks) -> dict[str, tarfile.TarInfo | bytes]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as archive:
        return {m.name: archive.extractfile(m).read() if m.isfile() else m for m in archive.getmembers()}


def test_a_tar_of_files_links_and_folders_reads_back(tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(SEND_SIZE * 3 + 7))
    (tmp_path / "small.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to("small.txt")
    (tmp_path / "dangling").symlink_to("nowhere")
    os.chmod(tmp_path / "small.txt", 0o640)
    members = [(str(tmp_path / name), name) for name in ("big.bin", "small.txt", "empty", "link", "dangling")]
    counted = []

    chunks = list(tar_chunks(members, follow_symlinks=False, on_bytes=counted.append))
    assert len(chunks) > 1  # streamed, not built whole
    assert sum(counted) == SEND_SIZE * 3 + 7 + 5
    read = _read_back(chunks)
    assert read["big.bin"] == (tmp_path / "big.bin").read_bytes()
    assert read["small.txt"] == b"hello"
    assert read["empty"].isdir()
    assert read["link"].issym() and read["link"].linkname == "small.txt"
    assert read["dangling"].issym()  # kept as git tracks it

    followed = _read_back(tar_chunks(members, follow_symlinks=True))
    assert followed["link"] == b"hello"
    assert "dangling" not in followed


def test_sockets_and_vanished_files_are_left_out(tmp_path):
    (tmp_path / "kept.txt").write_text("kept")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        members = [(str(tmp_path / name), name) for name in ("sock", "gone.txt", "kept.txt")]
        assert list(_read_back(tar_chunks(members, follow_symlinks=False))) == ["kept.txt"]
    finally:
        sock.close()


def test_a_file_that_shrinks_while_sent_keeps_its_announced_size(tmp_path):
    path = tmp_path / "shrinks.bin"
    size = READ_SIZE * 2 + 100
    path.write_bytes(b"x" * size)
    chunks = tar_chunks([(str(path), "shrinks.bin")], follow_symlinks=False)
    first = next(chunks)  # the header and the first READ_SIZE bytes, read before the cut
    os.truncate(path, 0)
    data = _read_back([first, *chunks])["shrinks.bin"]
    assert data == b"x" * READ_SIZE + b"\0" * (size - READ_SIZE)


def test_names_that_are_not_utf8_survive_the_round_trip(tmp_path):
    raw = os.fsdecode(b"caf\xe9.txt")
    (tmp_path / raw).write_text("latin-1")
    destination = tmp_path / "out"
    count = extract_stream(io.BytesIO(b"".join(tar_chunks([(str(tmp_path / raw), raw)], follow_symlinks=False))),
                           destination)
    assert count == 1 and (destination / raw).read_text() == "latin-1"


def test_walk_folder_follows_file_links_and_skips_folder_links(tmp_path):
    root = tmp_path / "data"
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "sub" / "b.txt").write_text("bb")
    (root / "a.txt").write_text("a")
    (root / "to_file").symlink_to(root / "a.txt")
    (root / "to_folder").symlink_to(root / "sub")
    (root / "broken").symlink_to(root / "missing")

    members, total, skipped = walk_folder(root)
    names = [name for _, name in members]
    assert names == ["sub", "a.txt", "to_file", "sub/empty", "sub/b.txt"]
    assert total == 1 + 1 + 2
    assert sorted(skipped) == ["broken", "to_folder"]


def _one_member_tar(name: str, *, linkname: str | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        if linkname is not None:
            info.type, info.linkname = tarfile.SYMTYPE, linkname
        archive.addfile(info, io.BytesIO(b""))
    buffer.seek(0)
    return buffer


def test_extract_refuses_what_leaves_the_folder(tmp_path):
    destination = tmp_path / "dest"
    for source in (_one_member_tar("../escape.txt"), _one_member_tar("out-link", linkname="/etc/passwd"),
                   _one_member_tar("up-link", linkname="../../outside")):
        with pytest.raises(tarfile.FilterError):
            extract_stream(source, destination)
    assert not (tmp_path / "escape.txt").exists()
    assert list(destination.iterdir()) == []
    # An absolute name is made relative: it lands inside the folder.
    assert extract_stream(_one_member_tar("/etc/absolute.txt"), destination) == 1
    assert (destination / "etc" / "absolute.txt").is_file()
