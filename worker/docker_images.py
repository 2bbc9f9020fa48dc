"""Environment images for the Docker executor, cached by content.

An environment image is a base image (the worker's, or the run's
`docker_image`) plus the run's `apt` packages, `pip` specs and `pip_req` file
(installed by the worker's own uv, mounted read-only, from the worker's one
package cache, mounted too, so a package is fetched once per host; by pip
where the worker has no uv or the image cannot run it; cast.worker.installer),
tagged `<repository>:<key>` where the key hashes all of them (and the base
image's id, and this module's build recipe). It is built by running a
container from the base that executes a generated script, then committing it;
from an environment image it extends instead (same base and apt packages,
some of its requirements), if there is one, so that one line added to a
requirements file copies and commits that line's packages, not torch again;
the script and the host's package settings (cast.worker.dockerenv) reach the
container as read-only mounts under a tmpfs, so no secret and no host folder
ends up in the image, and every line the build logs is masked of them. An
existing tag is reused and re-tagged, which stamps its last use
(`LastTagTime`); one build per key at a time, across the worker's threads and
processes. An engine may be shared by several workers and homes: each image
is tagged and labelled with its owner, a stable id kept in the worker's work
dir (`owner_id`), and a cache lists and prunes only its own. The images' listing and pruning are here too, as is the splitting
of a container's output into lines, which builds and run containers share.

What the cache learnt of the engine's images (a base image's id, that an
environment's tag exists and was stamped lately) is kept by
cast.worker.known_images while the engine's image events are heard, so a warm
run's environment costs no engine call.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from docker import DockerClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Mount

from cast.protocol.environment import build_summary, requirements_text
from cast.protocol.messages import LogStream, RunSpec
from cast.protocol.validate import SpecError, validate_apt_package, validate_pip_spec
from cast.worker.dockerenv import HOST_INPUTS, HostPackageSettings
from cast.worker.envs import OFFLINE_MISS, extends, failure_reason, wanted_lines
from cast.worker.installer import PACKAGE_CACHE, Installer, UvSettings, choose_installer, using_package_cache
from cast.worker.known_images import KnownImages
from cast.worker.lines import LineReader
from cast.worker.executors.base import BuildFailed, BuildResult, CacheEntry, InvalidExecutorOption, LogSink
from cast.worker.locking import file_lock

DEFAULT_BASE_IMAGE = "cast-base:bookworm"
CONTAINER_WORKDIR = "/cast/work"
CONTAINER_HOME = "/cast/home"
RUN_UID = 1000  # the user commands run as when the worker itself is root
# Bump when the build script changes what an image holds, so old keys miss.
BUILD_RECIPE = "1"

LABEL_KEY = "cast.env.key"
LABEL_HOLDS = "cast.env.holds"
LABEL_WANTS = "cast.env.wants"  # JSON: the base image id, apt packages and requirement lines it was built for
LABEL_OWNER = "cast.env.owner"
OWNER_FILE = "owner-id"
LABEL_WORK_DIR = "cast.work_dir"
LABEL_RUN_ID = "cast.run_id"
LABEL_ROLE = "cast.role"
# Keeps the engine's copy of a build's or a run's output small; cast streams it live.
LOG_CONFIG = LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"})

UV_BINARY = f"{HOST_INPUTS}/uv"  # the worker's uv, mounted read-only into a build container
UV_CACHE = f"{HOST_INPUTS}/uv-cache"  # the worker's package cache, mounted into a build container
_STEP_MARK = "==> "  # lines of the build script that start a step
_TAIL_LINES = 50  # of a step's output, searched for its error lines


def labels(work_dir: Path, run_id: int, role: str) -> dict[str, str]:
    """The labels of a container a worker starts: its work dir finds it again after a crash."""
    return {LABEL_WORK_DIR: str(work_dir), LABEL_RUN_ID: str(run_id), LABEL_ROLE: role}


def owner_id(work_dir: Path) -> str:
    """The stable id of the worker (or home) that owns `work_dir`'s images, made on first use."""
    path = work_dir / OWNER_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if len(found) == 12 and all(c in "0123456789abcdef" for c in found):
        return found
    work_dir.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(6)
    staged = path.with_name(f".{OWNER_FILE}.{made}")
    staged.write_text(made + "\n")
    try:
        os.link(staged, path)  # the first of two racing makers wins; the other reads its id
    except FileExistsError:
        return path.read_text().strip()
    finally:
        staged.unlink()
    return made


