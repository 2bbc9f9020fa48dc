"""Which control plane the CLI talks to, and with which token.

`CAST_SERVER_URL` with `CAST_TOKEN` (or `CAST_TOKEN_FILE`) names a remote
control plane. Without `CAST_SERVER_URL` the CLI uses the embedded one under
`CAST_HOME` (default `~/.cast`), starting it on first use (see embedded.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .sdk import CastError


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    embedded: bool


def cast_home() -> Path:
    return Path(os.environ.get("CAST_HOME") or Path.home() / ".cast").expanduser().absolute()


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CastError(f"cannot read the token in {path} ({what}): {exc.strerror}") from None
    if not token:
        raise CastError(f"the token file {path} ({what}) is empty")
    return token


def resolve_target() -> Target:
    """The server to use, starting the embedded one if that is the one."""
    url = os.environ.get("CAST_SERVER_URL", "").strip()
    if url:
        token = os.environ.get("CAST_TOKEN", "").strip()
        if not token:
            token_file = os.environ.get("CAST_TOKEN_FILE", "").strip()
            if not token_file:
                raise CastError("CAST_SERVER_URL is set but no token: set CAST_TOKEN or CAST_TOKEN_FILE")
            token = _read_token(Path(token_file).expanduser(), "CAST_TOKEN_FILE")
        return Target(url=url, token=token, embedded=False)

    from . import embedded

    home = cast_home()
    url = embedded.ensure_running(home)
    return Target(url=url, token=_read_token(home / "admin-token", "the embedded server's admin token"), embedded=True)


def client():
    """An SDK client for the configured server."""
    from .sdk import Client

    target = resolve_target()
    return Client(target.url, target.token)
