"""Output routes: a worker pushes a tar, users list the manifest and download
files and folders; nothing outside a run's outputs is reachable."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from cast.server.app import create_app
from cast.server.settings import Settings

from ..conftest import in_process_api, make_tar

FILES = {"model.pt": b"weights" * 100, "logs/train.txt": b"loss 0.1\n", "logs/deep/x.bin": b"\x00\x01"}


def _pushing(api) -> dict:
    api.create_run()
    lease = api.lease(api.register())
    api.advance(lease, "mounting", "running", "saving", "pushing")
    return lease


def test_push_list_and_download(local):
    lease = _pushing(local)
    run_id = lease["run_id"]
    pushed = local.push(lease, make_tar(FILES))
    assert pushed.json() == {"files": 3, "size": sum(len(v) for v in FILES.values())}
    local.advance(lease, "complete", exit_code=0)
    manifest = local.user.get(f"/runs/{run_id}/outputs").json()["files"]
    assert manifest == [{"path": p, "size": len(FILES[p]), "sha256": hashlib.sha256(FILES[p]).hexdigest()}
                        for p in sorted(FILES)]
    assert local.user.get(f"/runs/{run_id}/outputs/model.pt").content == FILES["model.pt"]
    folder = local.user.get(f"/runs/{run_id}/outputs/logs")
    assert folder.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(folder.content)) as archive:
        assert {m.name: archive.extractfile(m).read() for m in archive if m.isfile()} == {
            "train.txt": FILES["logs/train.txt"], "deep/x.bin": FILES["logs/deep/x.bin"]}
    assert local.user.get(f"/runs/{run_id}/outputs/nope.txt").status_code == 404


def test_a_second_push_replaces_the_first(local):
    lease = _pushing(local)
    local.push(lease, make_tar({"old.txt": b"1"}))
    local.push(lease, make_tar({"new.txt": b"2"}))
    assert [f["path"] for f in local.user.get(f"/runs/{lease['run_id']}/outputs").json()["files"]] == ["new.txt"]
    assert local.user.get(f"/runs/{lease['run_id']}/outputs/old.txt").status_code == 404


def modes(root) -> dict[str, int]:
    """Permission bits of `root` (".") and of everything under it."""
    found = {".": root.stat().st_mode & 0o777}
    found.update({path.relative_to(root).as_posix(): path.stat().st_mode & 0o777 for path in root.rglob("*")})
    return found


def test_outputs_are_read_only_at_rest_and_a_kill_still_removes_them(local, settings):
    lease = _pushing(local)
    local.push(lease, make_tar({"old/x.txt": b"1"}))
    assert local.push(lease, make_tar(FILES)).status_code == 200  # replaces a sealed push
    stored = settings.runs_dir / str(lease["run_id"])
    assert modes(stored) == {".": 0o555, "logs": 0o555, "logs/deep": 0o555,
                             "model.pt": 0o444, "logs/train.txt": 0o444, "logs/deep/x.bin": 0o444}
    assert local.user.post(f"/runs/{lease['run_id']}/kill").status_code == 202
    local.advance(lease, "killed")
    assert not stored.exists()
    assert list(settings.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("path", ["%2e%2e/%2e%2e/cast.db", "a/%2e%2e/%2e%2e/%2e%2e/admin-token", "%2Fetc%2Fpasswd"])
def test_paths_outside_the_outputs_are_refused(local, path):
    lease = _pushing(local)
    local.push(lease, make_tar({"a/b.txt": b"b"}))
    response = local.user.get(f"/runs/{lease['run_id']}/outputs/{path}")
    assert response.status_code in (400, 404)
    assert set(response.json()) == {"detail"}  # an error, not the file


def test_hostile_tars_are_refused_and_leave_nothing(local, settings):
    lease = _pushing(local)
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for body in (make_tar({"ok.txt": b"1"}, extra=[link]), make_tar({"../../escape.txt": b"x"}),
                 b"this is not a tar" * 50):
        response = local.push(lease, body)
        assert response.status_code == 400, response.text
    assert local.user.get(f"/runs/{lease['run_id']}/outputs").json()["files"] == []
    assert not (settings.resolved_data_dir / "escape.txt").exists()
    assert list(settings.tmp_dir.iterdir()) == []


def test_push_needs_the_live_lease(local):
    lease = _pushing(local)
    assert local.push({**lease, "lease_token": "wrong"}, make_tar({"a": b"1"})).status_code == 409
    local.advance(lease, "complete", exit_code=0)
    late = local.push(lease, make_tar({"a": b"1"}))
    assert late.status_code == 409 and "lease" in late.json()["detail"]


def test_outputs_over_the_cap_are_refused(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", max_output_bytes=1000)
    api = in_process_api(create_app(settings), settings)
    lease = _pushing(api)
    response = api.push(lease, make_tar({"big.bin": b"x" * 2000}))
    assert response.status_code == 413
    assert "limit of 1000 bytes" in response.json()["detail"]