def explain(exc: DockerException) -> str:
    return getattr(exc, "explanation", None) or str(exc)


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment image holds."""

    base_image: str
    apt: tuple[str, ...]
    pip: tuple[str, ...]
    pip_req: str

    @classmethod
    def of(cls, spec: RunSpec, default_base: str) -> "EnvironmentSpec":
        try:
            apt = tuple(sorted({validate_apt_package(p) for p in spec.apt}))
            pip = tuple(sorted({validate_pip_spec(p) for p in spec.pip}))
        except SpecError as exc:
            raise BuildFailed(str(exc)) from None
        return cls(spec.docker_image or default_base, apt, pip, spec.pip_req or "")

    def key(self, base_image_id: str) -> str:
        content = json.dumps(
            {"recipe": BUILD_RECIPE, "base": base_image_id, "apt": self.apt, "pip": self.pip,
             "pip_req": self.pip_req},
            sort_keys=True,
        )
        return hashlib.sha256(content.encode()).hexdigest()[:24]

    def holds(self) -> str:
        parts = [f"base: {self.base_image}"]
        if self.apt:
            parts.append("apt: " + " ".join(self.apt))
        if self.pip:
            parts.append("pip: " + " ".join(self.pip))
        if self.pip_req:
            parts.append(requirements_text(self.pip_req))
        return "; ".join(parts)

    def wants(self, base_image_id: str) -> dict:
        """What the image was built for, as its LABEL_WANTS says it."""
        return {"base": base_image_id, "apt": list(self.apt), "pip": wanted_lines(list(self.pip), self.pip_req)}

    def summary(self, installer_note: str | None = None) -> str:
        """What a build installs, by count, and with what, for its first line."""
        return build_summary(pip=list(self.pip), pip_req=self.pip_req, apt=list(self.apt), base_image=self.base_image,
                             installer_note=installer_note)

    def build_script(self, *, preamble: str, uv: UvSettings | None = None, extending: bool = False) -> str:
        """The shell script a build container runs; each step announces itself. With `uv`
        (its binary mounted at UV_BINARY, its cache at UV_CACHE) uv installs the pip
        packages, or pip where uv cannot run in the image (one line says so).
        `extending`: it runs in an environment image built for the same base and apt
        packages and some of these requirements, so apt is done and uv installs from
        the package cache alone first (cast.worker.envs' `_offline`)."""
        uid, gid = RUN_UID, RUN_UID
        lines = [
            "set -eu",
            preamble,
            f'echo "{_STEP_MARK}setup: user {uid} and {CONTAINER_WORKDIR}"',
            f"mkdir -p {CONTAINER_WORKDIR} {CONTAINER_HOME} && chmod 1777 {CONTAINER_HOME}",
            f"if ! grep -q '^[^:]*:[^:]*:{uid}:' /etc/passwd; then",
            f"  if command -v useradd >/dev/null; then useradd -u {uid} -U -M -d {CONTAINER_HOME} -s /bin/bash cast;",
            f"  else echo 'cast:x:{uid}:{gid}::{CONTAINER_HOME}:/bin/sh' >> /etc/passwd;"
            f" echo 'cast:x:{gid}:' >> /etc/group; fi",
            "fi",
            "command -v bash >/dev/null || { echo 'this image has no bash, which cast runs commands with'; exit 1; }",
        ]
        if self.apt and not extending:
            packages = " ".join(shlex.quote(p) for p in self.apt)
            lines += [
                f'echo "{_STEP_MARK}apt: apt-get install {packages}"',
                "command -v apt-get >/dev/null || { echo 'this image has no apt-get for --apt packages'; exit 1; }",
                "export DEBIAN_FRONTEND=noninteractive APT_CONFIG=" + f"{HOST_INPUTS}/build/apt.conf",
                "apt-get update -q",
                f"apt-get install -y -q --no-install-recommends {packages}",
                "apt-get clean && rm -rf /var/lib/apt/lists/*",
            ]
        if self.pip or self.pip_req:
            # Joined so an empty part leaves no double space: "pip install -r requirements.txt".
            requirements = ["-r", f"{HOST_INPUTS}/build/requirements.txt"] if self.pip_req else []
            arguments = " ".join([*(shlex.quote(p) for p in self.pip), *requirements])
            shown = arguments.replace(HOST_INPUTS + "/build/", "")
            pip_lines = [
                f"export PIP_CONFIG_FILE={HOST_INPUTS}/build/pip.conf PIP_BREAK_SYSTEM_PACKAGES=1"
                " PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1 PIP_PROGRESS_BAR=off"
                " PIP_DISABLE_PIP_VERSION_CHECK=1",
                f"python3 -m pip install {arguments}",
            ]
            if uv is None:
                lines += [f'echo "{_STEP_MARK}pip: pip install {shown}"', *pip_lines]
            else:
                # The image's files are copied from the cache: a hardlink cannot cross into the container's layer.
                install = " ".join([
                    UV_BINARY, "pip", "install", "--system", "--break-system-packages", "--config-file",
                    f"{HOST_INPUTS}/build/uv.toml", "--cache-dir", UV_CACHE, "--link-mode", "copy",
                    *(shlex.quote(a) for a in uv.arguments), arguments,
                ])
                exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in sorted(uv.environment.items()))
                offline = install.replace(" --link-mode ", " --offline --link-mode ", 1)
                lines += [
                    f"if {UV_BINARY} --version >/dev/null 2>&1 && command -v python3 >/dev/null; then",
                    f'  echo "{_STEP_MARK}pip: uv pip install {shown}"',
                    *([f"  export {exports} NO_COLOR=1"] if exports else ["  export NO_COLOR=1"]),
                    *([f"  if said=$({offline} 2>&1); then printf '%s\\n' \"$said\"; else",
                       f'    echo "{OFFLINE_MISS}"', f"    {install}", "  fi"] if extending else [f"  {install}"]),
                    "else",
                    f'  echo "{_STEP_MARK}pip: pip install {shown} (uv cannot run in this image)"',
                    *(f"  {line}" for line in pip_lines),
                    "fi",
                ]
        return "\n".join(lines) + "\n"


