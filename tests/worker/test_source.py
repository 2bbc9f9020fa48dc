"""Placing a run's code: git mirrors at a pinned commit, plain paths, missing commits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cast.protocol.messages import RunSpec
from cast.worker.source import SourceCache, SourceError


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo


def test_checks_out_the_pinned_commit_after_the_branch_moved(repo, tmp_path):
    first = commit(repo, {"train.py": "print('v1')\n", "pkg/util.py": "X = 1\n"}, "one")
    commit(repo, {"train.py": "print('v2')\n", "new.txt": "later\n"}, "two")
    cache = SourceCache(tmp_path / "cache")
    workdir = tmp_path / "run"
    workdir.mkdir()

    cache.checkout(f"file://{repo}", first, workdir, allow_local=True)

    assert (workdir / "train.py").read_text() == "print('v1')\n"
    assert (workdir / "pkg" / "util.py").read_text() == "X = 1\n"
    assert not (workdir / "new.txt").exists()
    assert not (workdir / ".git").exists()


def test_fetches_into_the_cached_mirror_only_when_the_commit_is_missing(repo, tmp_path):
    first = commit(repo, {"a.txt": "1\n"}, "one")
    cache = SourceCache(tmp_path / "cache")
    mirror = cache.mirror(str(repo), first, allow_local=True)  # a plain local path works as a URL
    assert cache.mirror(str(repo), first, allow_local=True) == mirror
    second = commit(repo, {"a.txt": "2\n"}, "two")

    workdir = tmp_path / "run"
    workdir.mkdir()
    cache.checkout(str(repo), second, workdir, allow_local=True)

    assert (workdir / "a.txt").read_text() == "2\n"
    assert len(list((tmp_path / "cache" / "git").glob("*.git"))) == 1


def test_a_commit_the_repository_lacks_is_a_clear_error(repo, tmp_path):
    commit(repo, {"a.txt": "1\n"}, "one")
    cache = SourceCache(tmp_path / "cache")
    with pytest.raises(SourceError, match="is not in"):
        cache.checkout(f"file://{repo}", "0" * 40, tmp_path, allow_local=True)


def test_a_sha_that_is_not_a_sha_is_refused_before_git_sees_it(repo, tmp_path):
    with pytest.raises(SourceError, match="not a full commit sha"):
        SourceCache(tmp_path / "cache").mirror(f"file://{repo}", "--upload-pack=touch /tmp/x")


def test_an_unreachable_url_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="git clone failed"):
        SourceCache(tmp_path / "cache").mirror(f"file://{tmp_path}/nowhere", "a" * 40, allow_local=True)


@pytest.mark.parametrize("url", ["file://{repo}", "{repo}", "ext::sh -c touch% {marker}"])
def test_a_local_or_command_source_the_server_did_not_allow_is_never_cloned(repo, tmp_path, url):
    commit(repo, {"a.txt": "1\n"}, "one")
    marker = tmp_path / "ran"
    with pytest.raises(SourceError, match="does not allow local git sources|not allowed"):
        SourceCache(tmp_path / "cache").mirror(url.format(repo=repo, marker=marker), "a" * 40)
    assert not marker.exists()
    assert not list((tmp_path / "cache" / "git").glob("*.git/objects"))


def test_without_git_url_or_bundle_the_working_dir_stays_empty(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    SourceCache(tmp_path / "cache").place(RunSpec(command="true"), workdir, client=None)
    assert list(workdir.iterdir()) == []


def test_the_workdir_must_be_a_folder_of_the_placed_code(repo, tmp_path):
    (repo / "out").symlink_to(tmp_path)  # a link out of the code, committed
    sha = commit(repo, {"sub/s.py": "print(1)\n", "file.txt": "x\n"}, "one")
    cache = SourceCache(tmp_path / "cache")
    for workdir, problem in (("sub", None), ("missing", "workdir 'missing' is not a folder of the run's code"),
                             ("file.txt", "workdir 'file.txt' is not a folder of the run's code"),
                             ("out", "workdir 'out' leads outside the run's code")):
        run = tmp_path / f"run-{workdir}"
        run.mkdir()
        spec = RunSpec(command="true", git_url=f"file://{repo}", commit_sha=sha, workdir=workdir)
        if problem is None:
            cache.place(spec, run, client=None, allow_local_git=True)
            assert (run / "sub" / "s.py").exists()
        else:
            with pytest.raises(SourceError, match=problem):
                cache.place(spec, run, client=None, allow_local_git=True)
