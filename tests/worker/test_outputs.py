"""Which files are a run's outputs, and the tar stream that carries them."""

from __future__ import annotations

import io
import os
import tarfile

from cast.worker import outputs
from cast.worker.outputs import changed_files, snapshot, tar_chunks


def test_only_created_or_modified_files_are_outputs(tmp_path):
    (tmp_path / "unchanged.py").write_text("same\n")
    (tmp_path / "edited.txt").write_text("before\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "kept.txt").write_text("kept\n")
    before = snapshot(tmp_path)

    (tmp_path / "edited.txt").write_text("after, longer\n")
    (tmp_path / "new.txt").write_text("new\n")
    (tmp_path / "sub" / "deep").mkdir()
    (tmp_path / "sub" / "deep" / "model.bin").write_bytes(b"\0" * 10)
    outside = tmp_path.parent / "outside-data"
    outside.mkdir(exist_ok=True)
    (outside / "big.bin").write_bytes(b"x" * 100)
    (tmp_path / "data").symlink_to(outside)  # a mount: never followed
    (tmp_path / "link.txt").symlink_to(tmp_path / "new.txt")  # a symlink is not a file to save
    (tmp_path / "mounted").mkdir()  # a folder mount placed as a real folder
    (tmp_path / "mounted" / "x.txt").write_text("mounted\n")

    assert changed_files(tmp_path, before, ["data", "mounted"]) == [
        "edited.txt", "new.txt", "sub/deep/model.bin",
    ]


def test_a_rewrite_with_the_same_size_still_counts(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"aaaa")
    before = snapshot(tmp_path)
    os.utime(path, ns=(0, before["weights.bin"][1] + 1_000_000))
    path.write_bytes(b"bbbb")
    assert changed_files(tmp_path, before, []) == ["weights.bin"]


def test_the_tar_stream_holds_the_files_and_comes_in_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "CHUNK", 4096)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "big.bin").write_bytes(os.urandom(50_000))
    (tmp_path / "small.txt").write_text("hello\n")
    (tmp_path / "naïve name.txt").write_text("unicode\n")

    chunks = list(tar_chunks(tmp_path, ["dir/big.bin", "small.txt", "naïve name.txt"]))

    assert max(len(chunk) for chunk in chunks) <= 4096
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as tar:
        names = tar.getnames()
        assert names == ["dir/big.bin", "small.txt", "naïve name.txt"]
        assert tar.extractfile("dir/big.bin").read() == (tmp_path / "dir" / "big.bin").read_bytes()
        assert tar.extractfile("small.txt").read() == b"hello\n"


def test_a_file_removed_before_the_push_is_left_out(tmp_path):
    (tmp_path / "kept.txt").write_text("kept\n")
    data = b"".join(tar_chunks(tmp_path, ["gone.txt", "kept.txt"]))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        assert tar.getnames() == ["kept.txt"]
