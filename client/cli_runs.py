"""The verbs about runs: run, ps, info, logs, stop, kill and label.

Owns: submitting a run and following its log to its end (^C detaches), the
outcome line and exit code, and showing runs back (statuses read as
`RunStatus`, specs as `RunSpec`).
"""

from __future__ import annotations

import sys

import click

from cast.protocol.status import RunStatus

from .cli_common import CONTEXT, UsageProblem, print_json
from .config import client as _client
from .sdk import ApiError

PS_LIMIT = 50  # runs `cast ps` shows without --limit or --all
# Statuses whose transition note says why that move happened; any other
# status's note qualifies the stage that just ended ("Building… done (cached)").
_OWN_NOTE = frozenset({RunStatus.MACHINE_REQUESTED, RunStatus.STOPPING, RunStatus.STOPPED,
                       RunStatus.KILLING, RunStatus.KILLED, RunStatus.INTERRUPTED})


class _RunCommand(click.Command):
    """`cast run`, which counts the `--` words it was given: click drops the
    one that comes before the command, and with it the need to check the
    command's words for cast's own options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["cast.dashes"] = args.count("--")
        return super().parse_args(ctx, args)


@click.command(cls=_RunCommand, context_settings={**CONTEXT, "allow_interspersed_args": False})
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
@click.option("--timeout", metavar="DURATION", help="Stop the run after this long (90, 90s, 5m, 2h, 7d).")
@click.option("--retries", type=int, help="Requeue this many times if its worker is lost (0-10).")
@click.option("--workdir", metavar="PATH",
              help="Start in this folder of the code (relative to its root; default: the folder you are in).")
@click.option("--idempotent", is_flag=True, default=None,
              help="Reuse the newest complete run that did exactly this instead of running again.")
@click.option("--pull", metavar="DIR", help="Download the run's outputs into DIR when it completes.")
@click.option("--no-log-metrics", "log_metrics", is_flag=True, flag_value=False, default=None,
              help="Do not turn the log lines a Hugging Face Trainer prints into metrics.")
@click.option("--queue-anyway", is_flag=True,
              help="Queue it even if no connected worker could run it (it waits for one that can).")
@click.option("-d", "--background", is_flag=True, default=None, help="Submit and return; do not follow.")
@click.option("--from-file", metavar="YAML", help="Run options as YAML (keys as the flags); flags override.")
@click.option("--json", "as_json", is_flag=True, help="With -d: print the run as JSON.")
@click.pass_context
def run(ctx, command, from_file, as_json, queue_anyway, **flags) -> int:
    """Run COMMAND (a bash command line) remotely and follow its logs.

    COMMAND is one quoted argument ("python train.py --lr 3") or everything
    after -- (cast run -t gpu -- python train.py --lr 3). cast's options go
    before it: one of them after the command is refused (use -- to pass it to
    your command). Exits with the run's exit code when it follows the run to
    its end.
    """
    from .cli_spec import attach_code, build_spec, load_run_file, refuse_options_in_command

    if ctx.meta.get("cast.dashes", 0) == command.count("--"):  # no `--` before the command
        refuse_options_in_command(command, {name for param in ctx.command.params if isinstance(param, click.Option)
                                            for name in param.opts + param.secondary_opts})
    file_options = load_run_file(from_file) if from_file else {}
    request = build_spec(command, file_options, flags)
    spec = request.spec
    if as_json and not request.background:
        raise UsageProblem("--json needs -d/--background (a followed run prints its logs)")
    client = _client()
    if spec.git_url is None:
        attach_code(client, spec, workdir_given=request.workdir_given)
    if spec.workdir:
        sys.stderr.write(f"Running in {spec.workdir}/\n")
    created = client.create_run(spec, labels=request.labels, idempotent=request.idempotent,
                                queue_anyway=queue_anyway)
    run_id = created["id"]
    from .render import START_MARK, Printer

    printer = Printer()
    if created.get("reused"):
        if as_json:
            print_json(created)
        else:
            printer.line(f"Run {run_id} already did this; reusing it", START_MARK)
        return _pull(client, run_id, request.pull) if request.pull else 0
    if request.background:
        if as_json:
            print_json(created)
        else:
            printer.line(f"Casting run #{run_id}…", START_MARK)
            printer.line(f"Follow its logs with: cast logs -f {run_id}")
        return 0
    printer.line(f"Casting run #{run_id}…", START_MARK)
    printer.line("Stop viewing logs with ^C")
    code = _follow_to_end(client, run_id, 0, printer)
    if request.pull and code == 0:
        return _pull(client, run_id, request.pull)
    if request.pull and code != 130:
        sys.stderr.write(f"Nothing pulled into {request.pull}: run {run_id} did not complete\n")
    return code


def _pull(client, run_id: int, target) -> int:
    """The run's outputs downloaded into `target`, as `cast cp` copies them."""
    from cast.protocol.validate import parse_resource

    from .cli_data import download

    files = client.list_outputs(run_id)["files"]
    if not files:
        sys.stderr.write(f"Nothing pulled into {target}: run {run_id} saved no outputs\n")
        return 0
    sys.stdout.write(download(client, parse_resource(f"runs/{run_id}"), target, entries=files, is_file=False) + "\n")
    return 0


