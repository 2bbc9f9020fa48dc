"""The worker host's package settings, carried into Docker environment builds.

Owns: reading the host's pip configuration (files and `PIP_*` variables, as
`pip config list` reports them), its proxy variables and apt proxy settings;
turning them into what a build container needs — a pip.conf (and the same
settings for uv, cast.worker.installer), an apt.conf and a proxy preamble
written into the build's input folder, and read-only bind
mounts of the local folders and files they name (file:// indexes, find-links
folders, the CA bundle, constraints files), each under the build's tmpfs at
/cast/host so nothing of them is committed into the image; and redacting the
secrets those settings hold (passwords in URLs) from every line a build logs.

Secrets only ever travel in files mounted into the build container, never in
its environment or command line, which `docker commit` would keep in the
image's metadata.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from cast.worker.installer import UvSettings, uv_settings

HOST_INPUTS = "/cast/host"  # a tmpfs in the build container

# pip options carried over. Values that name local files or folders are
# mounted; the others are copied as they are.
_PIP_URL_LISTS = ("extra-index-url", "find-links")
_PIP_FILE_OPTIONS = ("cert", "client-cert")
_PIP_PLAIN_OPTIONS = ("trusted-host", "proxy", "timeout", "retries", "no-index", "pre")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_APT_PROXY = re.compile(r'^Acquire::(https?)::Proxy\s+"([^"]*)";\s*$', re.M)
# `user:password@` right after a URL's `://`. The scheme before it is checked
# by looking back (_after_scheme): a pattern that began with the scheme's
# character class would be retried from every letter of a long word, and a
# 16k-character build line then took over a second (quadratic time).
_URL_CREDENTIALS = re.compile(r"://(?P<user>[^\s/@:]*):(?P<password>[^\s/@]+)@")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")


def read_pip_config(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The effective pip options for `pip install` on this host: option → value.

    Precedence as pip applies it: `PIP_*` variables over the `install` section
    over the `global` section (pip itself merges the files in their order).
    """
    env = dict(os.environ if environ is None else environ)
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            env=env, capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if listing.returncode != 0:
        return {}
    by_section: dict[str, dict[str, str]] = {}
    for line in listing.stdout.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, option = name.rpartition(".")
        if not sep or not dot:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        by_section.setdefault(section, {})[option] = str(value)
    merged: dict[str, str] = {}
    for section in ("global", "install", ":env:"):
        merged.update(by_section.get(section, {}))
    if "default-timeout" in merged:  # PIP_DEFAULT_TIMEOUT is `timeout` under another name
        merged.setdefault("timeout", merged.pop("default-timeout"))
    return merged


def read_apt_proxies() -> dict[str, str]:
    """`Acquire::http(s)::Proxy` from the host's apt configuration, if apt is there."""
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {scheme: url for scheme, url in _APT_PROXY.findall(dump.stdout) if url}


def _local_path(location: str) -> Path | None:
    """The host path a pip location names (`file://` URL or plain path), else None."""
    if location.startswith("file://"):
        return Path(unquote(urlsplit(location).path))
    if "://" in location:
        return None
    return Path(location)


def _after_scheme(text: str, end: int) -> bool:
    """Whether `text[:end]` ends with a URL scheme: a letter, then letters, digits, '+', '.' or '-'.

    Linear overall: the look back stops at the ':' or '/' of the `://` before."""
    start = end
    while start > 0 and text[start - 1] in _SCHEME_CHARS:
        start -= 1
    return any(char in string.ascii_letters for char in text[start:end])


def _url_credentials(text: str) -> Iterator[re.Match]:
    """Each `://user:password@` of a URL in `text`."""
    for match in _URL_CREDENTIALS.finditer(text):
        # A match without a scheme holds no '/' past its `://`, so no URL starts inside it.
        if _after_scheme(text, match.start()):
            yield match


def url_secrets(text: str) -> list[str]:
    """Passwords (and user:password pairs) written into URLs in `text`."""
    found = []
    for match in _url_credentials(text):
        found.append(match["password"])
        found.append(unquote(match["password"]))
        if match["user"]:
            found.append(f"{match['user']}:{match['password']}")
    return [secret for secret in found if secret]


