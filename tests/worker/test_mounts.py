"""cast.worker.mounts: when a worker may mount the server's own copy in place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cast.protocol.messages import RunSpec
from cast.protocol.worker_messages import Lease, LeaseMount
from cast.server.services import storage
from cast.worker.mounts import MountCache, _usable_in_place

NOBODY = 65534


@pytest.fixture
def shared_root():
    """A folder everyone may traverse, standing for a data dir the server (root) shares."""
    root = Path(tempfile.mkdtemp())
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root)


def _stored(root: Path, name: str, *, sealed: bool) -> Path:
    folder = root / "runs" / name
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    if sealed:
        storage.seal(folder)
    return folder


def test_a_non_root_worker_mounts_sealed_copies_in_place_and_nothing_else(shared_root):
    (shared_root / "storage-id").write_text("same-disk\n")
    sealed = _stored(shared_root, "1", sealed=True)
    unsealed = _stored(shared_root, "2", sealed=False)  # as an older server left it
    own = _stored(shared_root, "3", sealed=True)
    for path in [own, *own.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)  # the worker's user could change the modes back
    lease = Lease(run_id=4, lease_token="token", lease_seconds=2, attempt=1, spec=RunSpec(command="true"),
                  storage_root=str(shared_root), storage_id="same-disk", mounts=[
                      LeaseMount(resource="runs/1", path="in", kind="dir", local_path=str(sealed)),
                      LeaseMount(resource="runs/1/sub/a.txt", path="a.txt", kind="file",
                                 local_path=str(sealed / "sub/a.txt")),
                  ])
    os.seteuid(NOBODY)
    try:
        verdicts = {name: _usable_in_place(path) for name, path in [
            ("sealed", sealed), ("sealed file", sealed / "sub" / "a.txt"), ("unsealed", unsealed),
            ("owned by the worker", own), ("missing", shared_root / "runs" / "9")]}
        # No download happens (there is no client to download with): both come from the server's copy.
        mounts = MountCache(shared_root / "unused").prepare(lease, client=None)
    finally:
        os.seteuid(0)
    assert verdicts == {"sealed": True, "sealed file": True, "unsealed": False, "owned by the worker": False,
                        "missing": False}
    assert [m.source for m in mounts] == [sealed, sealed / "sub" / "a.txt"]
