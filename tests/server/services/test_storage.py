"""cast.server.services.storage: path containment and tar streams."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from cast.server.errors import BadRequest, TooLarge
from cast.server.services import storage
from cast.server.settings import Settings
from ..conftest import make_tar, tar_member


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "a\x00b", "\\\\server\\share"])
def test_resolve_inside_refuses_escapes(tmp_path, relative):
    with pytest.raises(BadRequest):
        storage.resolve_inside(tmp_path, relative)


def test_resolve_inside_refuses_a_symlink_that_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(BadRequest, match="leaves its root"):
        storage.resolve_inside(root, "link/secret")
    assert storage.resolve_inside(root, "a/./b/../c") == root / "a" / "c"


@pytest.mark.parametrize("members, files, message", [
    ([tar_member("link", tarfile.SYMTYPE, linkname="/etc/passwd")], {}, "links and devices are refused"),
    ([tar_member("hard", tarfile.LNKTYPE, linkname="a.txt")], {"a.txt": b"a"}, "links and devices are refused"),
    ([tar_member("dev", tarfile.CHRTYPE)], {}, "links and devices are refused"),
    ([tar_member("fifo", tarfile.FIFOTYPE)], {}, "links and devices are refused"),
    ([], {"../escape.txt": b"x"}, "escapes its root"),
    ([], {"/abs.txt": b"x"}, "must be relative"),
    ([], [("dup.txt", b"1"), ("dup.txt", b"2")], "clashes with an earlier entry"),
    ([], [("clash", b"1"), ("clash/inner.txt", b"2")], "clashes with an earlier entry"),
])
def test_extract_refuses_anything_but_files_and_folders(tmp_path, members, files, message):
    dest = tmp_path / "dest"
    dest.mkdir()
    body = make_tar(files, extra=members)
    with pytest.raises(BadRequest, match=message):
        storage.extract_tar(io.BytesIO(body), dest, max_bytes=10**6, what="outputs")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_records_sizes_and_hashes_and_caps_bytes(tmp_path):
    files = {"a.txt": b"alpha", "deep/er/b.bin": b"\x00" * 3000}
    dest = tmp_path / "dest"
    dest.mkdir()
    stored = storage.extract_tar(io.BytesIO(make_tar(files)), dest, max_bytes=10**6, what="outputs")
    assert [(f.path, f.size, f.sha256) for f in stored] == sorted(
        (name, len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items())
    capped = tmp_path / "capped"
    capped.mkdir()
    with pytest.raises(TooLarge):
        storage.extract_tar(io.BytesIO(make_tar(files)), capped, max_bytes=100, what="outputs")
    with pytest.raises(BadRequest, match="not a"):
        storage.extract_tar(io.BytesIO(b"not a tar at all" * 100), capped, max_bytes=100, what="outputs")


class _Trickle(io.BytesIO):
    """A body that arrives in short pieces, as a request's does."""

    def read1(self, size: int = -1) -> bytes:
        return super().read1(min(size, 700))


