"""The wire protocol shared by the CLI, the control plane and the worker.

Owns: the run status enum and its table of allowed transitions, the stage
lines shown for each transition, and the validation of everything a user can
put in a run spec (mounts, pip/apt specs, machine types, env names, paths).
Plain Python on purpose: the CLI imports it on every invocation and must start
fast, and the server and worker wrap it in their own schemas.
"""

from __future__ import annotations

import enum
import posixpath
import re
from dataclasses import dataclass


class SpecError(ValueError):
    """A run spec or one of its parts is invalid; the message says why."""


class RunStatus(str, enum.Enum):
    MACHINE_REQUESTED = "machine_requested"
    BUILDING = "building"
    MOUNTING = "mounting"
    RUNNING = "running"
    SAVING = "saving"
    PUSHING = "pushing"
    COMPLETE = "complete"
    FAILED = "failed"
    BUILD_FAILED = "build_failed"
    MOUNT_FAILED = "mount_failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    KILLING = "killing"
    KILLED = "killed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


S = RunStatus

# Every allowed change of a run's status. Anything not listed is refused.
# - the worker moves a run forward through the stages;
# - stop/kill from the API move an active run to stopping/killing (a queued
#   run has nothing to stop, so it goes straight to stopped/killed);
# - a stopped run still saves and pushes its outputs, a killed one does not;
# - a lost lease makes any leased run interrupted, and a retry requeues it.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.MACHINE_REQUESTED: frozenset({S.BUILDING, S.STOPPED, S.KILLED}),
    S.BUILDING: frozenset(
        {S.MOUNTING, S.BUILD_FAILED, S.STOPPING, S.KILLING, S.INTERRUPTED}
    ),
    S.MOUNTING: frozenset(
        {S.RUNNING, S.MOUNT_FAILED, S.STOPPING, S.KILLING, S.INTERRUPTED}
    ),
    S.RUNNING: frozenset({S.SAVING, S.STOPPING, S.KILLING, S.INTERRUPTED}),
    S.SAVING: frozenset({S.PUSHING, S.FAILED, S.KILLING, S.INTERRUPTED}),
    S.PUSHING: frozenset(
        {S.COMPLETE, S.FAILED, S.STOPPED, S.KILLING, S.INTERRUPTED}
    ),
    S.STOPPING: frozenset({S.SAVING, S.STOPPED, S.KILLING, S.INTERRUPTED}),
    S.KILLING: frozenset({S.KILLED, S.INTERRUPTED}),
    S.INTERRUPTED: frozenset({S.MACHINE_REQUESTED}),
    S.COMPLETE: frozenset(),
    S.FAILED: frozenset(),
    S.BUILD_FAILED: frozenset(),
    S.MOUNT_FAILED: frozenset(),
    S.STOPPED: frozenset(),
    S.KILLED: frozenset(),
}

FINAL_STATUSES = frozenset(s for s, targets in TRANSITIONS.items() if not targets) | {
    S.INTERRUPTED
}
# Statuses in which a worker holds the run's lease.
LEASED_STATUSES = frozenset(
    {S.BUILDING, S.MOUNTING, S.RUNNING, S.SAVING, S.PUSHING, S.STOPPING, S.KILLING}
)
# Runs in these statuses have outputs that other runs may mount.
MOUNTABLE_STATUSES = frozenset({S.COMPLETE, S.FAILED, S.STOPPED})


def sources_of(target: RunStatus) -> frozenset[RunStatus]:
    """The statuses from which a run may move to `target`."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def is_final(status: RunStatus | str) -> bool:
    return RunStatus(status) in FINAL_STATUSES


_STAGE_TITLES = {
    S.MACHINE_REQUESTED: "Machine_Requested",
    S.BUILDING: "Building",
    S.MOUNTING: "Mounting",
    S.SAVING: "Saving",
    S.PUSHING: "Pushing",
}
_FAILED_STAGE = {S.BUILD_FAILED: S.BUILDING, S.MOUNT_FAILED: S.MOUNTING}


def stage_lines(previous: RunStatus, new: RunStatus, note: str | None = None) -> list[str]:
    """The lines a follower sees when a run moves from `previous` to `new`.

    `note` qualifies the stage that just ended, e.g. "cached" for a build or
    "local, cpu" for the machine.
    """
    lines = []
    if new in _FAILED_STAGE:
        lines.append(f"{_STAGE_TITLES[_FAILED_STAGE[new]]}… failed" + (f": {note}" if note else ""))
        return lines
    if previous in _STAGE_TITLES and new not in (S.INTERRUPTED, S.KILLING, S.KILLED):
        lines.append(f"{_STAGE_TITLES[previous]}… done" + (f" ({note})" if note else ""))
    if new is S.RUNNING:
        lines.append("Run is running")
    elif new is S.STOPPING:
        lines.append("Stopping…" + (f" ({note})" if note else ""))
    elif new is S.KILLING:
        lines.append("Killing…")
    elif new is S.INTERRUPTED:
        lines.append("Run interrupted" + (f": {note}" if note else ""))
    elif new is S.MACHINE_REQUESTED:
        lines.append("Requeued" + (f" ({note})" if note else ""))
    return lines


# --- run spec parts -------------------------------------------------------

MAX_COMMAND_LENGTH = 64 * 1024
_RESOURCE_ROOTS = ("runs", "uploads")
# Not starting with '-': a mount named after the upload would read as an option.
_UPLOAD_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._ -]{0,199}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")
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
    if path.startswith("/") or path.startswith("\\"):
        raise SpecError(f"{what} {path!r} must be relative, not absolute")
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise SpecError(f"{what} {path!r} escapes its root with '..'")
    return norm


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
    """`RESOURCE[:PATH]`; PATH defaults to the resource's basename."""
    resource_text, _, path = text.partition(":")
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
    if not _ENV_NAME.match(name):
        raise SpecError(f"environment variable name {name!r} is not valid")
    return name


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SpecError(f"--env {text!r} must be NAME=VALUE")
    return validate_env_name(name), value


def validate_label(label: str) -> str:
    if not _LABEL.match(label):
        raise SpecError(f"label {label!r} must be 1-63 letters, digits, '.', '_', ':' or '-'")
    return label


_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH)", re.I)


def looks_secret(env_name: str) -> bool:
    """Names whose values the viewer and `cast info` mask."""
    return bool(_SECRET_NAME.search(env_name))


def format_duration(seconds: float) -> str:
    """0.41s, 12.3s, 1m7s, 2h3m4s: the style of Spell's 'Total run time'."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"
