"""The run's code: its files placed in the fresh working directory.

- `git_url` + `commit_sha`: one bare mirror per URL cached under the work dir
  (fetched only when the pinned commit is missing), then that commit's files
  written into the working dir with `git archive` — the pinned sha, whatever
  the branch points at now. Works for https, ssh and git; file:// URLs and
  plain paths only when the lease says the server's operator allows them
  (git itself is told which transports it may use).
- `code_bundle`: the tar the client uploaded, fetched once per digest (the
  sha256 the server computed of it, `code_digest`) and extracted with
  tarfile's safety filter.
- neither: the working dir stays empty.

Then the spec's `workdir`, where the command starts, must be a folder of
what was placed (not a link out of it); else the run fails saying so.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from cast.protocol.messages import RunSpec
from cast.protocol.validate import git_protocols, is_local_git_url
from cast.worker.client import ServerClient, with_retries
from cast.worker.locking import file_lock

_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")


class SourceError(Exception):
    """The code could not be placed; the message is shown to the user."""


def _git(*args: str, git_dir: Path | None = None, check: bool = True,
         allow_local: bool = False) -> subprocess.CompletedProcess:
    command = ["git"] + (["--git-dir", str(git_dir)] if git_dir else []) + list(args)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": git_protocols(allow_local=allow_local)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise SourceError(f"git {args[0]} failed: {result.stderr.strip()[-800:]}")
    return result


def _has_commit(mirror: Path, sha: str) -> bool:
    return _git("cat-file", "-e", f"{sha}^{{commit}}", git_dir=mirror, check=False).returncode == 0


class SourceCache:
    """Git mirrors and code bundles kept under the worker's work dir."""

    def __init__(self, root: Path):
        self.root = root

    def mirror(self, url: str, sha: str, *, allow_local: bool = False) -> Path:
        """A bare mirror of `url` that holds commit `sha`; a URL on this host's
        filesystem only when `allow_local`."""
        if not _SHA.match(sha):
            raise SourceError(f"commit {sha!r} is not a full commit sha")
        if is_local_git_url(url) and not allow_local:
            raise SourceError(f"git URL {url!r} is on this worker's filesystem, and the server does not "
                              "allow local git sources")
        name = hashlib.sha256(url.encode()).hexdigest()[:24]
        mirror = self.root / "git" / f"{name}.git"
        with file_lock(self.root / "git" / f"{name}.lock"):
            if not (mirror / "HEAD").exists():
                shutil.rmtree(mirror, ignore_errors=True)
                _git("clone", "--mirror", "--quiet", "--", url, str(mirror), allow_local=allow_local)
            if not _has_commit(mirror, sha):
                _git("fetch", "--quiet", "--prune", "origin", "+refs/*:refs/*", git_dir=mirror,
                     allow_local=allow_local)
            if not _has_commit(mirror, sha):
                # Not reachable from any ref (e.g. force-pushed away): ask for it by name.
                _git("fetch", "--quiet", "origin", sha, git_dir=mirror, check=False, allow_local=allow_local)
            if not _has_commit(mirror, sha):
                raise SourceError(f"commit {sha} is not in {url}")
        return mirror

    def checkout(self, url: str, sha: str, workdir: Path, *, allow_local: bool = False) -> None:
        mirror = self.mirror(url, sha, allow_local=allow_local)
        archive = subprocess.Popen(["git", "--git-dir", str(mirror), "archive", "--format=tar", sha],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
                tar.extractall(workdir, filter="tar")
            # tarfile stops at the end-of-archive blocks; the record's padding
            # after them, left unread, would kill git with SIGPIPE (exit -13,
            # no message) whenever it did not fit in the pipe's buffer.
            while archive.stdout.read(1 << 16):
                pass
        except tarfile.TarError as exc:
            raise SourceError(f"the files of {sha} cannot be placed: {exc}") from exc
        finally:
            archive.stdout.close()
            stderr = archive.stderr.read().decode(errors="replace")
            archive.stderr.close()
            archive.wait()
        if archive.returncode != 0:
            raise SourceError(f"git archive of {sha} failed: {stderr.strip()[-800:]}")

    def bundle(self, client: ServerClient, digest: str, should_continue=lambda: True) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise SourceError(f"code bundle digest {digest!r} is not a sha256")
        path = self.root / "code" / f"{digest}.tar"
        with file_lock(self.root / "code" / f"{digest}.lock"):
            if not path.exists():
                partial = path.with_suffix(".partial")
                with_retries(lambda: client.download_code(digest, partial), should_continue=should_continue)
                partial.rename(path)
        return path

    def place(self, spec: RunSpec, workdir: Path, client: ServerClient, should_continue=lambda: True, *,
              allow_local_git: bool = False) -> None:
        """Put the run's code into `workdir` (an empty folder); `allow_local_git`
        as the lease says."""
        if spec.git_url:
            if not spec.commit_sha:
                raise SourceError("the run has a git URL but no resolved commit")
            self.checkout(spec.git_url, spec.commit_sha, workdir, allow_local=allow_local_git)
        elif spec.code_bundle:
            # Runs queued before the server stored bundles by digest carry
            # only the key, which then also named the file.
            digest = spec.code_digest or spec.code_bundle
            bundle = self.bundle(client, digest, should_continue)
            try:
                with tarfile.open(bundle, mode="r:*") as tar:
                    tar.extractall(workdir, filter="tar")
            except (tarfile.TarError, OSError) as exc:
                raise SourceError(f"the code bundle cannot be extracted: {exc}") from exc
        if spec.workdir:
            _check_start_dir(workdir, spec.workdir)


def _check_start_dir(workdir: Path, relative: str) -> None:
    root = os.path.realpath(workdir)
    start = os.path.realpath(workdir / relative)
    if os.path.commonpath([root, start]) != root:
        raise SourceError(f"workdir {relative!r} leads outside the run's code")
    if not os.path.isdir(start):
        raise SourceError(f"workdir {relative!r} is not a folder of the run's code")