def _tar_of(members: list[tuple[str, bytes | None]], fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_extraction_reads_every_header_kind_across_short_reads_and_buffer_ends(tmp_path, monkeypatch, fmt):
    # A buffer of four blocks: headers, names and data all straddle its end and the body's pieces.
    monkeypatch.setattr(storage, "BUFFER", 2048)
    long = "d" * 90 + "/" + "n" * 150 + ".bin" if fmt != tarfile.USTAR_FORMAT else "d" * 90 + "/" + "n" * 90
    members = [("sub", None), ("sub/empty.txt", b""), ("naïve.txt", b"\xff" * 511), (long, os.urandom(5000)),
               ("sub/513.bin", os.urandom(513)), ("sub/exact.bin", os.urandom(4096))]
    dest = tmp_path / "dest"
    dest.mkdir()
    stored = storage.extract_tar(_Trickle(_tar_of(members, fmt)), dest, max_bytes=10**6, what="outputs")
    files = {name: data for name, data in members if data is not None}
    assert [(f.path, f.size, f.sha256) for f in stored] == sorted(
        (name, len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items())
    assert {name: (dest / name).read_bytes() for name in files} == files


@pytest.mark.parametrize("body, message", [
    (b"", "is not a tar stream: it is empty"),
    (lambda: _tar_of([("a.bin", b"x" * 3000)], tarfile.PAX_FORMAT)[:2048], "ends inside an entry"),
    (lambda: _tar_of([("a.bin", b"x" * 3000)], tarfile.PAX_FORMAT)[:700], "ends inside an entry"),
    (lambda: _paxtar_member(b"7 path=x\n"), "a malformed pax header"),
    (lambda: _paxtar_member(b"12 pathx\n"), "a malformed pax header"),
    (lambda: _paxtar_member(b"11 size=-5\n"), "a malformed pax size"),
    (lambda: _paxtar_member(b"x" * (storage.MAX_EXTENDED_HEADER + 1)), "an extended header of"),
    (lambda: _paxtar_member(b"18 path=../../etc\n"), "escapes its root"),
    (lambda: b"\x01" * 512, "is not a tar stream: invalid header"),
])
def test_a_malformed_or_cut_tar_stream_is_refused_with_nothing_written_outside(tmp_path, body, message):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BadRequest, match=message):
        storage.extract_tar(io.BytesIO(body() if callable(body) else body), dest, max_bytes=10**6, what="outputs")
    assert not (tmp_path / "etc").exists()


def _paxtar_member(records: bytes) -> bytes:
    """A pax extended header holding `records`, then a file `a.bin` of one byte."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(records)
    member = tarfile.TarInfo("a.bin")
    member.size = 1
    blocks = [pax.tobuf(tarfile.USTAR_FORMAT), records, bytes(-len(records) % 512),
              member.tobuf(tarfile.USTAR_FORMAT), b"x", bytes(511), bytes(1024)]
    return b"".join(blocks)


def test_folder_tar_round_trips(tmp_path):
    files = {"a.txt": b"alpha", "sub/b.txt": b"b" * 700, "sub/deeper/c.txt": b""}
    source = tmp_path / "source"
    source.mkdir()
    storage.extract_tar(io.BytesIO(make_tar(files)), source, max_bytes=10**6, what="x")
    (source / "empty").mkdir()
    streamed = b"".join(storage.tar_folder(source))
    with tarfile.open(fileobj=io.BytesIO(streamed)) as archive:
        names = {m.name: m for m in archive.getmembers()}
        assert {n: archive.extractfile(m).read() for n, m in names.items() if m.isfile()} == files
        assert names["empty"].isdir()


NOBODY = 65534


def test_sealed_files_are_read_only_yet_a_non_root_server_replaces_and_removes_them():
    # A server not running as root: only the file modes stand between it and its stored
    # files, so it must make them writable again itself to replace or remove them.
    root = Path(tempfile.mkdtemp())
    os.chmod(root, 0o755)
    os.chown(root, NOBODY, NOBODY)
    os.seteuid(NOBODY)
    try:
        settings = Settings(data_dir=root)
        settings.make_dirs()
        final = settings.runs_dir / "1"

        def stage(files: dict[str, bytes]) -> Path:
            staged = storage.new_temp_dir(settings) / "outputs"
            staged.mkdir()
            storage.extract_tar(io.BytesIO(make_tar(files)), staged, max_bytes=1 << 20, what="outputs")
            return staged

        def put_in_place(files: dict[str, bytes]) -> None:  # as files.store_outputs does
            staged = stage(files)
            storage.replace_into_place(staged, final, settings)
            storage.seal(final)
            storage.remove(staged.parent)

        put_in_place({"a/b.txt": b"1"})
        with pytest.raises(PermissionError):
            (final / "a" / "b.txt").write_text("changed")
        with pytest.raises(PermissionError):
            (final / "a" / "new.txt").write_text("new")
        put_in_place({"c.txt": b"2"})
        assert sorted(p.name for p in final.iterdir()) == ["c.txt"]
        storage.remove(final)
        assert not final.exists()
        assert list(settings.tmp_dir.iterdir()) == []
    finally:
        os.seteuid(0)
        shutil.rmtree(root)
