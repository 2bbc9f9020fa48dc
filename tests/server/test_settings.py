"""cast.server.settings: every path derives from data_dir, CAST_* variables
are read and checked, and the reaper's interval follows the tightest bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cast.server.settings import Settings


def test_every_path_lives_in_the_resolved_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAST_DATABASE_URL", raising=False)  # the default, whichever database the suite runs on
    settings = Settings(data_dir="data/../server")
    root = tmp_path / "server"
    assert settings.resolved_data_dir == root
    assert [settings.database_file, settings.runs_dir, settings.uploads_dir, settings.code_dir, settings.tmp_dir,
            settings.storage_id_file, settings.admin_token_file, settings.worker_token_file] == [
        root / "cast.db", root / "runs", root / "uploads", root / "code", root / "tmp",
        root / "storage-id", root / "admin-token", root / "worker-token"]
    assert settings.sqlalchemy_url == f"sqlite:///{root / 'cast.db'}"
    assert Settings(data_dir=root, database_url="sqlite:///elsewhere.db").sqlalchemy_url == "sqlite:///elsewhere.db"


def test_make_dirs_creates_a_private_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "a" / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir(mode=0o755)
    settings.make_dirs()
    settings.make_dirs()  # again, on an existing tree
    assert settings.resolved_data_dir.stat().st_mode & 0o777 == 0o700
    for path in (settings.runs_dir, settings.uploads_dir, settings.code_dir, settings.tmp_dir):
        assert path.is_dir()


def test_cast_variables_are_read_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAST_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("CAST_ALLOW_LOCAL_GIT", "1")
    monkeypatch.setenv("CAST_SOMETHING_UNKNOWN", "x")  # ignored
    settings = Settings()
    assert (settings.data_dir, settings.lease_seconds, settings.allow_local_git) == (tmp_path, 2.5, True)
    assert Settings(lease_seconds=7).lease_seconds == 7  # an argument wins
    for name, value in (("CAST_LEASE_SECONDS", "0"), ("CAST_MAX_OUTPUT_BYTES", "-1"), ("CAST_EXECUTOR", "podman"),
                        ("CAST_PORT", "http")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name.removeprefix("CAST_").lower()):
            Settings()
        monkeypatch.delenv(name)


def test_the_safe_defaults(monkeypatch):
    for name in ("CAST_ALLOW_LOCAL_GIT", "CAST_ALLOW_UNSANDBOXED_WORKERS", "CAST_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.allow_local_git, settings.allow_unsandboxed_workers, settings.host) == (False, False, "127.0.0.1")


@pytest.mark.parametrize(("bounds", "interval"), [
    ({"lease_seconds": 8}, 2.0),
    ({"lease_seconds": 8, "stage_timeout_seconds": 4}, 1.0),
    ({"lease_seconds": 8, "halt_timeout_seconds": 2}, 0.5),
    ({"lease_seconds": 0.01}, 0.05),  # never a busy loop
])
def test_the_reaper_checks_four_times_per_tightest_bound(bounds, interval):
    assert Settings(**bounds).reaper_interval == interval
