"""Which program installs an environment's pip packages, and the host's pip
settings said in its terms.

uv is used wherever it can be had (the worker's `uv` dependency, else one on
PATH), pip otherwise; `CAST_WORKER_INSTALLER` (auto, uv, pip) forces either.
uv reads none of pip's configuration, so the host's pip options (as
`cast.worker.dockerenv.read_pip_config` reads them: files and `PIP_*`
variables) are translated here, once, for both executors: index URLs and
find-links go into a uv.toml (they may hold passwords, which would show in a
process listing or in a committed image's metadata if they were arguments or
variables), constraint files become arguments, and the CA bundles, timeouts,
retries and the proxy become variables. uv resolves
across several indexes as pip does (`unsafe-best-match`: the best version of
any index), where its default would stop at the first index that has the
package.

Also the worker's one package cache (`uv-cache` in its work dir), shared by
both executors' builds: a build uses it holding a shared lock, and
`prune_package_cache` clears it holding the exclusive one, so it never pulls
the cache from under a build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cast.protocol.units import human_size
from cast.worker.fsops import remove_tree
from cast.worker.locking import file_lock

SETTING = "CAST_WORKER_INSTALLER"
CHOICES = ("auto", "uv", "pip")
_TRUE = ("1", "true", "yes", "on")

PACKAGE_CACHE = "uv-cache"  # uv's package cache, in a worker's work dir
_PRUNE_TIMEOUT = 3600  # seconds `uv cache prune` may take, a guard against a hang

# Where a pip location (a URL or a local path) is seen by the installer: the
# same path on the host, a mount in a build container; None drops it, as pip
# skips a local folder that is not there.
Place = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Installer:
    """The program a build installs with and the note its first line ends with."""

    name: str  # "uv" or "pip"
    uv: str | None  # the uv binary, when name is "uv"
    note: str  # "with uv", "with pip (uv not found)"


def find_uv() -> str | None:
    """The uv binary itself (not a shim script: Docker builds mount it), else None."""
    try:
        from uv import find_uv_bin  # the worker's pinned dependency
        found = find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    return os.path.realpath(found) if found else None


def choose_installer(setting: str | None = None) -> Installer:
    """The installer `CAST_WORKER_INSTALLER` (or `setting`) asks for; ValueError
    when the setting is not one of CHOICES or asks for a uv this host lacks."""
    choice = (os.environ.get(SETTING, "") if setting is None else setting).strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{SETTING}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "pip":
        return Installer("pip", None, f"with pip ({SETTING}=pip)")
    uv = find_uv()
    if uv is None:
        if choice == "uv":
            raise ValueError(f"{SETTING}=uv but uv is not installed on this worker (pip install uv)")
        return Installer("pip", None, "with pip (uv not found)")
    return Installer("uv", uv, "with uv")


def host_place(location: str) -> str | None:
    """A pip location as the host's own uv sees it: a local path only if it exists."""
    if "://" in location and not location.startswith("file://"):
        return location
    path = location.removeprefix("file://")
    return location if Path(path).exists() else None


@dataclass
class UvSettings:
    """The host's pip settings for one uv install."""

    config: str = ""  # a uv.toml, for --config-file
    arguments: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)


def _toml_list(values: list[str]) -> str:
    # A JSON string is a TOML basic string.
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def uv_settings(pip: dict[str, str], *, place: Place = host_place, place_file: Place = host_place) -> UvSettings:
    """pip's options (option → value, as pip's config names them) as uv's.

    `place` maps an index, find-links location; `place_file` a file (constraints, CA bundles)."""
    top, section, arguments, environment = [], ["[pip]", 'index-strategy = "unsafe-best-match"'], [], {}
    index = place(pip["index-url"]) if pip.get("index-url") else None
    if index:
        section.append(f"index-url = {json.dumps(index)}")
    for option in ("extra-index-url", "find-links"):
        carried = [c for c in (place(value) for value in pip.get(option, "").split()) if c]
        if carried:
            section.append(f"{option} = {_toml_list(carried)}")
    if pip.get("no-index", "").lower() in _TRUE:
        section.append("no-index = true")
    if pip.get("pre", "").lower() in _TRUE:
        section.append('prerelease = "allow"')
    if pip.get("trusted-host"):
        top.append(f"allow-insecure-host = {_toml_list(pip['trusted-host'].split())}")
    for constraint in pip.get("constraint", "").split():
        placed = place_file(constraint) if Path(constraint).is_file() else None
        if placed:
            arguments += ["--constraints", placed]
    if pip.get("cert") and Path(pip["cert"]).is_file():
        placed = place_file(pip["cert"])
        if placed:
            environment["SSL_CERT_FILE"] = placed
    if pip.get("client-cert") and Path(pip["client-cert"]).is_file():
        placed = place_file(pip["client-cert"])
        if placed:
            environment["SSL_CLIENT_CERT"] = placed
    if pip.get("timeout"):
        environment["UV_HTTP_TIMEOUT"] = pip["timeout"]
    if pip.get("retries"):
        environment["UV_HTTP_RETRIES"] = pip["retries"]
    if pip.get("proxy"):
        environment["HTTP_PROXY"] = environment["HTTPS_PROXY"] = pip["proxy"]
    return UvSettings(config="\n".join([*top, *section]) + "\n", arguments=arguments, environment=environment)


def using_package_cache(cache: Path) -> AbstractContextManager:
    """Held by a build for as long as it reads or fills `cache`; many builds at once."""
    return file_lock(cache.with_name(cache.name + ".lock"), shared=True)


def _owned_bytes(folder: Path) -> tuple[dict[tuple[int, int], int], set[tuple[int, int]]]:
    """The disk space of the files of `folder` that no link outside it keeps
    (an environment's hardlinks keep theirs), by inode; and every inode in it."""
    links: dict[tuple[int, int], int] = {}
    stats: dict[tuple[int, int], os.stat_result] = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.lstat(os.path.join(parent, name))
            except OSError:
                continue
            inode = (stat.st_dev, stat.st_ino)
            links[inode] = links.get(inode, 0) + 1
            stats[inode] = stat
    owned = {inode: stat.st_blocks * 512 for inode, stat in stats.items() if links[inode] >= stat.st_nlink}
    return owned, set(stats)


def prune_package_cache(cache: Path, *, everything: bool, uv: str | None) -> str:
    """Clear what no environment uses from the package cache, waiting for the
    builds using it: all of it (`everything`, which the next build fills
    again), else what uv's `cache prune` finds unused; one line saying what was freed.
    RuntimeError when uv's prune fails."""
    if not cache.is_dir():
        return f"package cache {cache}: empty"
    with file_lock(cache.with_name(cache.name + ".lock")):
        before, _ = _owned_bytes(cache)
        if everything:
            remove_tree(cache)
            how = "removed"
        elif uv is None:
            return f"package cache {cache}: kept (no uv on this worker to prune it; --all removes it)"
        else:
            pruned = subprocess.run([uv, "cache", "prune", "--cache-dir", str(cache)], capture_output=True,
                                    text=True, stdin=subprocess.DEVNULL, timeout=_PRUNE_TIMEOUT,
                                    env={**os.environ, "NO_COLOR": "1"})
            if pruned.returncode != 0:
                said = (pruned.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"uv cache prune failed (exit {pruned.returncode}): {said}")
            how = "pruned by uv"
        after, left = _owned_bytes(cache) if cache.exists() else ({}, set())
    freed = sum(size for inode, size in before.items() if inode not in left)
    kept = sum(after.values())
    return f"package cache {cache}: {how}, {human_size(freed)} freed, {human_size(kept)} kept"