def pump_output(attach_stream, on_stdout, on_stderr) -> None:
    """Split a demultiplexed attach stream into lines until it ends; each
    callback takes the lines of one read."""
    out, err = LineReader(on_stdout), LineReader(on_stderr)
    for stdout, stderr in attach_stream:
        if stdout:
            out.feed(stdout)
        if stderr:
            err.feed(stderr)
    out.close()
    err.close()


class ImageCache:
    """The environment images of one worker: `<repository>:<owner>-<key>` on its engine."""

    def __init__(self, client: DockerClient, work_dir: Path, *, base_image: str, repository: str, network: str,
                 installer: Installer | None = None):
        """`installer` defaults to what CAST_WORKER_INSTALLER asks for (InvalidExecutorOption if it
        cannot be had)."""
        self.client = client
        self.work_dir = work_dir
        try:
            self.installer = installer or choose_installer()
        except ValueError as exc:
            raise InvalidExecutorOption(str(exc)) from None
        self.package_cache = work_dir / PACKAGE_CACHE
        self.base_image = base_image
        self.repository = repository
        self.network = network
        self.owner = owner_id(work_dir)
        self.host_settings = HostPackageSettings.from_host()
        self.known = KnownImages(client, own_prefix=self.owned_tag(""))
        self._building: set[str] = set()
        self._building_lock = threading.Lock()

    def ensure(self, spec: RunSpec, run_id: int, log: LogSink) -> BuildResult:
        """The run's environment image, built unless an image with its key exists."""
        env = EnvironmentSpec.of(spec, self.base_image)
        generation = self.known.generation()
        base_id = self.known.base_id(env.base_image) or self._base_image_id(env.base_image, log, generation)
        key = env.key(base_id)
        tag = self.owned_tag(key)
        if self._touch(tag, generation):
            return BuildResult(key=key, cached=True, description=tag)
        with self._building_lock:
            waiting = key in self._building
            self._building.add(key)
        try:
            if waiting:
                log(LogStream.CAST, f"Waiting for another run building the same environment {tag}…")
            with file_lock(self.work_dir / "locks" / f"env-{key}.lock"):
                if self._touch(tag, None):
                    return BuildResult(key=key, cached=True, description=tag)
                with using_package_cache(self.package_cache) if self.installer.uv else nullcontext():
                    self._build_image(run_id, env, base_id, key, log)
        finally:
            with self._building_lock:
                self._building.discard(key)
        return BuildResult(key=key, cached=False, description=tag)

    def owned_tag(self, key: str) -> str:
        return f"{self.repository}:{self.owner}-{key}"

    def has_base_image(self) -> bool:
        """Whether the configured base image is on this host already."""
        try:
            self.client.api.inspect_image(self.base_image)
            return True
        except ImageNotFound:
            return False

    def _base_image_id(self, name: str, log: LogSink, generation: tuple[int, int] | None) -> str:
        try:
            image_id = self.client.api.inspect_image(name)["Id"]
            self.known.remember_base(name, image_id, generation)
            return image_id
        except ImageNotFound:
            pass
        log(LogStream.CAST, f"Pulling {name}…")
        try:
            return self.client.images.pull(name).id
        except DockerException as exc:
            hint = " (build it with docker/build-base-image.sh)" if name == DEFAULT_BASE_IMAGE else ""
            raise BuildFailed(f"docker image {name} is not on this worker and cannot be pulled{hint}: "
                              f"{explain(exc)}") from None

    def _touch(self, tag: str, generation: tuple[int, int] | None) -> bool:
        """Whether `tag` exists; if so, stamp its last use by tagging it again
        (unless it was stamped within known_images.STAMP_SECONDS and is known to exist)."""
        if self.known.stamped(tag):
            return True
        repository, _, key = tag.partition(":")
        try:
            self.client.api.tag(tag, repository, key)
        except NotFound:
            return False
        self.known.remember_stamp(tag, generation)
        return True

    def _build_image(self, run_id: int, env: EnvironmentSpec, base_id: str, key: str, log: LogSink) -> None:
        settings = self.host_settings
        inputs = settings.build_inputs()
        uv = self.installer.uv
        log(LogStream.CAST, f"Building environment {self.owned_tag(key)} ({env.summary(self.installer.note)})")
        parent = self._nearest(env, base_id) if uv else None
        if parent:
            log(LogStream.CAST, f"Starting from environment {parent[1]}, which holds some of it")
        staging = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=self._scratch_dir()))
        try:
            (staging / "build.sh").write_text(env.build_script(preamble=inputs.shell_preamble,
                                                               uv=inputs.uv if uv else None, extending=bool(parent)))
            (staging / "pip.conf").write_text(inputs.pip_conf)
            (staging / "uv.toml").write_text(inputs.uv.config)
            (staging / "apt.conf").write_text(inputs.apt_conf)
            if env.pip_req:
                (staging / "requirements.txt").write_text(env.pip_req)
            for child in staging.iterdir():  # read by root in the container, whatever our umask
                child.chmod(0o644)
            staging.chmod(0o755)
            mounts = [Mount(HOST_INPUTS, None, type="tmpfs"),
                      Mount(f"{HOST_INPUTS}/build", str(staging), type="bind", read_only=True)]
            mounts += [Mount(target, source, type="bind", read_only=True) for source, target in inputs.mounts]
            if uv:
                self.package_cache.mkdir(parents=True, exist_ok=True)
                mounts += [Mount(UV_BINARY, self._uv_in_work_dir(uv), type="bind", read_only=True),
                           Mount(UV_CACHE, str(self.package_cache), type="bind")]
            container = self.client.containers.create(
                parent[0] if parent else base_id, ["/bin/sh", f"{HOST_INPUTS}/build/build.sh"], entrypoint=[],
                user="0:0",
                mounts=mounts, network_mode=self.network, labels=labels(self.work_dir, run_id, "build"),
                log_config=LOG_CONFIG,
            )
            try:
                step, tail = self._stream_build(container, log)
                code = container.wait()["StatusCode"]
                if code != 0:
                    raise BuildFailed(f"{step} step failed (exit {code}): {failure_reason(tail) or 'no output'}")
                base = self.client.api.inspect_image(base_id)["Config"] or {}
                container.commit(
                    repository=self.repository, tag=f"{self.owner}-{key}",
                    conf={"Cmd": base.get("Cmd") or ["bash"], "Entrypoint": base.get("Entrypoint") or [],
                          "Env": base.get("Env") or [], "WorkingDir": CONTAINER_WORKDIR, "User": "",
                          "Labels": {**(base.get("Labels") or {}), LABEL_KEY: key, LABEL_HOLDS: env.holds(),
                                     LABEL_OWNER: self.owner, LABEL_ROLE: "env",
                                     LABEL_WANTS: json.dumps(env.wants(base_id), sort_keys=True)}},
                )
            finally:
                container.remove(force=True)
        except APIError as exc:
            raise BuildFailed(f"the Docker engine refused the build: {settings.redact(explain(exc))}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _nearest(self, env: EnvironmentSpec, base_id: str) -> tuple[str, str] | None:
        """The id and tag of this cache's image that the build of `env` can start
        from (cast.worker.envs.extends: same base and apt packages, some of its
        requirements and nothing else), the one holding the most; None if none.
        Only the new packages are then copied into the image and committed, not
        torch again (a commit of its gigabytes took most of such a build)."""
        wants, best = env.wants(base_id), None
        for image in self.client.images.list(filters={"label": [LABEL_WANTS, f"{LABEL_OWNER}={self.owner}"]}):
            try:
                built = json.loads(image.labels.get(LABEL_WANTS, ""))
            except ValueError:
                continue
            tags = [tag for tag in image.tags if tag.startswith(f"{self.repository}:{self.owner}-")]
            if (tags and built.get("base") == wants["base"] and built.get("apt") == wants["apt"]
                    and extends(built.get("pip") or [], wants["pip"])
                    and (best is None or len(built["pip"]) > best[0])):
                best = (len(built["pip"]), image.id, tags[0])
        return best[1:] if best else None

    def _uv_in_work_dir(self, uv: str) -> str:
        """The worker's uv as a file of its work dir, which a worker that runs in a
        container shares with the engine at the same path (docker/compose.yaml):
        the engine resolves a bind mount's source on its own host, where the
        worker's own binary path may not exist."""
        source, target = Path(uv), self.work_dir / "bin" / "uv"
        wanted = source.stat()
        try:
            have = target.stat()
            if (have.st_size, have.st_mtime_ns) == (wanted.st_size, wanted.st_mtime_ns):
                return str(target)
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".uv-{os.getpid()}-{threading.get_ident()}")
        shutil.copy2(source, staged)  # keeps the mtime the check above compares
        os.replace(staged, target)
        return str(target)

    def _stream_build(self, container, log: LogSink) -> tuple[str, list[str]]:
        """Send the build's output to the log; return the last step's name and last lines."""
        state = {"step": "setup"}
        tail: deque[str] = deque(maxlen=_TAIL_LINES)

        def lines(texts: list[str]) -> None:
            for text in texts:
                text = self.host_settings.redact(text)
                if text.startswith(_STEP_MARK):
                    state["step"] = text[len(_STEP_MARK):].partition(":")[0]
                    tail.clear()
                elif text.strip():
                    tail.append(text.strip())
                log(LogStream.CAST, text)

        stream = container.attach(stdout=True, stderr=True, stream=True, demux=True, logs=True)
        container.start()
        pump_output(stream, lines, lines)
        return state["step"], list(tail)

    def _scratch_dir(self) -> Path:
        path = self.work_dir / "docker-scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_scratch(self) -> None:
        """What half-made builds of a worker that died left on the host."""
        shutil.rmtree(self.work_dir / "docker-scratch", ignore_errors=True)

    def entries(self) -> list[CacheEntry]:
        entries = []
        prefix = f"{self.repository}:{self.owner}-"
        for image in self.client.images.list(filters={"label": [LABEL_KEY, f"{LABEL_OWNER}={self.owner}"]}):
            if not any(tag.startswith(prefix) for tag in image.tags):
                continue
            details = self.client.api.inspect_image(image.id)
            image_labels = details["Config"].get("Labels") or {}
            entries.append(CacheEntry(
                key=image_labels[LABEL_KEY], holds=image_labels.get(LABEL_HOLDS, ""), size=int(details.get("Size") or 0),
                last_used=_timestamp((details.get("Metadata") or {}).get("LastTagTime") or details["Created"]),
            ))
        return sorted(entries, key=lambda entry: entry.last_used, reverse=True)

    def prune(self, *, older_than: float | None, everything: bool) -> list[CacheEntry]:
        now = time.time()
        removed = []
        for entry in self.entries():
            if not everything and (older_than is None or now - entry.last_used < older_than):
                continue
            try:
                self.client.images.remove(self.owned_tag(entry.key))
            except APIError:  # in use by a running container: kept
                continue
            self.known.forget()  # at once: its event may come after this worker's next run
            removed.append(entry)
        return removed


def _timestamp(text: str) -> float:
    """Unix time from Docker's RFC 3339 times with nanoseconds."""
    head, _, rest = text.rstrip("Z").partition(".")
    fraction = float("0." + rest[:6]) if rest else 0.0
    return datetime.fromisoformat(head + "+00:00").timestamp() + fraction
