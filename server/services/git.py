"""Resolving a run's git URL and ref to the commit it will run, when it is created.

Uses `git ls-remote`, so any URL git can reach works (https, ssh, git) without
cloning. Sources on the host's own filesystem (file:// URLs, plain paths) only
where the operator allows them (`Settings.allow_local_git`): a run would
otherwise read any repository the worker can, whoever owns it. Only plain
transports are allowed (no `ext::`), git never prompts for credentials, and a
full 40-hex sha is taken as is.
"""

from __future__ import annotations

import os
import re
import subprocess

from cast.protocol.validate import git_protocols, is_local_git_url
from cast.server.errors import BadRequest

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "SSH_ASKPASS": "true",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def resolve_commit(url: str, ref: str | None, *, timeout: float, allow_local: bool) -> str:
    """The commit sha that `ref` (default: the remote's HEAD) names at `url`, or BadRequest."""
    if is_local_git_url(url) and not allow_local:
        raise BadRequest(f"git URL {url!r} is on the server's own filesystem; this server does not allow "
                         "local git sources (its operator can, with CAST_ALLOW_LOCAL_GIT=1)")
    ref = ref or "HEAD"
    if _FULL_SHA.match(ref.lower()):
        return ref.lower()
    try:
        result = subprocess.run(
            ["git", "ls-remote", "--", url, ref, f"{ref}^{{}}"],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **_ENV, "GIT_ALLOW_PROTOCOL": git_protocols(allow_local=allow_local)},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BadRequest(f"git URL {url!r} did not answer within {timeout:g}s") from None
    except OSError as error:
        raise BadRequest(f"cannot run git to resolve {url!r}: {error}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["git ls-remote failed"]
        message = next((line for line in lines if line.startswith("fatal:")), lines[0])
        raise BadRequest(f"git URL {url!r} is unreachable: {message}")
    refs = {}
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
        if candidate in refs:
            return refs[candidate]
    raise BadRequest(f"ref {ref!r} not found in {url!r}")

