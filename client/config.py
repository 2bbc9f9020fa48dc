"""Which control plane the CLI talks to, and with which token.

In this order, the first that applies wins:

1. `CAST_SERVER_URL` with `CAST_TOKEN` (or `CAST_TOKEN_FILE`): a remote
   control plane named by the environment.
2. The login saved by `cast login URL` in `CAST_HOME/config.json` (mode 0600,
   its folder 0700); `CAST_TOKEN` or `CAST_TOKEN_FILE`, if set, still give
   the token.
3. The embedded control plane under `CAST_HOME` (default `~/.cast`), started
   on first use (see embedded.py), with its admin token.

Owns that order, reading and writing the saved login, and `Target.source`,
which says where the token came from (`cast whoami`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .sdk import CastError

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    embedded: bool
    # Where the token came from, for people: "CAST_TOKEN", "/home/me/.cast/config.json", ...
    source: str = field(default="", compare=False)


def cast_home() -> Path:
    return Path(os.environ.get("CAST_HOME") or Path.home() / ".cast").expanduser().absolute()


def config_path() -> Path:
    return cast_home() / CONFIG_FILE


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CastError(f"cannot read the token in {path} ({what}): {exc.strerror}") from None
    if not token:
        raise CastError(f"the token file {path} ({what}) is empty")
    return token


def _env_token() -> tuple[str, str] | None:
    """The token the environment gives, and which variable gave it."""
    token = os.environ.get("CAST_TOKEN", "").strip()
    if token:
        return token, "CAST_TOKEN"
    token_file = os.environ.get("CAST_TOKEN_FILE", "").strip()
    if token_file:
        path = Path(token_file).expanduser()
        return _read_token(path, "CAST_TOKEN_FILE"), f"CAST_TOKEN_FILE ({path})"
    return None


def read_login() -> dict | None:
    """The saved login `{"url", "token"}`, None if there is none; a broken file is an error."""
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CastError(f"cannot read the saved login in {path} ({exc}); `cast logout` removes it") from None
    if not (isinstance(data, dict) and isinstance(data.get("url"), str) and isinstance(data.get("token"), str)
            and data["url"] and data["token"]):
        raise CastError(f"the saved login in {path} lacks a url or a token; `cast logout` removes it")
    return data


def save_login(url: str, token: str) -> Path:
    """Write the login readable by its owner only (folder 0700, file 0600), replacing any earlier one."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump({"url": url, "token": token}, out)
        out.write("\n")
    os.replace(tmp, path)
    return path


def forget_login() -> dict | None:
    """Remove the saved login; what it was (None if there was none)."""
    path = config_path()
    try:
        login = read_login()
    except CastError:
        login = {"url": "an unreadable login", "token": ""}
    if login is None:
        return None
    path.unlink(missing_ok=True)
    return login


def resolve_target() -> Target:
    """The server to use, starting the embedded one if that is the one."""
    url = os.environ.get("CAST_SERVER_URL", "").strip()
    if url:
        given = _env_token()
        if given is None:
            raise CastError("CAST_SERVER_URL is set but no token: set CAST_TOKEN or CAST_TOKEN_FILE")
        return Target(url=url, token=given[0], embedded=False, source=given[1])

    login = read_login()
    if login is not None:
        token, source = _env_token() or (login["token"], str(config_path()))
        return Target(url=login["url"], token=token, embedded=False, source=source)

    from . import embedded

    home = cast_home()
    url = embedded.ensure_running(home)
    token_file = home / "admin-token"
    return Target(url=url, token=_read_token(token_file, "the embedded server's admin token"), embedded=True,
                  source=f"the embedded server's admin token ({token_file})")


def client():
    """An SDK client for the configured server."""
    from .sdk import Client

    target = resolve_target()
    return Client(target.url, target.token)
