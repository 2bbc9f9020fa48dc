"""The `cast` command.

Owns: the verbs and their options, turning flags (and `--from-file` YAML)
into a run spec, following a run's log to its end, and reporting every error
as one line (`cast: error: ...`) with a non-zero exit code. Talks to the
control plane only through `cast.client.sdk`; starts the embedded server,
`cast server` and `cast worker` as subprocesses, never importing their code.

Startup time matters (a warm `cast run "true"` should take under 0.35 s end
to end), so each verb imports what it needs inside its function.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .sdk import ApiError, CastError
from cast.protocol.validate import SpecError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
LOG_PAGE = 1000


class UsageProblem(CastError):
    """Bad input on the command line (exit code 2, like click's usage errors)."""

    exit_code = 2


def _client():
    from .config import client

    return client()


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """cast: run ML jobs on a remote machine and keep what they write.

    With no CAST_SERVER_URL set, cast starts (on first use) and reuses an
    embedded control plane and worker on this machine, with its data under
    CAST_HOME (default ~/.cast). See docs/cli.md for the full reference.
    """


# --- run ------------------------------------------------------------------

RUN_FILE_KEYS = {
    "command", "github_url", "git_url", "commit_ref", "pip", "pip_req", "apt", "docker_image",
    "mount", "mounts", "machine_type", "env", "label", "labels", "timeout", "retries", "background",
}


def _as_list(value, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageProblem(f"{key} must be a string or a list")


def _load_run_file(path: str) -> dict:
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


def _parse_timeout(value) -> float:
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise UsageProblem(f"--timeout {value!r} must be seconds, or a number with s, m or h (90, 90s, 5m, 2h)") from None
    if not seconds > 0:
        raise UsageProblem(f"--timeout {value!r} must be more than zero")
    if seconds == float("inf"):
        raise UsageProblem(f"--timeout {value!r} must be a finite duration")
    return seconds


def _git_url(value: str) -> str:
    """A local path made absolute; URLs (https, ssh, file://, user@host:path) kept."""
    import re

    if "://" in value or re.match(r"^[\w.-]+@[\w.-]+:", value):
        return value
    return str(Path(value).expanduser().absolute())


def _build_spec(command: tuple[str, ...], file_options: dict, flags: dict) -> tuple[dict, bool]:
    """The RunCreate body from the YAML file's options overridden by flags,
    validated here so that bad input fails before anything is sent."""
    import shlex

    from cast.protocol.validate import parse_env, parse_machine_type, parse_mount, validate_apt_package, validate_label, validate_mounts, validate_pip_spec

    given = {key: value for key, value in flags.items() if value not in (None, ())}
    options = {**file_options, **given}
    if "env" in file_options and "env" in given:
        options["env"] = [*_as_list_env(file_options["env"]), *given["env"]]

    if command:
        text = command[0] if len(command) == 1 else shlex.join(command)
    else:
        text = options.get("command")
    if not text or not str(text).strip():
        raise UsageProblem('no command given: cast run [OPTIONS] "COMMAND"')
    spec: dict = {"command": str(text)}

    if options.get("github_url"):
        spec["git_url"] = _git_url(str(options["github_url"]))
    if options.get("commit_ref"):
        if "git_url" not in spec:
            raise UsageProblem("--commit-ref needs --github-url (the code of a local repository is sent as it is)")
        spec["commit_ref"] = str(options["commit_ref"])
    spec["pip"] = [validate_pip_spec(str(p)) for p in _as_list(options.get("pip"), "pip")]
    if options.get("pip_req"):
        try:
            spec["pip_req"] = Path(options["pip_req"]).read_text()
        except OSError as exc:
            raise UsageProblem(f"cannot read --pip-req {options['pip_req']}: {exc.strerror}") from None
    spec["apt"] = [validate_apt_package(str(a)) for a in _as_list(options.get("apt"), "apt")]
    if options.get("docker_image"):
        spec["docker_image"] = str(options["docker_image"])
    mounts = []
    for item in _as_list(options.get("mount"), "mount"):
        if isinstance(item, dict):
            item = f"{item.get('resource', '')}" + (f":{item['path']}" if item.get("path") else "")
        mounts.append(parse_mount(str(item)))
    validate_mounts(mounts)
    spec["mounts"] = [m.to_dict() for m in mounts]
    machine_type = str(options.get("machine_type") or "cpu")
    parse_machine_type(machine_type)
    spec["machine_type"] = machine_type
    spec["env"] = dict(parse_env(str(e)) for e in _as_list_env(options.get("env")))
    spec["labels"] = [validate_label(str(label)) for label in _as_list(options.get("label"), "label")]
    if options.get("timeout") is not None:
        seconds = _parse_timeout(options["timeout"])
        spec["timeout"] = int(seconds) if seconds == int(seconds) else seconds
    if options.get("retries") is not None:
        try:
            retries = int(options["retries"])
        except (TypeError, ValueError):
            raise UsageProblem(f"--retries {options['retries']!r} must be a whole number") from None
        if not 0 <= retries <= 10:
            raise UsageProblem(f"--retries {retries} must be between 0 and 10")
        spec["retries"] = retries
    return spec, bool(options.get("background"))


def _as_list_env(value) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={'' if v is None else v}" for k, v in value.items()]
    return [str(v) for v in _as_list(value, "env")]


def _attach_code(client, spec: dict) -> None:
    """Without --github-url, send the repository around the current folder."""
    from .code import bundle_chunks, bundle_for

    bundle = bundle_for(Path.cwd())
    if bundle is None:
        return
    if client.has_code(bundle.key):
        sys.stderr.write(f"The code of {bundle.describe()} is already on the server\n")
    else:
        sys.stderr.write(f"Sending the code of {bundle.describe()}\n")
        client.put_code(bundle.key, bundle_chunks(bundle))
    spec["code_bundle"] = bundle.key


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.argument("command", nargs=-1)
@click.option("--github-url", "--git-url", "github_url", metavar="URL",
              help="Git repository to run (https, ssh, file:// or a local path).")
@click.option("--commit-ref", metavar="REF", help="Branch, tag or commit (default: the remote's HEAD).")
@click.option("--pip", multiple=True, metavar="SPEC", help="Package to pip install (repeatable).")
@click.option("--pip-req", metavar="FILE", help="A requirements file; its contents are sent.")
@click.option("--apt", multiple=True, metavar="PKG", help="Debian package (docker executor; repeatable).")
@click.option("--docker-image", metavar="IMAGE", help="Base image (docker executor).")
@click.option("-m", "--mount", multiple=True, metavar="RESOURCE[:PATH]",
              help="runs/N[/path] or uploads/NAME[/path], read-only at PATH (repeatable).")
@click.option("-t", "--machine-type", metavar="TYPE", help="cpu (default), gpu or gpu:N.")
@click.option("-e", "--env", multiple=True, metavar="NAME=VALUE", help="Environment variable (repeatable).")
@click.option("--label", multiple=True, metavar="LABEL", help="Label for the run (repeatable).")
@click.option("--timeout", metavar="DURATION", help="Stop the run after this long (90, 90s, 5m, 2h).")
@click.option("--retries", type=int, help="Requeue this many times if its worker is lost (0-10).")
@click.option("-d", "--background", is_flag=True, default=None, help="Submit and return; do not follow.")
@click.option("--from-file", metavar="YAML", help="Run options as YAML (keys as the flags); flags override.")
@click.option("--json", "as_json", is_flag=True, help="With -d: print the run as JSON.")
def run(command, from_file, as_json, **flags) -> int:
    """Run COMMAND (a bash command line) remotely and follow its logs.

    Options go before the command: everything after it belongs to it.
    Exits with the run's exit code when it follows the run to its end.
    """
    file_options = _load_run_file(from_file) if from_file else {}
    spec, background = _build_spec(command, file_options, flags)
    if as_json and not background:
        raise UsageProblem("--json needs -d/--background (a followed run prints its logs)")
    client = _client()
    if "git_url" not in spec:
        _attach_code(client, spec)
    created = client.create_run(spec)
    run_id = created["id"]
    from .render import START_MARK, Printer

    if background:
        if as_json:
            _print_json(created)
        else:
            printer = Printer()
            printer.line(f"Casting run #{run_id}…", START_MARK)
            printer.line(f"Follow its logs with: cast logs -f {run_id}")
        return 0
    printer = Printer()
    printer.line(f"Casting run #{run_id}…", START_MARK)
    printer.line("Stop viewing logs with ^C")
    return _follow_to_end(client, run_id, 0, printer)


def _follow_to_end(client, run_id: int, offset: int, printer) -> int:
    """Print a run's log until it is final, then its outcome; ^C detaches."""
    warned = []

    def on_reconnect(problem: str) -> None:
        if not warned:
            sys.stderr.write(f"cast: lost the log stream ({problem}); reconnecting…\n")
            sys.stderr.flush()
            warned.append(problem)

    try:
        for chunk in client.follow_logs(run_id, offset, on_reconnect=on_reconnect):
            printer.entries(chunk["entries"])
        final = client.get_run(run_id)
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.write(
            f"\nDetached from run {run_id}; it keeps running.\n"
            f"  cast logs -f {run_id}   reattach\n"
            f"  cast stop {run_id}      stop it (outputs saved)\n"
            f"  cast kill {run_id}      kill it (outputs dropped)\n"
        )
        return 130
    return _print_outcome(printer, final)


def _print_outcome(printer, run: dict) -> int:
    from .render import DONE_MARK, FAIL_MARK, seconds_between
    from cast.protocol.units import format_duration

    seconds = seconds_between(run.get("created_at"), run.get("finished_at"))
    if seconds is not None:
        printer.line(f"Total run time: {format_duration(seconds)}", DONE_MARK)
    status, run_id = run["status"], run["id"]
    if status == "complete":
        printer.line(f"Run {run_id} complete", DONE_MARK)
        return 0
    text = f"Run {run_id} {status}"
    exit_code = run.get("exit_code")
    if status == "failed" and exit_code is not None:
        text += f" (exit code {exit_code})"
    if run.get("reason") and run["reason"] != f"exit code {exit_code}":
        text += f": {run['reason']}"
    printer.line(text, FAIL_MARK)
    if status == "failed" and isinstance(exit_code, int) and 0 < exit_code < 256:
        return exit_code
    return 1


# --- reading runs -------------------------------------------------------------

def _run_status_choices() -> list[str]:
    from cast.protocol.status import RunStatus

    return [s.value for s in RunStatus]


@cli.command(context_settings=CONTEXT)
@click.option("--status", "statuses", multiple=True, type=click.Choice(_run_status_choices()),
              help="Only runs in this status (repeatable).")
@click.option("--label", help="Only runs with this label.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="How many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
def ps(statuses, label, limit, as_json) -> int:
    """List runs, newest first."""
    answer = _client().list_runs(status=list(statuses), label=label, limit=limit)
    runs = answer["runs"]
    if as_json:
        _print_json(runs)
        return 0
    from .render import run_duration, shorten, table

    if not runs:
        sys.stdout.write("No runs.\n")
        return 0
    rows = [[str(r["id"]), r["status"], shorten(r["spec"]["command"], 48), run_duration(r),
             ",".join(r.get("labels") or [])] for r in runs]
    sys.stdout.write(table(["ID", "STATUS", "COMMAND", "DURATION", "LABELS"], rows, right={0, 3}) + "\n")
    return 0


def _masked_env(env: dict) -> dict:
    from cast.protocol.validate import looks_secret

    return {name: ("****" if looks_secret(name) else value) for name, value in (env or {}).items()}


@cli.command(context_settings=CONTEXT)
@click.argument("run_id", type=int, metavar="N")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def info(run_id, as_json) -> int:
    """Show a run: its spec, stages with durations, and outcome."""
    run = _client().get_run(run_id)
    run["spec"]["env"] = _masked_env(run["spec"].get("env"))
    if as_json:
        _print_json(run)
        return 0
    from .render import local_time, run_duration, seconds_between, table
    from cast.protocol.status import is_final
    from cast.protocol.units import format_duration

    spec = run["spec"]
    if spec.get("git_url"):
        code = f"{spec['git_url']} @ {spec.get('commit_ref') or 'HEAD'} ({(spec.get('commit_sha') or '?')[:12]})"
    elif spec.get("code_bundle"):
        code = f"local code bundle {spec['code_bundle'][:12]}"
    else:
        code = "none"
    fields = [
        ("Run", f"{run['id']} · {run['status']}"),
        ("Command", spec["command"]),
        ("Code", code),
        ("Pip", " ".join(spec.get("pip") or []) + (" + requirements file" if spec.get("pip_req") else "")),
        ("Apt", " ".join(spec.get("apt") or [])),
        ("Docker image", spec.get("docker_image") or ""),
        ("Mounts", ", ".join(f"{m['resource']} → {m['path']}" for m in spec.get("mounts") or [])),
        ("Machine", spec.get("machine_type", "cpu") + (f" on {run['worker']}" if run.get("worker") else "")
         + (f" ({run['executor']})" if run.get("executor") else "")),
        ("Env", ", ".join(f"{k}={v}" for k, v in spec["env"].items())),
        ("Labels", ", ".join(run.get("labels") or [])),
        ("Owner", run.get("owner") or ""),
        ("Created", local_time(run.get("created_at"))),
        ("Duration", run_duration(run) + ("" if run.get("finished_at") else " so far")),
        ("Timeout", format_duration(spec["timeout"]) if spec.get("timeout") else ""),
        ("Attempt", f"{run.get('attempt', 1)} of {1 + (spec.get('retries') or 0)}"),
        ("Exit code", "" if run.get("exit_code") is None else str(run["exit_code"])),
        ("Reason", run.get("reason") or ""),
        ("Mounted by", ", ".join(f"run {n}" for n in run.get("mounted_by") or [])),
    ]
    lines = [table(None, [[f"{name}:", value] for name, value in fields if value])]
    transitions = run.get("transitions") or []
    if transitions:
        rows = []
        for index, step in enumerate(transitions):
            following = transitions[index + 1] if index + 1 < len(transitions) else None
            if following is None and is_final(step["status"]):
                took = ""
            else:
                took = format_duration(seconds_between(step["at"], following and following["at"]))
                took += "" if following else " so far"
            # A note on a move to the next stage qualifies the stage that ended
            # ("Building… done (cached)"); other notes say why their own move happened.
            notes = [] if _note_qualifies_previous(step["status"]) else [step.get("note")]
            if following and _note_qualifies_previous(following["status"]):
                notes.append(following.get("note"))
            rows.append(["  " + step["status"], took, "; ".join(n for n in notes if n)])
        lines.append("Stages:")
        lines.append(table(None, rows, right={1}))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _note_qualifies_previous(status: str) -> bool:
    return status not in ("machine_requested", "stopping", "stopped", "killing", "killed", "interrupted")


@cli.command(context_settings=CONTEXT)
@click.argument("run_id", type=int, metavar="N")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--tail", type=click.IntRange(min=1), metavar="N", help="Start with the last N lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON (not with -f).")
def logs(run_id, follow, tail, as_json) -> int:
    """Print a run's log; with -f follow it to the end (^C detaches)."""
    from .render import Printer

    if follow and as_json:
        raise UsageProblem("--json cannot be combined with -f")
    client = _client()
    offset = -tail if tail else 0
    printer = Printer()
    if follow:
        return _follow_to_end(client, run_id, offset, printer)
    entries, finished = [], False
    while True:  # page through the log; only the first offset may be negative (--tail)
        page = client.get_logs(run_id, offset=offset, limit=LOG_PAGE)
        if as_json:
            entries.extend(page["entries"])
        else:
            printer.entries(page["entries"])
        finished, offset = page["finished"], page["next_offset"]
        if len(page["entries"]) < LOG_PAGE:
            break
    if as_json:
        _print_json({"entries": entries, "next_offset": offset, "finished": finished})
    return 0


def _for_each_run(run_ids, action, verb: str) -> int:
    client = _client()
    failures = 0
    for run_id in run_ids:
        try:
            run = getattr(client, action)(run_id)
        except ApiError as exc:
            sys.stderr.write(f"cast: error: run {run_id}: {exc.detail}\n")
            failures += 1
            continue
        sys.stdout.write(f"Run {run_id}: {run['status']}\n" if run["status"] != verb else f"Run {run_id} is {verb}\n")
    return 1 if failures else 0


@cli.command(context_settings=CONTEXT)
@click.argument("run_ids", type=int, nargs=-1, required=True, metavar="N...")
def stop(run_ids) -> int:
    """Stop runs: the command is ended and its outputs are saved."""
    return _for_each_run(run_ids, "stop_run", "stopping")


@cli.command(context_settings=CONTEXT)
@click.argument("run_ids", type=int, nargs=-1, required=True, metavar="N...")
def kill(run_ids) -> int:
    """Kill runs: the command is ended and its outputs are dropped."""
    return _for_each_run(run_ids, "kill_run", "killing")


@cli.command(context_settings=CONTEXT)
@click.argument("run_id", type=int, metavar="N")
@click.argument("label")
@click.option("--remove", is_flag=True, help="Remove the label instead of adding it.")
def label(run_id, label, remove) -> int:
    """Add a label to a run (or remove it with --remove)."""
    from cast.protocol.validate import validate_label

    validate_label(label)
    client = _client()
    run = client.remove_label(run_id, label) if remove else client.add_label(run_id, label)
    sys.stdout.write(f"Run {run_id} labels: {', '.join(run.get('labels') or []) or '(none)'}\n")
    return 0


# --- files: ls, cp, upload --------------------------------------------------------

def _entries(client, resource) -> tuple[list[dict], bool]:
    """What `resource` holds (its children, or itself when it is a file) and
    whether it is a file."""
    shown = str(resource)
    if resource.kind == "runs":
        return _children(client.list_outputs(resource.run_id)["files"], resource.subpath, shown)
    files = client.list_upload(resource.name)["files"]
    kinds = {upload["name"]: upload.get("kind") for upload in client.list_uploads()["uploads"]}
    if kinds.get(resource.name) == "file":  # the upload is one file, listed under its own name
        if resource.subpath:
            raise CastError(f"{shown}: uploads/{resource.name} is a file, not a folder")
        return [{"name": resource.name, "type": "file", "size": files[0]["size"]}], True
    return _children(files, resource.subpath, shown)


def _children(files: list[dict], subpath: str, shown: str) -> tuple[list[dict], bool]:
    """The entries directly under `subpath` (files and folders with their total
    sizes), and whether `subpath` is itself a file."""
    for entry in files:
        if entry["path"] == subpath and subpath:
            return [{"name": subpath.rsplit("/", 1)[-1], "type": "file", "size": entry["size"]}], True
    prefix = f"{subpath}/" if subpath else ""
    children: dict[str, dict] = {}
    for entry in files:
        if not entry["path"].startswith(prefix):
            continue
        head, slash, _ = entry["path"][len(prefix):].partition("/")
        if slash:
            child = children.setdefault(head, {"name": head + "/", "type": "dir", "size": 0})
            child["size"] += entry["size"]
        else:
            children[head] = {"name": head, "type": "file", "size": entry["size"]}
    if subpath and not children:
        raise CastError(f"{shown}: no such file or folder")
    return [children[name] for name in sorted(children)], False


@cli.command(context_settings=CONTEXT)
@click.argument("resource", required=False, default="", metavar="[runs/N[/PATH] | uploads[/NAME[/PATH]]]")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def ls(resource, as_json) -> int:
    """List run outputs and uploads with their sizes."""
    from .render import human_size, table
    from cast.protocol.validate import parse_resource

    top = resource.strip("/")
    if not top:
        entries = [{"name": "runs/", "type": "dir", "size": None}, {"name": "uploads/", "type": "dir", "size": None}]
    elif top == "runs":
        runs = _client().list_runs(limit=500)["runs"]
        entries = [{"name": f"{r['id']}/", "type": "dir", "size": None, "status": r["status"]} for r in runs]
    elif top == "uploads":
        uploads = _client().list_uploads()["uploads"]
        entries = [{"name": u["name"], "type": "upload", "size": u["size"], "files": u.get("files")}
                   for u in sorted(uploads, key=lambda u: u["name"])]
    else:
        parsed = parse_resource(resource.rstrip("/"))
        entries, _ = _entries(_client(), parsed)
    if as_json:
        _print_json(entries)
        return 0
    rows = [[e["name"], e.get("status") or ("" if e["size"] is None else human_size(e["size"]))] for e in entries]
    if rows:
        sys.stdout.write(table(None, rows, right={1}, gap=4) + "\n")
    return 0


class _Counting:
    """A file-like reader that advances a progress bar as it is read."""

    def __init__(self, download, progress):
        self._download = download
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._download.read(size)
        self._progress.advance(len(data))
        return data


@cli.command(context_settings=CONTEXT)
@click.argument("resource", metavar="RESOURCE")
@click.argument("destination", required=False, metavar="[DEST]")
def cp(resource, destination) -> int:
    """Copy a file or folder of a run's outputs or an upload to DEST (default: here).

    A folder is copied into DEST/NAME when DEST is an existing folder (or not
    given), else into DEST itself, as `cp -r` does.
    """
    import tarfile

    from .render import Progress, human_size
    from cast.protocol.validate import parse_resource
    from .tarstream import extract_stream

    parsed = parse_resource(resource)
    client = _client()
    entries, is_file = _entries(client, parsed)
    name = str(parsed).rsplit("/", 1)[-1]
    dest = Path(destination) if destination else Path(".")
    open_download = (lambda: client.download_output(parsed.run_id, parsed.subpath)) if parsed.kind == "runs" \
        else (lambda: client.download_upload(parsed.name, parsed.subpath))
    if is_file:
        target = dest / name if dest.is_dir() else dest
        size = entries[0]["size"]
        progress = Progress(f"{name}", size)
        partial = target.with_name(f".{target.name}.cast-partial")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open_download() as download, open(partial, "wb") as out:
                for data in download.chunks():
                    out.write(data)
                    progress.advance(len(data))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        progress.finish()
        sys.stdout.write(f"Copied {parsed} to {target} ({human_size(size)})\n")
        return 0
    target = dest / name if (destination is None or dest.is_dir()) else dest
    total = sum(e["size"] for e in entries)
    progress = Progress(f"{name}/", total)
    created = not target.exists()
    try:
        with open_download() as download:
            count = extract_stream(_Counting(download, progress), target)
    except BaseException as exc:
        if created:  # leave nothing half-copied behind
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, tarfile.TarError):
            raise CastError(f"refused to extract {parsed}: {exc}") from None
        raise
    progress.finish()
    sys.stdout.write(f"Copied {parsed} to {target}/ ({count} entries, {human_size(total)})\n")
    return 0


@cli.command(context_settings=CONTEXT)
@click.argument("path", metavar="PATH")
@click.option("-n", "--name", help="Name of the upload (default: the file or folder's name).")
def upload(path, name) -> int:
    """Upload a file or folder as uploads/NAME, for runs to mount."""
    from .render import Progress, human_size
    from cast.protocol.validate import validate_upload_name

    source = Path(path)
    if not source.exists():
        raise UsageProblem(f"{path}: no such file or folder")
    name = validate_upload_name(name or source.absolute().name)
    client = _client()
    try:  # refuse before streaming what could be gigabytes
        client.list_upload(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
    else:
        raise CastError(f"uploads/{name} already exists; choose another name with -n NAME")
    if source.is_dir():
        from .tarstream import tar_chunks, walk_folder

        members, total, skipped = walk_folder(source)
        for item in skipped:
            sys.stderr.write(f"cast: skipping {item} (a link to a folder, or unreadable)\n")
        progress = Progress(name + "/", total)
        kind, chunks = "dir", tar_chunks(members, follow_symlinks=True, on_bytes=progress.advance)
    else:
        total = source.stat().st_size
        progress = Progress(name, total)
        kind, chunks = "file", _file_chunks(source, progress)
    result = client.upload(name, kind, chunks)
    progress.finish()
    files = result.get("files")
    sys.stdout.write(f"Uploaded uploads/{result.get('name', name)} ({human_size(result.get('size', total))}"
                     + (f", {files} files" if kind == "dir" and files is not None else "") + ")\n")
    return 0


def _file_chunks(path: Path, progress):
    with open(path, "rb") as handle:
        while True:
            data = handle.read(1 << 20)
            if not data:
                return
            progress.advance(len(data))
            yield data


# --- users and tokens -------------------------------------------------------------

@cli.group(context_settings=CONTEXT)
def user() -> None:
    """Users of the control plane: create (admins) and list (admins)."""


@user.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option("--admin", is_flag=True, help="The user may manage users and see everyone's runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the user and its token as JSON.")
def user_create(name, admin, as_json) -> int:
    """Create user NAME and print its first token (shown only once)."""
    created = _client().create_user(name, admin=admin)
    if as_json:
        _print_json(created)
        return 0
    role = "admin" if created["admin"] else "user"
    sys.stderr.write(f"Created {role} {created['name']}; its token (token {created['token']['id']}) is shown only once:\n")
    sys.stdout.write(created["token"]["token"] + "\n")
    return 0


@user.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
def user_ls(as_json) -> int:
    """List the users (admins only)."""
    from .render import local_time, table

    users = _client().list_users()["users"]
    if as_json:
        _print_json(users)
        return 0
    rows = [[u["name"], "admin" if u["admin"] else "user", local_time(u["created_at"])] for u in users]
    sys.stdout.write(table(["NAME", "ROLE", "CREATED"], rows) + "\n")
    return 0


@cli.group(context_settings=CONTEXT)
def token() -> None:
    """Bearer tokens: create, list and revoke. Secrets are shown once, stored hashed."""


@token.command("create", context_settings=CONTEXT)
@click.option("--user", "user_name", metavar="NAME", help="For another user (admins only; default: you).")
@click.option("--worker", is_flag=True, help="A worker token, for `cast worker --token-file` (admins only).")
@click.option("--name", default="", metavar="TEXT", help="A note saying what the token is for.")
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON.")
def token_create(user_name, worker, name, as_json) -> int:
    """Create a token and print its secret (shown only once)."""
    if worker and user_name:
        raise UsageProblem("--worker tokens belong to no user; leave out --user")
    created = _client().create_token(kind="worker" if worker else "user", name=name, user=user_name)
    if as_json:
        _print_json(created)
        return 0
    owner = "a worker" if created["kind"] == "worker" else created["user"]
    sys.stderr.write(f"Created token {created['id']} for {owner}; it is shown only once:\n")
    sys.stdout.write(created["token"] + "\n")
    return 0


@token.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
def token_ls(as_json) -> int:
    """List your tokens (an admin: everyone's), without their secrets."""
    from .render import local_time, table

    tokens = _client().list_tokens()["tokens"]
    if as_json:
        _print_json(tokens)
        return 0
    rows = [[str(t["id"]), t["kind"], t["user"] or "-", t["name"] or "-", local_time(t["created_at"]),
             local_time(t["revoked_at"]) if t["revoked_at"] else "-"] for t in tokens]
    sys.stdout.write(table(["ID", "KIND", "USER", "NAME", "CREATED", "REVOKED"], rows, right={0}) + "\n")
    return 0


@token.command("revoke", context_settings=CONTEXT)
@click.argument("token_ids", type=int, nargs=-1, required=True, metavar="ID...")
def token_revoke(token_ids) -> int:
    """Revoke tokens: from now on they are refused (401)."""
    client = _client()
    failures = 0
    for token_id in token_ids:
        try:
            client.revoke_token(token_id)
        except ApiError as exc:
            sys.stderr.write(f"cast: error: token {token_id}: {exc.detail}\n")
            failures += 1
            continue
        sys.stdout.write(f"Token {token_id} revoked\n")
    return 1 if failures else 0


# --- the embedded server and the server/worker processes -----------------------------

@cli.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def up(args) -> int:
    """Run the embedded control plane and worker in the foreground (^C stops them)."""
    from .config import cast_home
    from .embedded import run_foreground

    run_foreground(cast_home(), args)
    return 0


@cli.command(context_settings=CONTEXT)
def down() -> int:
    """Stop the embedded control plane and worker."""
    from .config import cast_home
    from .embedded import stop

    sys.stdout.write(stop(cast_home()) + "\n")
    return 0


def _exec_module(module: str, args) -> None:
    command = [sys.executable, "-m", module, *args]
    sys.stdout.flush()
    os.execv(command[0], command)


@cli.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def server(args) -> int:
    """Run a control plane (python -m cast.server ARGS; try `cast server --help`)."""
    _exec_module("cast.server", args)
    return 0


@cli.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args) -> int:
    """Run a worker (python -m cast.worker ARGS; try `cast worker --help`)."""
    _exec_module("cast.worker", args)
    return 0


@cli.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cache(args) -> int:
    """Show or prune a worker's environment cache: cast cache ls | prune [ARGS]."""
    if not args or args[0] not in ("ls", "prune", "-h", "--help"):
        raise UsageProblem("cast cache needs ls or prune")
    _exec_module("cast.worker", ("cache", *args))
    return 0


# --- entry point -----------------------------------------------------------------

def _error(message: str) -> None:
    sys.stderr.write(f"cast: error: {' '.join(str(message).split()) or 'unknown error'}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure becomes one `cast: error:` line and an exit code."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    try:
        result = cli.main(args=argv, prog_name="cast", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        _error(exc.format_message())
        code = exc.exit_code
    except SpecError as exc:
        _error(str(exc))
        code = 2
    except CastError as exc:
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = 130
    except BrokenPipeError:
        # The reader went away (e.g. `cast logs N | head`); say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("CAST_DEBUG"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set CAST_DEBUG=1 for the traceback)")
        code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Flush and leave without the interpreter's teardown of every module
    imported (10-30 ms, a tenth of a warm `cast run "true"`): nothing else is
    left to write, as every file the commands open is closed by then."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away, as above
            code = code or 141
        except ValueError:  # closed
            pass
    os._exit(code)
