"""Which files are a run's outputs, what is named in the log instead, and the tar stream that carries them."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from cast.protocol.messages import RunSpec
from cast.protocol.worker_messages import Lease
from cast.protocol.names import printable
from cast.worker import client, outputs
from cast.worker.client import FileSpan, span_bytes
from cast.worker.objects import ObjectPush, PushCancelled
from cast.worker.outputs import Outputs, snapshot


def _collect(root: Path, before, mounts=()) -> tuple[Outputs, list[str]]:
    lines: list[str] = []
    return Outputs.collect(root, before, list(mounts), report=lines.append), lines


def _tar(outputs_: Outputs) -> dict[str, bytes | None]:
    """Member name → content (None for a folder)."""
    with tarfile.open(fileobj=io.BytesIO(b"".join(span_bytes(outputs_.tar()))), mode="r:") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


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
    (tmp_path / "empty").mkdir()
    outside = tmp_path.parent / "outside-data"
    outside.mkdir(exist_ok=True)
    (outside / "big.bin").write_bytes(b"x" * 100)
    (tmp_path / "data").symlink_to(outside)  # a mount: never followed, never named
    (tmp_path / "mounted").mkdir()  # a folder mount placed as a real folder
    (tmp_path / "mounted" / "x.txt").write_text("mounted\n")
    (tmp_path / "in" / "two" / "levels").mkdir(parents=True)  # folders made to hold a mount
    (tmp_path / "in" / "two" / "mine.txt").write_text("the run's\n")

    found, lines = _collect(tmp_path, before, ["data", "mounted", "in/two/levels"])

    assert found.files == ["edited.txt", "in/two/mine.txt", "new.txt", "sub/deep/model.bin"]
    assert found.folders == ["empty", "sub/deep"]
    assert lines == []


def test_a_rewrite_with_the_same_size_still_counts(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"aaaa")
    before = snapshot(tmp_path)
    os.utime(path, ns=(0, before["weights.bin"][2] + 1_000_000))
    path.write_bytes(b"bbbb")
    assert _collect(tmp_path, before)[0].files == ["weights.bin"]


def test_every_entry_not_saved_is_named_with_why(tmp_path):
    before = snapshot(tmp_path)
    (tmp_path / "link.txt").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "pipe")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
    os.mknod(tmp_path / "null", 0o020600, os.makedev(1, 3))
    (tmp_path / os.fsdecode(b"bad\xffutf8")).write_text("x")
    (tmp_path / "new\nline.txt").write_text("x")
    (tmp_path / os.fsdecode(b"bad\xfedir")).mkdir()
    (tmp_path / os.fsdecode(b"bad\xfedir") / "inner.txt").write_text("x")
    long_path = "/".join(c * 250 for c in "defgh")  # 1254 bytes
    long_dir = tmp_path / long_path
    long_dir.mkdir(parents=True)
    (long_dir / "deep.txt").write_text("x")
    (tmp_path / "fine.txt").write_text("x")

    found, lines = _collect(tmp_path, before)

    assert found.files == ["fine.txt"]
    assert found.folders == ["/".join(c * 250 for c in "defg"[:n]) for n in range(1, 5)]
    assert lines == [
        r"not saved: bad\xfedir: a folder, and its name is not valid UTF-8",
        r"not saved: bad\xfedir/inner.txt: its name is not valid UTF-8",
        r"not saved: bad\xffutf8: its name is not valid UTF-8",
        f"not saved: {printable(long_path)}: a folder, and its path is 1254 bytes long; "
        "the server stores paths of at most 1024 bytes",
        f"not saved: {printable(long_path + '/deep.txt')}: its path is 1263 bytes long; "
        "the server stores paths of at most 1024 bytes",
        "not saved: link.txt: a symbolic link (links are not followed)",
        r"not saved: new\nline.txt: its name holds a control character (a newline, a tab, ...)",
        "not saved: null: a device (never opened)",
        "not saved: pipe: a FIFO (never opened)",
        "not saved: sock: a socket (never opened)",
    ]


def test_a_long_list_of_entries_not_saved_is_cut_short_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "MAX_NAMED", 3)
    before = snapshot(tmp_path)
    for index in range(5):
        (tmp_path / f"link{index}").symlink_to("/")
    lines = _collect(tmp_path, before)[1]
    assert lines == [*(f"not saved: link{i}: a symbolic link (links are not followed)" for i in range(3)),
                     "not saved: 2 more entries, not named one by one"]


def test_a_file_swapped_for_a_fifo_after_the_walk_is_named_and_never_blocks(tmp_path):
    before = snapshot(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    found, lines = _collect(tmp_path, before)
    assert found.files == ["a.bin", "b.bin"]
    (tmp_path / "a.bin").unlink()
    os.mkfifo(tmp_path / "a.bin")  # as an escaped process of the run would

    members: dict = {}
    reader = threading.Thread(target=lambda: members.update(_tar(found)), daemon=True)
    reader.start()
    reader.join(timeout=120)

    assert not reader.is_alive(), "the tar blocked on the FIFO"
    assert members == {"b.bin": b"b"}
    assert lines == ["not saved: a.bin: it became a FIFO (never opened) after it was listed"]
    _tar(found)  # a retried push names it once
    assert len(lines) == 1


def test_a_file_swapped_for_a_link_or_removed_after_the_walk_is_named(tmp_path):
    before = snapshot(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "gone.txt").write_text("g")
    found, lines = _collect(tmp_path, before)
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "sub").rename(tmp_path / "moved")
    (tmp_path / "sub").symlink_to(tmp_path / "moved")  # a link where a folder was

    assert _tar(found) == {"sub": None}
    assert lines == ["not saved: gone.txt: removed before it could be saved",
                     "not saved: sub/a.txt: a folder on its path was replaced after it was listed "
                     "(links are not followed)"]


def test_a_hardlink_to_a_host_file_is_saved_as_its_content_and_the_file_is_untouched(tmp_path):
    host = tmp_path / "host-secret.txt"
    host.write_text("host\n")
    os.chmod(host, 0o600)
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(work)
    os.link(host, work / "linked.txt")
    found, _ = _collect(work, before)
    assert _tar(found) == {"linked.txt": b"host\n"}
    assert host.read_text() == "host\n" and oct(host.stat().st_mode & 0o777) == oct(0o600)
    assert host.stat().st_nlink == 2  # still the same file: nothing was copied over it


def test_a_sparse_file_is_saved_as_its_full_length(tmp_path):
    before = snapshot(tmp_path)
    with open(tmp_path / "sparse.bin", "wb") as handle:
        handle.seek(8 * 1024 * 1024)
        handle.write(b"end")
    assert os.stat(tmp_path / "sparse.bin").st_blocks * 512 < 1024 * 1024  # really sparse on this disk
    found, _ = _collect(tmp_path, before)
    assert _tar(found) == {"sparse.bin": bytes(8 * 1024 * 1024) + b"end"}


def test_files_over_the_servers_cap_are_refused_before_sending_by_their_listed_size(tmp_path):
    before = snapshot(tmp_path)
    with open(tmp_path / "sparse.bin", "wb") as handle:
        handle.truncate(1 << 40)
    (tmp_path / "small.txt").write_bytes(b"12345")
    found, _ = _collect(tmp_path, before)
    assert found.size == (1 << 40) + 5
    assert found.over_limit(None, what="run 1") is None
    assert found.over_limit((1 << 40) + 5, what="run 1") is None
    assert found.over_limit(1 << 40, what="run 1") == f"run 1 exceeds the limit of {1 << 40} bytes"


def test_the_tar_stream_holds_the_files_and_sends_big_ones_from_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "SMALL_FILE", 4096)
    monkeypatch.setattr(client, "SPAN_READ", 4096)
    before = snapshot(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "big.bin").write_bytes(os.urandom(50_000))
    (tmp_path / "small.txt").write_text("hello\n")
    (tmp_path / "naïve name.txt").write_text("unicode\n")
    found, _ = _collect(tmp_path, before)

    pieces = [(piece.size, os.fstat(piece.file.fileno()).st_ino) if isinstance(piece, FileSpan) else len(piece)
              for piece in found.tar()]
    chunks = list(span_bytes(found.tar()))

    assert (50_000, (tmp_path / "dir" / "big.bin").stat().st_ino) in pieces  # never read into memory
    assert max(len(chunk) for chunk in chunks) <= 4096
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as tar:
        assert tar.getnames() == ["dir", "dir/big.bin", "naïve name.txt", "small.txt"]
        assert tar.extractfile("dir/big.bin").read() == (tmp_path / "dir" / "big.bin").read_bytes()
        assert tar.extractfile("small.txt").read() == b"hello\n"


@pytest.mark.parametrize("size", [0, 511, 512, 513, outputs.SMALL_FILE, outputs.SMALL_FILE + 1])
def test_each_file_fills_whole_blocks(tmp_path, size):
    before = snapshot(tmp_path)
    (tmp_path / "f.bin").write_bytes(b"z" * size)
    data = b"".join(span_bytes(_collect(tmp_path, before)[0].tar()))
    assert len(data) % 512 == 0
    assert _tar(_collect(tmp_path, before)[0]) == {"f.bin": b"z" * size}


# --- staged on the server's filesystem ----------------------------------------------

def _stage(found: Outputs, staging: Path) -> dict[str, tuple[int, str]]:
    staging.mkdir(exist_ok=True)
    staged = found.stage(staging, "token")
    return {f.path: (f.size, f.sha256) for f in staged.files}


def _listing(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_staging_moves_each_file_hashed_once_and_keeps_new_folders(tmp_path):
    work, staging = tmp_path / "work", tmp_path / "staged"
    work.mkdir()
    (work / "kept.txt").write_text("checkout")
    before = snapshot(work)
    (work / "sub").mkdir()
    (work / "sub" / "model.bin").write_bytes(os.urandom(3 * outputs.CHUNK + 5))
    (work / "empty").mkdir()
    inode = (work / "sub" / "model.bin").stat().st_ino
    data = (work / "sub" / "model.bin").read_bytes()
    found, lines = _collect(work, before)
    assert _stage(found, staging) == {"sub/model.bin": (len(data), hashlib.sha256(data).hexdigest())}
    assert (staging / "sub" / "model.bin").stat().st_ino == inode  # renamed: no byte copied
    assert (staging / "empty").is_dir() and not (work / "sub" / "model.bin").exists()
    assert (work / "kept.txt").read_text() == "checkout" and lines == []
    assert found.stage(staging, "token").files == [outputs.StagedFile("sub/model.bin", len(data),
                                                                      hashlib.sha256(data).hexdigest())]


def test_staging_copies_a_hardlink_to_a_host_file_and_leaves_the_host_file_alone(tmp_path):
    host = tmp_path / "host-secret.txt"
    host.write_text("host\n")
    os.chmod(host, 0o600)
    work, staging = tmp_path / "work", tmp_path / "staged"
    work.mkdir()
    before = snapshot(work)
    os.link(host, work / "linked.txt")
    found, _ = _collect(work, before)
    assert _stage(found, staging) == {"linked.txt": (5, hashlib.sha256(b"host\n").hexdigest())}
    copy = staging / "linked.txt"
    assert copy.read_bytes() == b"host\n" and copy.stat().st_ino != host.stat().st_ino
    assert copy.stat().st_nlink == 1
    assert host.stat().st_nlink == 2 and oct(host.stat().st_mode & 0o777) == oct(0o600)


def test_staging_names_and_leaves_entries_swapped_after_the_walk(tmp_path):
    work, staging = tmp_path / "work", tmp_path / "staged"
    work.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    before = snapshot(work)
    for name in ["fifo.bin", "link.bin", "gone.bin", "ok.bin"]:
        (work / name).write_bytes(b"x")
    os.symlink(outside, work / "symlink")
    os.mkfifo(work / "fifo")
    found, lines = _collect(work, before)
    (work / "fifo.bin").unlink()
    os.mkfifo(work / "fifo.bin")
    (work / "link.bin").unlink()
    os.symlink(outside, work / "link.bin")
    (work / "gone.bin").unlink()

    done = threading.Event()
    threading.Thread(target=lambda: (_stage(found, staging), done.set()), daemon=True).start()
    assert done.wait(120), "staging blocked on a FIFO"
    assert _listing(staging) == {"ok.bin": b"x"}
    assert sorted(lines) == [
        "not saved: fifo.bin: it became a FIFO (never opened) after it was listed",
        "not saved: fifo: a FIFO (never opened)",
        "not saved: gone.bin: removed before it could be saved",
        "not saved: link.bin: it became a symbolic link (links are not followed) after it was listed",
        "not saved: symlink: a symbolic link (links are not followed)",
    ]
    assert outside.read_text() == "outside" and (work / "link.bin").is_symlink()


def test_outputs_whose_manifest_would_pass_the_json_cap_go_as_a_tar(tmp_path, monkeypatch):
    storage_root = tmp_path / "storage"
    (storage_root / "tmp").mkdir(parents=True)
    (storage_root / "storage-id").write_text("here\n")
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(work)
    (work / "a.txt").write_text("a")
    found, _ = _collect(work, before)
    lease = Lease(run_id=3, lease_token="t", lease_seconds=2, attempt=1, spec=RunSpec(command="true"), mounts=[],
                  storage_root=str(storage_root), storage_id="here")
    sent: list[str] = []

    class Client:  # records which route the push took
        def push_outputs(self, run_id, token, chunks):
            sent.append(("tar", sorted(_tar_bytes(b"".join(span_bytes(chunks))))))

        def adopt_outputs(self, run_id, staged):
            sent.append(("staged", [f.path for f in staged.files]))

    monkeypatch.setattr(outputs, "MAX_MANIFEST_BYTES", 10)
    found.sender(lease)(Client(), 3, "t")
    assert sent == [("tar", ["a.txt"])] and list((storage_root / "tmp").iterdir()) == []
    monkeypatch.setattr(outputs, "MAX_MANIFEST_BYTES", 1 << 20)
    found.sender(lease)(Client(), 3, "t")
    assert sent[1] == ("staged", ["a.txt"]) and not (work / "a.txt").exists()


def _tar_bytes(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getnames()


# --- a kill while the outputs are walked or staged -------------------------------------

def _asked_after(count: int):
    """A `cancelled` that says yes from its `count`-th question on, and counts them."""
    asked = []

    def cancelled() -> bool:
        asked.append(True)
        return len(asked) >= count

    return cancelled, asked


def test_a_walk_cancelled_midway_stops_at_the_next_entry(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i:02d}").write_text("x")
    cancelled, asked = _asked_after(10)
    assert Outputs.collect(tmp_path, {}, [], report=lambda line: None, cancelled=cancelled) is None
    assert len(asked) == 10  # not one question past the answer
    assert len(_collect(tmp_path, {})[0].files) == 50  # never asked: the whole walk


def test_a_staging_cancelled_midway_removes_what_it_moved_and_says_so(tmp_path):
    work, staging = tmp_path / "work", tmp_path / "staged"
    (work / "sub").mkdir(parents=True)
    for i in range(20):
        (work / "sub" / f"f{i:02d}").write_text(str(i))
    found = _collect(work, {})[0]
    staging.mkdir()
    cancelled, asked = _asked_after(6)
    with pytest.raises(PushCancelled):
        found.stage(staging, "token", cancelled)
    assert not staging.exists()  # nothing half-staged is left for the server to find
    assert len(asked) == 6 and len(list((work / "sub").iterdir())) == 15  # five moved, then it stopped


def test_a_push_to_the_object_store_cancelled_stops_before_hashing_or_asking_anything(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"x" * 1024)
    found = _collect(tmp_path, {})[0]
    push = ObjectPush(tmp_path, found.files, found.folders, lambda path, why: None, cancelled=lambda: True)
    with pytest.raises(PushCancelled):
        push(None, 1, "token")  # no client is needed: nothing is sent
