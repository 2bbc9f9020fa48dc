"""Virtualenvs for the local executor, cached by content.

A run's environment is a virtualenv layered over the worker's own interpreter
(`--system-site-packages`, so the host's packages still import) with the run's
pip packages installed by uv, else by the host's pip (cast.worker.installer
chooses, and carries the host's pip configuration over to uv). uv keeps one
package cache per worker (`uv-cache` beside the environments, on the same
filesystem) and hardlinks every environment's files from it, so a package
such as torch is unpacked once per host and a new environment that adds one
line to a requirements file fetches only that line's package. (uv installs a
package the host has, such as torch, into the environment too, from that
cache; pip would reuse the host's copy.) A build that extends an environment
built before (its requirements are that one's and more) installs from that
cache and the local indexes alone (uv's `--offline`), asking the remote
indexes only when that misses: that asking was most of the time of one line
added to a requirements file. Builds use the cache under its shared lock
(cast.worker.installer's `using_package_cache`), which `cast cache prune`
takes whole to clear it. Its key is a sha256 of (interpreter, sorted pip
specs, requirements file contents); an environment is built once under a file
lock, marked complete only when the build succeeded, and reused by every later
run with that key.
A run without packages needs no environment at all. A build first says in one
line what it installs; a failed one is explained by the installer's own last
error lines (`failure_reason`, which the Docker builds share), while its whole
output stays in the run's log.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import deque
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

from cast.protocol.environment import build_summary, requirements_text
from cast.protocol.messages import LogStream
from cast.protocol.validate import SpecError, validate_pip_spec
from cast.worker.dockerenv import read_pip_config
from cast.worker.executors.base import BuildFailed, BuildResult, CacheEntry, LogSink
from cast.worker.installer import (PACKAGE_CACHE, Installer, UvSettings, choose_installer, using_package_cache,
                                   uv_settings)
from cast.worker.locking import file_lock
from cast.worker.fsops import remove_tree

HOST_KEY = "host"  # the BuildResult key of a run that needs no environment
_METADATA = ".cast-env.json"
_LAST_USED = ".cast-last-used"
_TAIL_LINES = 50  # of a build's output, searched for its error lines
OFFLINE_MISS = "Not all of it is in the package cache: asking the package indexes"
FAILURE_CHARS = 400  # of a failed build's reason; the log keeps the rest
# How pip (`ERROR: …`), uv (`error: …`, then its `cause:` lines, innermost last)
# and apt (`E: …`) start the lines that say why they failed.
_CAUSE_PREFIXES = ("cause:", "Caused by:")
_ERROR_PREFIXES = ("ERROR:", "error:", "E: ", *_CAUSE_PREFIXES)


def env_key(pip: list[str], pip_req: str | None) -> str:
    content = {
        "python": sys.version,
        "interpreter": os.path.realpath(sys.executable),
        "pip": sorted(spec.strip() for spec in pip),
        "pip_req": pip_req or "",
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def failure_reason(lines: list[str]) -> str:
    """Why a build failed, in one bounded line: the installer's last error lines
    (pip's `ERROR:`, uv's `error:` and `cause:`, apt's `E:`), else its last lines."""
    lines = [line.strip() for line in lines if line.strip()]
    errors = [line for line in lines if line.startswith(_ERROR_PREFIXES)]
    chosen = (errors or lines)[-3:]
    if errors and errors[-1].startswith(_CAUSE_PREFIXES):
        # uv's error and its innermost causes: what failed, then why.
        headline = next((i for i in range(len(errors) - 1, -1, -1) if not errors[i].startswith(_CAUSE_PREFIXES)), None)
        if headline is not None:
            chosen = [errors[headline], *errors[headline + 1:][-2:]]
    text = " | ".join(chosen)
    return text if len(text) <= FAILURE_CHARS else "…" + text[-(FAILURE_CHARS - 1):]


def _describe(pip: list[str], pip_req: str | None) -> str:
    parts = []
    if pip:
        parts.append("pip: " + " ".join(sorted(pip)))
    if pip_req:
        parts.append(requirements_text(pip_req))
    return "; ".join(parts)


def wanted_lines(pip: list[str], pip_req: str | None) -> list[str]:
    """What an environment asks for, one requirement a line (comments dropped), sorted."""
    lines = [line.split(" #")[0].strip() for line in (pip_req or "").splitlines()]
    return sorted({*(spec.strip() for spec in pip), *(line for line in lines if line and not line.startswith("#"))})


def extends(built: list[str], wanted: list[str]) -> bool:
    """Whether an environment built for the requirement lines `built` holds some of
    `wanted` and nothing else, so that one for `wanted` can be made from it and
    the package cache alone. An option line (`--index-url`, `-r`) never can."""
    return bool(built) and not any(line.startswith("-") for line in wanted) and set(built) <= set(wanted)


def _tree_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


class EnvCache:
    def __init__(self, root: Path, *, installer: Installer | None = None, package_cache: Path | None = None):
        """`installer` defaults to what CAST_WORKER_INSTALLER asks for (ValueError if it cannot be
        had); `package_cache`, uv's cache, to `uv-cache` beside `root`."""
        self.root = root
        self.installer = installer or choose_installer()
        self.package_cache = package_cache or root.parent / PACKAGE_CACHE

    @cached_property
    def _uv_settings(self) -> UvSettings:
        """The host's pip settings as uv's, read once (asking pip takes a fraction of a second)."""
        return uv_settings(read_pip_config())

    def path(self, key: str) -> Path:
        return self.root / key

    def ensure(self, pip: list[str], pip_req: str | None, log: LogSink) -> BuildResult:
        if not pip and not pip_req:
            return BuildResult(key=HOST_KEY, cached=True, description="the worker's python")
        try:
            pip = [validate_pip_spec(spec) for spec in pip]
        except SpecError as exc:
            raise BuildFailed(str(exc)) from None
        key = env_key(pip, pip_req)
        env = self.path(key)
        with file_lock(self.root / f"{key}.lock"):
            cached = (env / _METADATA).exists()
            if not cached:
                summary = build_summary(pip=pip, pip_req=pip_req, installer_note=self.installer.note)
                log(LogStream.CAST, f"Building environment virtualenv {key[:12]} ({summary})")
                try:
                    self._build(env, pip, pip_req, log)
                except BaseException:
                    remove_tree(env)
                    raise
            (env / _LAST_USED).touch()
        return BuildResult(key=key, cached=cached, description=f"virtualenv {key[:12]}")

    def _build(self, env: Path, pip: list[str], pip_req: str | None, log: LogSink) -> None:
        remove_tree(env)
        started = time.monotonic()
        if self.installer.uv:  # uv makes a virtualenv in milliseconds, python's venv module in about a second
            self._step("venv", [self.installer.uv, "venv", "--quiet", "--no-project", "--no-config",
                                "--system-site-packages", "--python", sys.executable, str(env)], log)
        else:
            self._step("venv", [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(env)],
                       log)
        python = str(env / "bin" / "python")
        extra_env: dict[str, str] = {}
        if self.installer.uv:
            settings = self._uv_settings
            # Written where only the build reads it (it may hold index passwords); not a run's business.
            config = self.root / f"{env.name}.uv.toml"
            config.touch(mode=0o600)
            config.write_text(settings.config)
            install = [self.installer.uv, "pip", "install", "--python", python, "--config-file", str(config),
                       "--cache-dir", str(self.package_cache), "--link-mode", "hardlink", *settings.arguments]
            extra_env = settings.environment
        else:
            config = None
            install = [sys.executable, "-m", "pip", "--python", python, "install",
                       "--no-input", "--disable-pip-version-check", "--progress-bar", "off"]
        wanted = ["--", *pip] if pip else []
        if pip_req:
            requirements = env / "cast-requirements.txt"
            requirements.write_text(pip_req)
            wanted = ["-r", str(requirements), *wanted]
        lines = wanted_lines(pip, pip_req)
        try:
            with using_package_cache(self.package_cache) if self.installer.uv else nullcontext():
                if not (self.installer.uv and self._extends_a_built_environment(lines)
                        and self._offline([*install, "--offline", *wanted], log, extra_env)):
                    self._step(self.installer.name, [*install, *wanted], log, extra_env)
        finally:
            if config is not None:
                config.unlink(missing_ok=True)
        (env / _METADATA).write_text(json.dumps({
            "holds": _describe(pip, pip_req), "python": sys.version.split()[0], "installer": self.installer.name,
            "built_in": round(time.monotonic() - started, 2), "wants": lines,
        }))

    def _extends_a_built_environment(self, lines: list[str]) -> bool:
        """Whether uv built an environment that asked for some of `lines` and nothing else:
        then the package cache holds what the indexes answered about those, and a
        build from it alone resolves them as that one did (one line added to a
        requirements file)."""
        for metadata in self.root.glob(f"*/{_METADATA}"):
            try:
                built = json.loads(metadata.read_text())
            except (OSError, ValueError):
                continue
            if built.get("installer") == "uv" and extends(built.get("wants") or [], lines):
                return True
        return False

    def _offline(self, command: list[str], log: LogSink, extra_env: dict[str, str]) -> bool:
        """Run uv's `--offline` install `command` (from the package cache and the
        local indexes alone); whether that was enough.

        Asking the indexes again about every package (torch's dependencies too)
        was most of the time of a build whose packages are all in the cache. An
        unpinned requirement thus gets the version this worker resolved before,
        as a built environment keeps it. Its output is logged only if it
        succeeded: a miss leaves the environment as it was and says so in one
        line, and the indexes decide."""
        said: list[str] = []
        if self._step("uv", command, lambda _, line: said.append(line), extra_env, check=False):
            for line in said:
                log(LogStream.CAST, line)
            return True
        log(LogStream.CAST, OFFLINE_MISS)
        return False

    def _step(self, step: str, command: list[str], log: LogSink, extra_env: dict[str, str] | None = None, *,
              check: bool = True) -> bool:
        """Run one build command, its output going to the log; whether it succeeded,
        or with `check` BuildFailed with its last lines when it failed."""
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **(extra_env or {})}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            log(LogStream.CAST, line)
        if process.wait() != 0 and check:
            raise BuildFailed(f"{step} failed (exit {process.returncode})"
                              + (f": {failure_reason(list(tail))}" if any(line.strip() for line in tail) else ""))
        return process.returncode == 0

    def entries(self) -> list[CacheEntry]:
        found = []
        if not self.root.is_dir():
            return found
        for env in sorted(self.root.iterdir()):
            metadata = env / _METADATA
            if not metadata.exists():
                continue
            try:
                holds = json.loads(metadata.read_text()).get("holds", "")
                last_used = (env / _LAST_USED).stat().st_mtime
            except (OSError, ValueError):
                holds, last_used = "", metadata.stat().st_mtime
            found.append(CacheEntry(key=env.name, holds=holds, size=_tree_size(env), last_used=last_used))
        return found

    def prune(self, *, older_than: float | None, everything: bool) -> list[CacheEntry]:
        removed = []
        now = time.time()
        for entry in self.entries():
            if not everything and (older_than is None or now - entry.last_used < older_than):
                continue
            with file_lock(self.root / f"{entry.key}.lock"):
                remove_tree(self.path(entry.key))
            removed.append(entry)
        return removed