def _follow_to_end(client, run_id: int, offset: int, printer) -> int:
    """Print a run's log until it is final, then its outcome; ^C detaches."""
    warned = []

    def on_reconnect(problem: str) -> None:
        if not warned:
            sys.stderr.write(f"cast: lost the log stream ({problem}); reconnecting…\n")
            sys.stderr.flush()
            warned.append(problem)

    try:
        outcome = None
        for page in client.follow_logs(run_id, offset, on_reconnect=on_reconnect):
            printer.chunks(page.chunks)
            outcome = page.outcome
        # The stream's last page says how the run ended; a server before that asked for it.
        final = {"id": run_id, **outcome.to_dict()} if outcome else client.get_run(run_id)
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
    from cast.protocol.units import format_duration

    from .render import DONE_MARK, FAIL_MARK, seconds_between

    seconds = seconds_between(run.get("created_at"), run.get("finished_at"))
    if seconds is not None:
        printer.line(f"Total run time: {format_duration(seconds)}", DONE_MARK)
    status, run_id = RunStatus(run["status"]), run["id"]
    if status is RunStatus.COMPLETE:
        printer.line(f"Run {run_id} complete", DONE_MARK)
        return 0
    text = f"Run {run_id} {status.value}"
    exit_code = run.get("exit_code")
    if status is RunStatus.FAILED and exit_code is not None:
        text += f" (exit code {exit_code})"
    if run.get("reason") and run["reason"] != f"exit code {exit_code}":
        text += f": {run['reason']}"
    printer.line(text, FAIL_MARK)
    if status is RunStatus.FAILED and isinstance(exit_code, int) and 0 < exit_code < 256:
        return exit_code
    return 1


@click.command(context_settings=CONTEXT)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RunStatus]),
              help="Only runs in this status (repeatable).")
