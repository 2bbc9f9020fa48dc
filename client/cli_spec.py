"""What `cast run` asks for: its flags and `--from-file` YAML turned into a RunSpec.

Owns: the YAML file's keys, flags overriding the file, every part checked with
cast.protocol's validators (so that bad input fails before anything is sent),
the command line's rule (the command is one quoted argument or everything
after `--`; cast's own options after it are refused, not passed on), and the
local repository's code attached when no git URL is given: its commit, branch,
uncommitted changes and the subfolder the command was typed in.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from cast.protocol.messages import MountSpec, RunSpec

from .cli_common import UsageProblem

RUN_FILE_KEYS = {
    "command", "github_url", "git_url", "commit_ref", "pip", "pip_req", "apt", "docker_image",
    "mount", "mounts", "machine_type", "env", "label", "labels", "timeout", "retries", "background",
    "workdir", "idempotent", "pull", "log_metrics",
}


@dataclass
class RunRequest:
    """What `cast run` was asked: the spec, and how to submit and follow it."""

    spec: RunSpec
    labels: list[str]
    background: bool
    idempotent: bool
    pull: Path | None  # where the outputs go once the run completes
    workdir_given: bool  # --workdir (even `.`) wins over the folder the command is typed in


def refuse_options_in_command(words: tuple[str, ...], option_names: set[str]) -> None:
    """Refuse a word of the command (not the first) that is one of `cast run`'s
    own options: typed after the command, it would silently become part of it.
    Called only when the command did not follow `--`."""
    for word in words[1:]:
        if word == "--":  # what follows a literal `--` is clearly the command's
            return
        name = word.split("=", 1)[0] if word.startswith("--") else word
        if name in option_names:
            raise UsageProblem(f"option {name} after the command; put cast's options before it, "
                               "or use -- to pass it to your command")


def _as_list(value, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageProblem(f"{key} must be a string or a list")


def _as_list_env(value) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={'' if v is None else v}" for k, v in value.items()]
    return [str(v) for v in _as_list(value, "env")]


def load_run_file(path: str) -> dict:
    """The run options in a YAML file, keys as the flags (`-` or `_`)."""
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageProblem(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageProblem(f"{path} must hold a mapping of run options (command, pip, mount, ...)")
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in RUN_FILE_KEYS:
            raise UsageProblem(f"{path}: unknown key {key!r} (known: {', '.join(sorted(RUN_FILE_KEYS))})")
        options[{"git_url": "github_url", "mounts": "mount", "labels": "label"}.get(name, name)] = value
    if "pip_req" in options and options["pip_req"] is not None:
        options["pip_req"] = str(Path(path).parent / str(options["pip_req"]))
    return options


def _git_url(value: str) -> str:
    """A local path made absolute; URLs (https, ssh, file://, user@host:path) kept."""
    import re

    if "://" in value or re.match(r"^[\w.-]+@[\w.-]+:", value):
        return value
    return str(Path(value).expanduser().absolute())


def _timeout(value) -> float:
    from cast.protocol.units import parse_duration

    try:
        return parse_duration(value, what="--timeout")
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _retries(value) -> int:
    try:
        retries = int(value)
    except (TypeError, ValueError):
        raise UsageProblem(f"--retries {value!r} must be a whole number") from None
    if not 0 <= retries <= 10:
        raise UsageProblem(f"--retries {retries} must be between 0 and 10")
    return retries


def build_spec(command: tuple[str, ...], file_options: dict, flags: dict) -> RunRequest:
    """The run's spec, its labels and how to submit and follow it, from the
    YAML file's options overridden by flags."""
    from cast.protocol.validate import (make_mount, parse_env, parse_machine_type, parse_mount,
                                        validate_apt_package, validate_label, validate_mounts, validate_pip_spec,
                                        validate_workdir)

    given = {key: value for key, value in flags.items() if value not in (None, ())}
    options = {**file_options, **given}
    if "env" in file_options and "env" in given:
        options["env"] = [*_as_list_env(file_options["env"]), *given["env"]]

    if len(command) > 1:
        import shlex  # here: a command given as one word, the usual `cast run "..."`, needs no joining

        text = shlex.join(command)
    else:
        text = command[0] if command else options.get("command")
    if not text or not str(text).strip():
        raise UsageProblem('no command given: cast run [OPTIONS] "COMMAND"')
    spec = RunSpec(command=str(text))

    if options.get("github_url"):
        spec.git_url = _git_url(str(options["github_url"]))
    if options.get("commit_ref"):
        if spec.git_url is None:
            raise UsageProblem("--commit-ref needs --github-url (the code of a local repository is sent as it is)")
        spec.commit_ref = str(options["commit_ref"])
    spec.pip = [validate_pip_spec(str(p)) for p in _as_list(options.get("pip"), "pip")]
    if options.get("pip_req"):
        try:
            spec.pip_req = Path(options["pip_req"]).read_text()
            spec.pip_req_name = Path(options["pip_req"]).name
        except OSError as exc:
            raise UsageProblem(f"cannot read --pip-req {options['pip_req']}: {exc.strerror}") from None
    spec.apt = [validate_apt_package(str(a)) for a in _as_list(options.get("apt"), "apt")]
    if options.get("docker_image"):
        spec.docker_image = str(options["docker_image"])
    mounts = []
    for item in _as_list(options.get("mount"), "mount"):
        if isinstance(item, dict):
            mounts.append(make_mount(str(item.get("resource", "")), item.get("path") and str(item["path"])))
        else:
            mounts.append(parse_mount(str(item)))
    validate_mounts(mounts)
    spec.mounts = [MountSpec(resource=m.resource, path=m.path) for m in mounts]
    spec.machine_type = str(options.get("machine_type") or "cpu")
    parse_machine_type(spec.machine_type)
    spec.env = dict(parse_env(str(e)) for e in _as_list_env(options.get("env")))
    labels = [validate_label(str(label)) for label in _as_list(options.get("label"), "label")]
    if options.get("timeout") is not None:
        spec.timeout = _timeout(options["timeout"])
    if options.get("retries") is not None:
        spec.retries = _retries(options["retries"])
    if options.get("log_metrics") is not None:
        if not isinstance(options["log_metrics"], bool):
            raise UsageProblem("log_metrics must be true or false")
        spec.log_metrics = options["log_metrics"]
    workdir_given = bool(options.get("workdir"))
    if workdir_given:
        spec.workdir = validate_workdir(str(options["workdir"]))
    background, pull = bool(options.get("background")), options.get("pull")
    if pull and background:
        raise UsageProblem("--pull waits for the run to complete; it cannot be combined with -d/--background")
    return RunRequest(spec=spec, labels=labels, background=background, idempotent=bool(options.get("idempotent")),
                      pull=Path(str(pull)) if pull else None, workdir_given=workdir_given)


def attach_code(client, spec: RunSpec, *, workdir_given: bool = False) -> None:
    """Without --github-url, send the repository around the current folder,
    recording what it is on; the run starts in the subfolder the command was
    typed in unless --workdir says otherwise."""
    from .code import bundle_chunks, bundle_for

    bundle = bundle_for(Path.cwd())
    if bundle is None:
        return
    if client.has_code(bundle.key):
        sys.stderr.write(f"The code of {bundle.describe()} is already on the server\n")
    else:
        sys.stderr.write(f"Sending the code of {bundle.describe()}\n")
        client.put_code(bundle.key, bundle_chunks(bundle))
    spec.code_bundle = bundle.key
    spec.commit_sha = bundle.head_sha or None
    spec.branch = bundle.branch
    spec.dirty = bundle.dirty
    if not workdir_given:
        spec.workdir = bundle.subdir
