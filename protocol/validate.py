"""Validation of everything a user can put in a run spec.

Owns: mounts and the resources they name (`runs/N[/path]`, `uploads/NAME[/path]`),
pip and apt specs, machine types, env names, labels, upload names and relative
paths. The CLI, the server and the worker refuse the same things with the same
messages because they all call these.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


class SpecError(ValueError):
    """A run spec or one of its parts is invalid; the message says why."""


class SpecTooLarge(SpecError):
    """A part of a run spec exceeds its size bound; the message names the bound."""


MAX_COMMAND_LENGTH = 64 * 1024
# Bounds on what else a run spec holds: far above any real use, far below what
# would cost a worker (or a regular expression) noticeable time.
MAX_PIP_SPEC_LENGTH = 256
MAX_ENV_NAME_LENGTH = 256
MAX_ENV_VALUE_LENGTH = 64 * 1024
MAX_ENV_TOTAL = 256 * 1024  # characters of all names and values together
MAX_PATH_LENGTH = 4096  # a relative path, as Linux's PATH_MAX
MAX_LABEL_LENGTH = 63
MAX_APT_PACKAGE_LENGTH = 201  # a name of up to 100 characters, '=' and a version of up to 100
_RESOURCE_ROOTS = ("runs", "uploads")
# Not starting with '-': a mount named after the upload would read as an option.
_UPLOAD_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._ -]{0,199}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_LABEL_LENGTH - 1}}}$")
# A pip requirement: a name with optional extras, version specifiers and an
# environment marker; no options, no URLs, no shell metacharacters.
_PIP_SPEC = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
    r"(\s*(===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)?"
    r"(\s*,\s*(===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*$"
)
_APT_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,99}(=[A-Za-z0-9.+:~-]{1,100})?$")
_MACHINE_TYPE = re.compile(r"^(cpu|gpu(:(\d{1,2}))?)$")


def normalize_relative_path(path: str, *, what: str = "path") -> str:
    """A clean relative POSIX path that cannot escape its root, or SpecError."""
    if not path or "\x00" in path:
        raise SpecError(f"{what} is empty or contains a NUL byte")
    if len(path) > MAX_PATH_LENGTH:
        raise SpecTooLarge(f"{what} of {len(path)} characters exceeds the limit of {MAX_PATH_LENGTH}")
    if path.startswith("/") or path.startswith("\\"):
        raise SpecError(f"{what} {path!r} must be relative, not absolute")
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise SpecError(f"{what} {path!r} escapes its root with '..'")
    return norm


def validate_workdir(path: str) -> str | None:
    """The folder a run starts in, relative to its code's root; None for the root itself."""
    norm = normalize_relative_path(path, what="workdir")
    return None if norm == "." else norm


@dataclass(frozen=True)
class Resource:
    """`runs/N[/sub/path]` or `uploads/NAME[/sub/path]`."""

    kind: str  # "runs" or "uploads"
    name: str  # the run number as text, or the upload name
    subpath: str  # "" for the whole resource

    @property
    def run_id(self) -> int:
        return int(self.name)

    def __str__(self) -> str:
        return "/".join(p for p in (self.kind, self.name, self.subpath) if p)


def parse_resource(text: str) -> Resource:
    if text.startswith("/"):
        raise SpecError(f"resource {text!r} must be runs/N[/path] or uploads/NAME[/path], not an absolute path")
    norm = normalize_relative_path(text, what="resource")
    parts = norm.split("/")
    if parts[0] not in _RESOURCE_ROOTS or len(parts) < 2:
        raise SpecError(f"resource {text!r} must be runs/N[/path] or uploads/NAME[/path]")
    kind, name, sub = parts[0], parts[1], "/".join(parts[2:])
    if kind == "runs" and not (name.isdigit() and int(name) > 0 and len(name) < 12):
        raise SpecError(f"resource {text!r}: {name!r} is not a run number")
    if kind == "uploads":
        validate_upload_name(name)
    return Resource(kind, name, sub)


def validate_upload_name(name: str) -> str:
    if not _UPLOAD_NAME.match(name) or name in (".", ".."):
        raise SpecError(
            f"upload name {name!r} must be 1-200 letters, digits, '.', '_', '-' or spaces, "
            "not start with '-', and not be '.' or '..'"
        )
    return name


@dataclass(frozen=True)
class Mount:
    resource: str  # as parsed by parse_resource, normalised
    path: str  # where it appears, relative to the working directory

    def to_dict(self) -> dict:
        return {"resource": self.resource, "path": self.path}


