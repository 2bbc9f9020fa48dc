"""The verbs about files (cli_data) through the real CLI: `cast upload` of a file
and a folder, mounting them in runs, `cast ls` of runs and uploads, and
`cast cp` of files and folders with their bytes intact."""

from __future__ import annotations

import hashlib
import os

from tests.client.helpers import assert_one_line_error


def _tree_digest(root) -> dict[str, str]:
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            digests[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digests


def test_uploads_are_listed_and_mounted(cli, worker, tmp_path):
    (tmp_path / "data.txt").write_text("one\ntwo\n")
    dataset = tmp_path / "dataset"
    (dataset / "nested").mkdir(parents=True)
    (dataset / "a.txt").write_text("alpha\n")
    (dataset / "nested" / "b.bin").write_bytes(os.urandom(3000))

    as_file = cli("upload", "data.txt")
    assert as_file.returncode == 0, as_file
    assert "uploads/data.txt" in as_file.stdout
    as_dir = cli("upload", "dataset", "-n", "ds")
    assert as_dir.returncode == 0, as_dir
    assert "uploads/ds" in as_dir.stdout

    listing = cli("ls", "uploads").stdout.splitlines()
    assert [line.split()[0] for line in listing] == ["data.txt", "ds"]
    assert cli("ls", "uploads/ds").stdout.split() == ["a.txt", "6", "B", "nested/", "2.9", "KB"]
    assert cli("ls", "uploads/ds/nested", "--json").json() == [{"name": "b.bin", "type": "file", "size": 3000}]

    assert cli("ls", "uploads/data.txt").stdout == "data.txt    8 B\n"
    assert cli("cp", "uploads/data.txt", "back.txt").returncode == 0
    assert (tmp_path / "back.txt").read_text() == "one\ntwo\n"
    assert_one_line_error(cli("ls", "uploads/data.txt/inside"), "is a file")

    assert_one_line_error(cli("upload", "data.txt"), "already exists")

    run = cli("run", "-m", "uploads/data.txt", "-m", "uploads/ds:inputs/ds",
              "cat data.txt; cat inputs/ds/a.txt; wc -c < inputs/ds/nested/b.bin; "
              "touch inputs/ds/new 2>/dev/null && echo writable || echo read-only")
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    for expected in ("one", "two", "alpha", "3000", "read-only"):
        assert expected in lines, (expected, lines)
    # Mounts are inputs, not outputs.
    assert cli("ls", "runs/1").stdout == ""


def test_cp_copies_files_and_folders_byte_for_byte(cli, worker, tmp_path):
    make = ("mkdir -p out/sub && echo hi > out/a.txt && head -c 200000 /dev/urandom > out/sub/blob.bin "
            "&& printf 'x' > top.txt")
    assert cli("run", make).returncode == 0

    folder = cli("cp", "runs/1/out", "copied")
    assert folder.returncode == 0, folder
    copied = tmp_path / "copied"
    assert sorted(_tree_digest(copied)) == ["a.txt", "sub/blob.bin"]
    assert (copied / "a.txt").read_text() == "hi\n"

    # Check the bytes against a second copy made by a run that mounts the folder.
    check = cli("run", "-m", "runs/1/out", "sha256sum out/sub/blob.bin")
    assert _tree_digest(copied)["sub/blob.bin"] in check.stdout

    # Like `cp -r`: into an existing folder, the folder lands inside it.
    first_copy = _tree_digest(copied)
    into_existing = cli("cp", "runs/1/out", "copied")
    assert into_existing.returncode == 0
    assert _tree_digest(copied / "out") == first_copy

    one_file = cli("cp", "runs/1/out/sub/blob.bin")
    assert one_file.returncode == 0, one_file
    assert (tmp_path / "blob.bin").read_bytes() == (copied / "sub" / "blob.bin").read_bytes()
    renamed = cli("cp", "runs/1/top.txt", "renamed.txt")
    assert renamed.returncode == 0 and (tmp_path / "renamed.txt").read_text() == "x"

    whole_run = cli("cp", "runs/1")
    assert whole_run.returncode == 0, whole_run
    assert sorted(_tree_digest(tmp_path / "1")) == ["out/a.txt", "out/sub/blob.bin", "top.txt"]

    assert_one_line_error(cli("cp", "runs/1/missing.txt"), "no such file or folder")
    assert_one_line_error(cli("ls", "runs/1/missing"), "no such file or folder")
    assert_one_line_error(cli("cp", "runs/99/x"))


def test_cp_of_an_uploaded_folder(cli, worker, tmp_path):
    source = tmp_path / "src"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "f.bin").write_bytes(os.urandom(70000))
    (source / "g.txt").write_text("g\n")
    assert cli("upload", "src").returncode == 0
    assert cli("cp", "uploads/src", "back").returncode == 0
    assert _tree_digest(tmp_path / "back") == _tree_digest(source)
    assert cli("cp", "uploads/src/g.txt", "g-copy.txt").returncode == 0
    assert (tmp_path / "g-copy.txt").read_text() == "g\n"
