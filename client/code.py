"""The code a run gets when no `--github-url` is given: the git repository the
command is typed in, as its tracked files are in the working tree.

Owns: finding the repository (and where in it the command is typed, the
folder the run starts in), what it is on (commit, branch, uncommitted
changes), the bundle's content key (sha256 of the HEAD
sha and `git diff HEAD --binary`, so the same commit with the same uncommitted
changes always gives the same key) and the bundle itself, a tar of the
tracked files streamed from disk. The server keeps bundles by key, so code it
already has is not sent again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .sdk import CastError


@dataclass(frozen=True)
class CodeBundle:
    root: Path
    head_sha: str  # "" in a repository without commits
    dirty: bool  # tracked files differ from HEAD
    key: str
    branch: str | None = None  # None when HEAD is detached or has no commit
    subdir: str | None = None  # the folder of the repository the command was typed in; None at its root

    def describe(self) -> str:
        where = f"{self.root.name} at {self.head_sha[:12]}" if self.head_sha else f"{self.root.name} (no commits yet)"
        return where + (", with uncommitted changes" if self.dirty else "")


def find_repo_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding `.git` (cheap: no git call)."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _git(root: Path, *args: str) -> bytes:
    import subprocess

    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise CastError("git is not installed, so the code of this repository cannot be sent; use --github-url") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise CastError(f"git {args[0]} failed in {root}: {message[-1] if message else 'no message'}")
    return result.stdout


def bundle_for(cwd: Path) -> CodeBundle | None:
    """The bundle for the repository around `cwd`, or None outside one."""
    found = find_repo_root(cwd)
    if found is None:
        return None
    # imported here, as in _git: a `cast run` outside a repository needs neither
    import hashlib
    import subprocess

    # One git call for all three in the usual case; a repository without commits has no HEAD.
    answer = subprocess.run(["git", "-C", str(found), "rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"],
                            capture_output=True, check=False).stdout.decode().split("\n")
    branch = None
    if len(answer) >= 3 and len(answer[1]) in (40, 64):
        root, head = Path(answer[0]), answer[1]
        branch = answer[2] if answer[2] and answer[2] != "HEAD" else None  # "HEAD": detached
    else:
        root, head = Path(_git(found, "rev-parse", "--show-toplevel").decode().strip()), ""
    diff_options = ("--binary", "--no-ext-diff", "--no-textconv", "--no-color")
    if head:
        diff = _git(root, "diff", "HEAD", *diff_options)
    else:  # no commit yet: the index against nothing, then the working tree against the index
        diff = _git(root, "diff", "--cached", *diff_options) + _git(root, "diff", *diff_options)
    key = hashlib.sha256(head.encode() + b"\0" + diff).hexdigest()
    inside = Path(os.path.realpath(cwd)).relative_to(os.path.realpath(root)).as_posix()
    return CodeBundle(root=root, head_sha=head, dirty=bool(diff), key=key, branch=branch,
                      subdir=None if inside == "." else inside)


def tracked_files(root: Path) -> list[tuple[str, str]]:
    """(path on disk, path in the bundle) of each tracked file still present;
    submodules (folders in the index) are left out."""
    members = []
    for name in _git(root, "ls-files", "-z").split(b"\0"):
        if not name:
            continue
        relative = os.fsdecode(name)
        full = os.path.join(root, relative)
        if os.path.lexists(full) and (os.path.islink(full) or not os.path.isdir(full)):
            members.append((full, relative))
    return members


def bundle_chunks(bundle: CodeBundle) -> Iterator[bytes]:
    from .tarstream import tar_chunks

    return tar_chunks(tracked_files(bundle.root), follow_symlinks=False)
