"""Outputs staged by reflink: on a filesystem with shared extents (XFS made
with reflink=1), a file the worker may not move (another link to its inode)
is cloned into storage, not copied, and keeps its manifest (size, sha256)
and its read-only seal. The filesystem is a real one, made in a loop file and
mounted for the test (root and mkfs.xfs: scripts/setup.sh --system)."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import WorkerProcess
from tests.factories import log_texts, submit, wait_final

FIEMAP_SHARED = "shared"  # the flag filefrag -v prints for an extent another file also uses


@pytest.fixture
def xfs(tmp_path):
    """A fresh XFS with reflinks, mounted on a loop device; unmounted and removed, pass or fail."""
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    mount.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(512 << 20)  # sparse: XFS wants at least 300 MiB
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        # The loop device goes with the mount (mount -o loop sets autoclear).
        if subprocess.run(["umount", str(mount)]).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=True)
        image.unlink()


def _extents(path: Path) -> list[str]:
    """filefrag -v's extent lines of `path` (FIEMAP)."""
    out = subprocess.run(["filefrag", "-v", str(path)], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if re.match(r"\s*\d+:", line)]


def test_a_hardlinked_output_is_cloned_into_storage_with_its_manifest_and_seal(start_server, base_env, xfs):
    server = start_server(data_dir=xfs / "server")
    worker = WorkerProcess(server=server, work_dir=xfs / "worker", name="xfs", executor="local", env=base_env)
    worker.start()
    try:
        # Two names for one inode: neither may be moved (the other name would keep
        # writing into a sealed output), so both are cloned from it.
        run_id = submit(server, "head -c 8M /dev/urandom > a.bin && ln a.bin b.bin && sha256sum a.bin")
        run = wait_final(server, run_id, timeout=120)
    finally:
        worker.stop()
    assert run["status"] == "complete", run
    written = next(t.split()[0] for t in log_texts(server, run_id, "stdout") if t.endswith("a.bin"))
    with server.api() as api:
        manifest = {f["path"]: (f["size"], f["sha256"]) for f in api.get(f"/runs/{run_id}/outputs").json()["files"]}
    assert manifest == {"a.bin": (8 << 20, written), "b.bin": (8 << 20, written)}

    stored = server.data_dir / "runs" / str(run_id)
    a, b = stored / "a.bin", stored / "b.bin"
    assert a.stat().st_ino != b.stat().st_ino and a.stat().st_nlink == b.stat().st_nlink == 1
    # Clones of one file: every extent of each is shared, and they are the same blocks.
    assert _extents(a) and all(FIEMAP_SHARED in line for line in _extents(a) + _extents(b))
    physical = [[line.split(":")[2] for line in _extents(path)] for path in (a, b)]
    assert physical[0] == physical[1]
    for path in (a, b):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == written
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert stat.S_IMODE(stored.stat().st_mode) == 0o555