@dataclass
class BuildInputs:
    """What one build container gets from the host settings."""

    mounts: list[tuple[str, str]] = field(default_factory=list)  # (host path, container path), read-only
    pip_conf: str = ""
    apt_conf: str = ""
    shell_preamble: str = ""  # `export ...` lines for proxies
    uv: UvSettings = field(default_factory=UvSettings)  # the same settings for a uv install


@dataclass
class HostPackageSettings:
    pip: dict[str, str] = field(default_factory=dict)
    apt_proxies: dict[str, str] = field(default_factory=dict)
    proxy_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_host(cls, environ: dict[str, str] | None = None) -> "HostPackageSettings":
        env = dict(os.environ if environ is None else environ)
        return cls(
            pip=read_pip_config(env),
            apt_proxies=read_apt_proxies(),
            proxy_env={name: env[name] for name in _PROXY_VARIABLES if env.get(name)},
        )

    @property
    def secrets(self) -> list[str]:
        texts = [*self.pip.values(), *self.apt_proxies.values(), *self.proxy_env.values()]
        return sorted({s for text in texts for s in url_secrets(text)}, key=len, reverse=True)

    def redact(self, line: str) -> str:
        """`line` with every secret of these settings, and any URL password, masked."""
        for secret in self.secrets:
            line = line.replace(secret, "****")
        masked, done = [], 0
        for match in _url_credentials(line):
            masked += [line[done:match.start("password")], "****"]
            done = match.end("password")
        masked.append(line[done:])
        return "".join(masked)

    def build_inputs(self) -> BuildInputs:
        """The pip.conf, apt.conf, proxy preamble and mounts for a build container."""
        inputs = BuildInputs()
        mounted: dict[str, str] = {}

        def mount(host: Path) -> str:
            """The container path under which `host` is mounted (once per host path)."""
            key = str(host)
            if key not in mounted:
                mounted[key] = f"{HOST_INPUTS}/{len(mounted)}-{host.name or 'root'}"
                inputs.mounts.append((key, mounted[key]))
            return mounted[key]

        def carry_location(location: str) -> str | None:
            path = _local_path(location)
            if path is None:
                return location
            if not path.exists():
                return None  # pip would skip it on the host too
            if location.startswith("file://"):
                # An index's pages link to files beside it (../../files/…), so
                # the index folder's parent is mounted.
                root = path.parent if path.parent != Path("/") else path
                inside = path.relative_to(root)
                return f"file://{mount(root)}" + ("" if inside == Path(".") else f"/{inside}")
            return mount(path)

        lines = ["[global]"]
        index = self.pip.get("index-url")
        if index:
            carried = carry_location(index)
            if carried:
                lines.append(f"index-url = {carried}")
        for option in _PIP_URL_LISTS:
            carried = [c for c in (carry_location(v) for v in self.pip.get(option, "").split()) if c]
            if carried:
                lines.append(f"{option} =\n" + "\n".join(f"    {c}" for c in carried))
        for option in _PIP_FILE_OPTIONS:
            value = self.pip.get(option)
            if value and Path(value).is_file():
                lines.append(f"{option} = {mount(Path(value))}")
        constraints = [Path(v) for v in self.pip.get("constraint", "").split() if Path(v).is_file()]
        if constraints:
            lines.append("constraint =\n" + "\n".join(f"    {mount(p)}" for p in constraints))
        for option in _PIP_PLAIN_OPTIONS:
            if self.pip.get(option):
                lines.append(f"{option} = {self.pip[option]}")
        inputs.pip_conf = "\n".join(lines) + "\n"
        inputs.uv = uv_settings(self.pip, place=carry_location,
                                place_file=lambda location: mount(Path(location)))
        inputs.apt_conf = "".join(
            f'Acquire::{scheme}::Proxy "{url}";\n' for scheme, url in sorted(self.apt_proxies.items())
        )
        inputs.shell_preamble = "".join(
            f"export {name}={shlex.quote(value)}\n" for name, value in sorted(self.proxy_env.items())
        )
        return inputs
