"""cast.client.code on real git repositories: where the repository is, the
bundle's content key (same commit and changes, same key), and which files a
bundle holds."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from cast.client.code import bundle_chunks, bundle_for, find_repo_root, tracked_files
from cast.client.sdk import CastError


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.invalid")
    git(root, "config", "user.name", "t")
    return root


def commit(root: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        git(root, "add", name)
    git(root, "commit", "-q", "-m", "c")
    return git(root, "rev-parse", "HEAD").strip()


def test_the_root_is_found_from_any_folder_inside(repo, tmp_path):
    (repo / "a" / "b").mkdir(parents=True)
    assert find_repo_root(repo / "a" / "b") == repo
    assert find_repo_root(tmp_path) is None
    assert bundle_for(tmp_path) is None


def test_the_key_follows_the_commit_and_the_uncommitted_changes(repo):
    head = commit(repo, {"train.py": "print(1)\n"})
    clean = bundle_for(repo / ".")
    assert (clean.root, clean.head_sha, clean.dirty) == (repo, head, False)
    assert bundle_for(repo) == clean  # the same state, the same key
    assert clean.describe() == f"project at {head[:12]}"

    (repo / "train.py").write_text("print(2)\n")
    dirty = bundle_for(repo)
    assert dirty.dirty and dirty.key != clean.key
    assert dirty.describe().endswith(", with uncommitted changes")
    (repo / "train.py").write_text("print(3)\n")
    assert bundle_for(repo).key not in (clean.key, dirty.key)

    (repo / "train.py").write_text("print(1)\n")
    (repo / "untracked.txt").write_text("not sent")  # untracked files do not count
    assert bundle_for(repo) == clean


def test_a_repository_without_commits(repo):
    assert bundle_for(repo).describe() == "project (no commits yet)"
    empty_key = bundle_for(repo).key
    (repo / "staged.py").write_text("x = 1\n")
    git(repo, "add", "staged.py")
    staged = bundle_for(repo)
    assert staged.head_sha == "" and staged.dirty and staged.key != empty_key
    (repo / "staged.py").write_text("x = 2\n")  # the working tree against the index counts too
    assert bundle_for(repo).key != staged.key


def test_a_broken_repository_is_one_clear_error(tmp_path):
    (tmp_path / "fake" / ".git").mkdir(parents=True)  # a .git folder git does not accept
    with pytest.raises(CastError, match="git rev-parse failed in"):
        bundle_for(tmp_path / "fake")


def test_the_bundle_holds_the_tracked_files_as_on_disk(repo):
    commit(repo, {"train.py": "print(1)\n", "pkg/util.py": "u = 1\n", "deleted.txt": "gone soon"})
    (repo / "train.py").write_text("print('edited')\n")
    (repo / "deleted.txt").unlink()
    (repo / "untracked.txt").write_text("not sent")
    os.symlink("train.py", repo / "link.py")
    git(repo, "add", "link.py")

    assert sorted(name for _, name in tracked_files(repo)) == ["link.py", "pkg/util.py", "train.py"]
    with tarfile.open(fileobj=io.BytesIO(b"".join(bundle_chunks(bundle_for(repo)))), mode="r:") as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert archive.extractfile(members["train.py"]).read() == b"print('edited')\n"
        assert members["link.py"].issym() and members["link.py"].linkname == "train.py"
    assert set(members) == {"link.py", "pkg/util.py", "train.py"}


def test_a_submodule_folder_is_left_out(repo):
    head = commit(repo, {"top.txt": "t"})
    (repo / "sub").mkdir()
    (repo / "sub" / "inside.txt").write_text("a submodule's file")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},sub")  # a gitlink, as a submodule is

    assert [name for _, name in tracked_files(repo)] == ["top.txt"]


def test_the_branch_and_the_subfolder_the_command_is_typed_in(repo):
    head = commit(repo, {"sub/deep/s.py": "print(1)\n"})
    git(repo, "branch", "-M", "trunk")
    at_root = bundle_for(repo)
    assert (at_root.branch, at_root.subdir) == ("trunk", None)
    below = bundle_for(repo / "sub" / "deep")
    assert (below.root, below.branch, below.subdir) == (repo, "trunk", "sub/deep")
    assert below.key == at_root.key  # the same code, wherever it is typed
    (repo / "link").symlink_to(repo / "sub")
    assert bundle_for(repo / "link").subdir == "sub"  # the real folder, not the link's name

    git(repo, "checkout", "-q", "--detach")
    detached = bundle_for(repo)
    assert (detached.head_sha, detached.branch) == (head, None)
    assert bundle_for(repo / "sub").branch is None