def parse_mount(text: str) -> Mount:
    """`RESOURCE[:PATH]` as typed after `-m`: the first ':' ends the resource.

    A stored name may hold ':' itself; such a file is mounted with the
    resource and path given apart (`make_mount`: the API's and --from-file's
    mapping form), where nothing needs splitting.
    """
    resource_text, _, path = text.partition(":")
    return make_mount(resource_text, path or None)


def make_mount(resource_text: str, path: str | None) -> Mount:
    """A mount of `resource_text` at `path` (default: the resource's basename)."""
    resource = parse_resource(resource_text)
    if not path:
        path = posixpath.basename(str(resource))
    return Mount(str(resource), normalize_relative_path(path, what="mount path"))


def validate_mounts(mounts: list[Mount]) -> None:
    """Refuse two mounts on one path, or one mount inside another."""
    seen: list[str] = []
    for mount in mounts:
        for other in seen:
            if mount.path == other:
                raise SpecError(f"two mounts on one path: {mount.path!r}")
            if mount.path.startswith(other + "/") or other.startswith(mount.path + "/"):
                raise SpecError(f"mount paths {other!r} and {mount.path!r} overlap")
        seen.append(mount.path)


def validate_pip_spec(spec: str) -> str:
    if len(spec) > MAX_PIP_SPEC_LENGTH:
        raise SpecTooLarge(f"--pip entry of {len(spec)} characters exceeds the limit of {MAX_PIP_SPEC_LENGTH}")
    spec = spec.strip()
    if not _PIP_SPEC.match(spec):
        raise SpecError(
            f"--pip {spec!r} is not a package requirement (NAME[extras][==VERSION]); options, URLs and ';' are refused"
        )
    return spec


def validate_apt_package(name: str) -> str:
    if not _APT_PACKAGE.match(name):
        raise SpecError(f"--apt {name!r} is not a Debian package name")
    return name


def parse_machine_type(text: str) -> int:
    """The number of GPUs a machine type asks for: cpu → 0, gpu → 1, gpu:N → N."""
    match = _MACHINE_TYPE.match(text or "")
    if not match:
        raise SpecError(f"machine type {text!r} must be cpu, gpu or gpu:N")
    if text == "cpu":
        return 0
    count = int(match.group(3) or 1)
    if not 1 <= count <= 16:
        raise SpecError(f"machine type {text!r}: N must be between 1 and 16")
    return count


def validate_env_name(name: str) -> str:
    if len(name) > MAX_ENV_NAME_LENGTH:
        raise SpecTooLarge(f"environment variable name of {len(name)} characters exceeds the limit of "
                           f"{MAX_ENV_NAME_LENGTH}")
    if not _ENV_NAME.match(name):
        raise SpecError(f"environment variable name {name!r} is not valid")
    return name


def validate_env(env: dict[str, str]) -> dict[str, str]:
    """Names valid, each value and the whole within bounds."""
    total = 0
    for name, value in env.items():
        validate_env_name(name)
        if len(value) > MAX_ENV_VALUE_LENGTH:
            raise SpecTooLarge(f"environment variable {name}: its value of {len(value)} characters exceeds "
                               f"the limit of {MAX_ENV_VALUE_LENGTH}")
        total += len(name) + len(value)
    if total > MAX_ENV_TOTAL:
        raise SpecTooLarge(f"environment variables of {total} characters in all exceed the limit of {MAX_ENV_TOTAL}")
    return env


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SpecError(f"--env {text!r} must be NAME=VALUE")
    return validate_env_name(name), value


def validate_label(label: str) -> str:
    if not _LABEL.match(label):
        raise SpecError(f"label {label!r} must be 1-63 letters, digits, '.', '_', ':' or '-'")
    return label


def is_local_git_url(url: str) -> bool:
    """Whether git would read `url` from the host's own filesystem (a file://
    URL or a path), which only an operator may allow.

    Git's own rule: `scheme://...` names a transport; otherwise a ':' before
    any '/' is the scp-like ssh form `host:path`; anything else is a path.
    """
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme:
        return scheme.group(1).lower() == "file"
    colon, slash = url.find(":"), url.find("/")
    return not (colon > 0 and (slash < 0 or colon < slash))


def git_protocols(*, allow_local: bool) -> str:
    """GIT_ALLOW_PROTOCOL for git run on a run's behalf: git itself then refuses
    every other transport (`ext::` included; `file` covers plain paths too)."""
    return "file:git:http:https:ssh" if allow_local else "git:http:https:ssh"


_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH)", re.I)


def looks_secret(env_name: str) -> bool:
    """Names whose values the viewer and `cast info` mask."""
    return bool(_SECRET_NAME.search(env_name))