@click.option("--label", help="Only runs with this label.")
@click.option("--limit", type=click.IntRange(1, 500), metavar="N", help="How many runs (default 50).")
@click.option("--all", "everything", is_flag=True, help="Every run, however many.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
def ps(statuses, label, limit, everything, as_json) -> int:
    """List runs, newest first."""
    if everything and limit:
        raise UsageProblem("--all lists every run; leave out --limit")
    client = _client()
    page = client.list_runs(status=list(statuses), label=label, limit=500 if everything else limit or PS_LIMIT)
    runs, total = page["runs"], page["total"]
    while everything and page["next_before"] is not None:
        page = client.list_runs(status=list(statuses), label=label, limit=500, before=page["next_before"])
        runs += page["runs"]
    if as_json:
        print_json(runs)
        return 0
    from cast.protocol.messages import RunSpec

    from .render import run_duration, shorten, table

    if not runs:
        sys.stdout.write("no runs match\n" if statuses or label else "no runs yet\n")
        return 0
    rows = [[str(r["id"]), RunStatus(r["status"]).value + (", deleted" if r.get("deleted_at") else ""),
             shorten(RunSpec.from_dict(r["spec"]).command, 48),
             run_duration(r), ",".join(r.get("labels") or [])] for r in runs]
    sys.stdout.write(table(["ID", "STATUS", "COMMAND", "DURATION", "LABELS"], rows, right={0, 3}) + "\n")
    if len(runs) < total:
        sys.stderr.write(f"showing {len(runs)} of {total} runs; --limit N or --all\n")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("run_id", type=int, metavar="N")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def info(run_id, as_json) -> int:
    """Show a run: its spec, stages with durations, and outcome."""
    from cast.protocol.messages import RunSpec
    from cast.protocol.validate import looks_secret

    run = _client().get_run(run_id)
    spec = RunSpec.from_dict(run["spec"])
    spec.env = {name: ("****" if looks_secret(name) else value) for name, value in spec.env.items()}
    run["spec"]["env"] = spec.env  # --json prints the server's run, masked too
    if as_json:
        print_json(run)
        return 0
    from cast.protocol.environment import pip_text
    from cast.protocol.units import format_duration

    from .render import local_time, run_duration, table

    if spec.git_url:
        code = f"{spec.git_url} @ {spec.commit_ref or 'HEAD'} ({(spec.commit_sha or '?')[:12]})"
    elif spec.code_bundle:
        code = f"bundle {(spec.code_digest or spec.code_bundle)[:12]}…"
        code += f" from commit {spec.commit_sha[:7]}" if spec.commit_sha else ""
        code += f" on {spec.branch}" if spec.branch else ""
        code += " (uncommitted changes)" if spec.dirty else ""
    else:
        code = "none"
    fields = [
        ("Run", f"{run['id']} · {RunStatus(run['status']).value}"),
        ("Command", spec.command),
        ("Code", code),
        ("Workdir", f"{spec.workdir}/" if spec.workdir else ""),
        ("Pip", pip_text(spec.pip, spec.pip_req, spec.pip_req_name)),
        ("Apt", " ".join(spec.apt)),
        ("Docker image", spec.docker_image or ""),
        ("Mounts", ", ".join(f"{m.resource} → {m.path}" for m in spec.mounts)),
        ("Machine", spec.machine_type + (f" on {run['worker']}" if run.get("worker") else "")
         + (f" ({run['executor']})" if run.get("executor") else "")),
        ("Limits", run.get("limits") or ""),
        ("Env", ", ".join(f"{k}={v}" for k, v in spec.env.items())),
        ("Labels", ", ".join(run.get("labels") or [])),
        ("Search", _search_text(run)),
        ("Owner", run.get("owner") or ""),
        ("Created", local_time(run.get("created_at"))),
        ("Duration", run_duration(run) + ("" if run.get("finished_at") else " so far")),
        ("Timeout", format_duration(spec.timeout) if spec.timeout else ""),
        ("Attempt", f"{run.get('attempt', 1)} of {1 + spec.retries}"),
        ("Exit code", "" if run.get("exit_code") is None else str(run["exit_code"])),
        ("Reason", run.get("reason") or ""),
        ("Mounted by", ", ".join(f"run {n}" for n in run.get("mounted_by") or [])),
        ("Deleted", f"{local_time(run['deleted_at'])} (its outputs were freed)" if run.get("deleted_at") else ""),
    ]
    lines = [table(None, [[f"{name}:", value] for name, value in fields if value])]
    if run.get("transitions"):
        lines.append("Stages:")
        lines.append(_stages_table(run["transitions"]))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _search_text(run: dict) -> str:
    """`3, trial 2 (lr=0.01, bs=8)` for a run a hyperparameter search made."""
    if run.get("search_id") is None:
        return ""
    from cast.protocol.hyper import describe_params

    return f"{run['search_id']}, trial {run['trial']} ({describe_params(run.get('search_params') or {})})"


def _stages_table(transitions: list[dict]) -> str:
    """One row per status the run went through: how long it lasted and its notes."""
    from cast.protocol.status import is_final
    from cast.protocol.units import format_duration

    from .render import seconds_between, table

    steps = [(RunStatus(step["status"]), step["at"], step.get("note")) for step in transitions]
    rows = []
    for index, (status, at, note) in enumerate(steps):
        following = steps[index + 1] if index + 1 < len(steps) else None
        if following is None and is_final(status):
            took = ""
        else:
            took = format_duration(seconds_between(at, following and following[1]))
            took += "" if following else " so far"
        notes = [note] if status in _OWN_NOTE else []
        if following and following[0] not in _OWN_NOTE:
            notes.append(following[2])
        rows.append(["  " + status.value, took, "; ".join(n for n in notes if n)])
    return table(None, rows, right={1})


@click.command(context_settings=CONTEXT)
@click.argument("run_id", type=int, metavar="N")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--tail", type=click.IntRange(min=1), metavar="N", help="Start with the last N lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the log's chunks as JSON (not with -f).")
def logs(run_id, follow, tail, as_json) -> int:
    """Print a run's log; with -f follow it to the end (^C detaches)."""
    from dataclasses import asdict

    from .render import Printer

    if follow and as_json:
        raise UsageProblem("--json cannot be combined with -f")
    client = _client()
    offset = -tail if tail else 0
    printer = Printer()
    if follow:
        return _follow_to_end(client, run_id, offset, printer)
    chunks, finished, printed = [], False, 0
    # Only the first offset may be negative (--tail).
    for page in client.log_pages(run_id, offset):
        if as_json:
            chunks.extend(page.chunks)
        else:
            printer.chunks(page.chunks)
        printed += page.line_count
        finished, offset = page.finished, page.next_offset
    if as_json:
        print_json({"chunks": [asdict(chunk) for chunk in chunks], "next_offset": offset, "finished": finished})
    elif not printed:
        sys.stderr.write(f"run {run_id} logged nothing\n" if finished else f"run {run_id} has no log lines yet\n")
    return 0


def _for_each_run(run_ids, action) -> int:
    """Ask the server to stop or kill each run; say where each one is now."""
    from cast.protocol.status import halting_line

    client = _client()
    failures = 0
    for run_id in run_ids:
        try:
            status = RunStatus(getattr(client, action)(run_id)["status"])
        except ApiError as exc:
            sys.stderr.write(f"cast: error: run {run_id}: {exc.detail}\n")
            failures += 1
            continue
        sys.stdout.write(halting_line(run_id, status) + "\n")
    return 1 if failures else 0


@click.command(context_settings=CONTEXT)
@click.argument("run_ids", type=int, nargs=-1, required=True, metavar="N...")
def stop(run_ids) -> int:
    """Stop runs: the command is ended and its outputs are saved."""
    return _for_each_run(run_ids, "stop_run")


@click.command(context_settings=CONTEXT)
@click.argument("run_ids", type=int, nargs=-1, required=True, metavar="N...")
def kill(run_ids) -> int:
    """Kill runs: the command is ended and its outputs are dropped."""
    return _for_each_run(run_ids, "kill_run")


@click.command(context_settings=CONTEXT)
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


COMMANDS = (run, ps, info, logs, stop, kill, label)
