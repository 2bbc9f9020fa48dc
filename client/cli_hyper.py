"""The `cast hyper` verbs: grid, random and bayes searches, and ls, info, stop, kill.

Owns: turning `--param NAME=VALUES` and a command template with `:name:`
placeholders (plus any `cast run` option) into a search body, checked with
`cast.protocol.hyper` before it is sent, and showing searches back. The
control plane makes the runs (docs/hyper.md); these verbs submit and return.
"""

from __future__ import annotations

import sys

import click

from cast.protocol.hyper import MAX_PARALLEL, Goal, MetricAgg, SearchKind, SearchStatus
from cast.protocol.status import RunStatus

from .cli_common import CONTEXT, UsageProblem, print_json
from .cli_runs import _RunCommand
from .cli_runs import run as _run_verb
from .config import client as _client

# `cast run`'s options that make no sense for a search, which submits and returns.
_NOT_FOR_SEARCHES = {"command", "background", "as_json", "idempotent", "pull"}


@click.group(context_settings=CONTEXT)
def hyper() -> None:
    """Hyperparameter searches: many runs of one command with :name: placeholders.

    The control plane starts the runs, at most --parallel at a time, and reads
    each one's --metric from what it reported to $CAST_METRICS. See docs/hyper.md.
    """


def _search_command(kind: SearchKind, help_text: str):
    """A submitting verb: the search's own options and every option of `cast run`."""

    options = [
        click.Argument(["command"], nargs=-1),
        click.Option(["-p", "--param", "params"], multiple=True, metavar="NAME=VALUES",
                     help="A parameter: a,b,c | uniform:LOW:HIGH | loguniform:LOW:HIGH | int:LOW:HIGH (repeatable)."),
    ]
    if kind is not SearchKind.GRID:
        options.append(click.Option(["-n", "--num-runs"], type=int, metavar="N", help="How many runs (required)."))
    options += [
        click.Option(["--parallel"], type=click.IntRange(1, MAX_PARALLEL), default=1, show_default=True,
                     help="At most this many of its runs queued or active at once."),
        click.Option(["--metric"], metavar="NAME",
                     help="The metric a run reports that scores it" + (" (required)." if kind is SearchKind.BAYES
                                                                       else "; info shows the best first.")),
        click.Option(["--goal"], type=click.Choice([g.value for g in Goal]), default=Goal.MINIMIZE.value,
                     show_default=True, help="Whether the best run has the least or the greatest value."),
        click.Option(["--metric-agg"], type=click.Choice([a.value for a in MetricAgg]), default=MetricAgg.LAST.value,
                     show_default=True, help="Which of a run's values of the metric is its score."),
    ]
    if kind is not SearchKind.GRID:
        options.append(click.Option(["--seed"], type=click.IntRange(0, 2**32 - 1),
                                    help="Seed of the sampler (default: chosen by the server and shown)."))
    options.append(click.Option(["--json", "as_json"], is_flag=True, help="Print the search as JSON."))
    options += [p for p in _run_verb.params if p.name not in _NOT_FOR_SEARCHES]
    # `cast run`'s command class: it counts the `--` words, so an option typed after the command is refused.
    return _RunCommand(kind.value, params=options, help=help_text,
                       context_settings={**CONTEXT, "allow_interspersed_args": False},
                       # grid has no --num-runs and no --seed
                       callback=lambda **given: _submit(kind, **{"num_runs": None, "seed": None, **given}))


def _submit(kind: SearchKind, *, command, params, num_runs, parallel, metric, goal, metric_agg, seed, as_json,
            from_file, queue_anyway, **flags) -> int:
    from cast.protocol import hyper as rules
    from cast.protocol.validate import SpecError

    from .cli_spec import attach_code, build_spec, load_run_file, refuse_options_in_command

    context = click.get_current_context()
    if context.meta.get("cast.dashes", 0) == command.count("--"):  # no `--` before the command
        refuse_options_in_command(command, {name for param in context.command.params
                                            if isinstance(param, click.Option) for name in param.opts})
    given: dict[str, str] = {}
    for text in params:
        name, values = rules.parse_param_option(text)
        if name in given:
            raise UsageProblem(f"--param {name} is given twice")
        given[name] = values
    file_options = load_run_file(from_file) if from_file else {}
    request = build_spec(command, file_options, flags)
    spec = request.spec
    try:
        plan = rules.check_search(kind=kind, command=spec.command, params=given, num_runs=num_runs, metric=metric)
    except SpecError as error:
        raise UsageProblem(str(error)) from None
    client = _client()
    if spec.git_url is None:
        attach_code(client, spec, workdir_given=request.workdir_given)
    run_options = spec.request_body()
    run_options.pop("command")
    if queue_anyway:
        run_options["queue_anyway"] = True
    body = {"kind": kind.value, "command": spec.command, "params": given, "run": run_options,
            "labels": request.labels, "num_runs": num_runs, "parallel": parallel, "metric": metric,
            "goal": goal, "metric_agg": metric_agg, "seed": seed}
    search = client.create_search(body)
    if as_json:
        print_json(search)
        return 0
    scored = f", scored by the {metric_agg} {metric} ({goal})" if metric else ""
    seeded = f", seed {search['seed']}" if kind is not SearchKind.GRID else ""
    hints = [f"cast hyper info {search['id']}", f"cast ps --label hyper:{search['id']}"]
    width = max(map(len, hints)) + 3
    sys.stdout.write(f"Search {search['id']}: {kind.value}, {plan.num_runs} runs, {parallel} at a time"
                     f"{scored}{seeded}\n"
                     f"  {hints[0]:<{width}}its runs, best first\n"
                     f"  {hints[1]:<{width}}its runs as runs\n")
    return 0


grid = _search_command(SearchKind.GRID, "Run COMMAND once for every combination of the --param values.")
random = _search_command(SearchKind.RANDOM, "Run COMMAND --num-runs times with parameters drawn at random.")
bayes = _search_command(
    SearchKind.BAYES,
    "Run COMMAND --num-runs times, each with parameters Optuna's TPE chooses from the scores so far.",
)


@hyper.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the searches as JSON.")
def ls(as_json) -> int:
    """List searches, newest first."""
    searches = _client().list_searches()["searches"]
    if as_json:
        print_json(searches)
        return 0
    from cast.protocol.hyper import describe_params

    from .render import local_time, shorten, table

    if not searches:
        sys.stdout.write("No searches.\n")
        return 0
    rows = []
    for search in searches:
        best = search["best"]
        best_text = (f"{search['metric']}={best['value']:.6g} ({shorten(describe_params(best['params']), 40)})"
                     if best else "")
        rows.append([str(search["id"]), search["kind"], SearchStatus(search["status"]).value,
                     f"{search['trials_started']}/{search['num_runs']}", best_text, shorten(search["command"], 40),
                     local_time(search["created_at"])])
    sys.stdout.write(table(["ID", "KIND", "STATUS", "RUNS", "BEST", "COMMAND", "CREATED"], rows, right={0}) + "\n")
    return 0


@hyper.command(context_settings=CONTEXT)
@click.argument("search_id", type=int, metavar="H")
@click.option("--json", "as_json", is_flag=True, help="Print the search as JSON.")
def info(search_id, as_json) -> int:
    """Show a search: its runs, their parameters, status and metric, best first."""
    search = _client().get_search(search_id)
    if as_json:
        print_json(search)
        return 0
    from cast.protocol.hyper import display_value
    from cast.protocol.status import is_final

    from .render import local_time, table

    header = [
        ("Search", f"{search['id']} · {search['kind']} · {SearchStatus(search['status']).value}"),
        ("Command", search["command"]),
        ("Params", ", ".join(f"{name}={text}" for name, text in search["params"].items())),
        ("Runs", f"{search['trials_started']} of {search['num_runs']}, {search['parallel']} at a time"),
        ("Metric", f"{search['metric_agg']} {search['metric']} ({search['goal']})" if search["metric"] else ""),
        ("Seed", str(search["seed"]) if search["kind"] != SearchKind.GRID.value else ""),
        ("Labels", ", ".join(search["labels"])),
        ("Created", local_time(search["created_at"])),
        ("Finished", local_time(search["finished_at"]) if search["finished_at"] else ""),
        ("Reason", search["reason"] or ""),
    ]
    lines = [table(None, [[f"{name}:", value] for name, value in header if value])]
    trials = search["trials"]
    names = list(search["params"])
    metric = search["metric"]
    if metric:
        sign = 1 if search["goal"] == Goal.MINIMIZE.value else -1
        trials = sorted(trials, key=lambda t: (t["value"] is None, sign * (t["value"] or 0), t["number"]))
    rows = []
    for trial in trials:
        status = RunStatus(trial["status"]) if trial["status"] else None
        if not metric or trial["value"] is not None:
            score = "" if not metric else f"{trial['value']:.6g}"
        elif status is RunStatus.COMPLETE:
            score = f"failed: no {metric}"
        elif status is RunStatus.FAILED:
            score = "failed"
        else:  # still to come, or ended by a stop, a kill or a lost run
            score = "-" if status is None or is_final(status) else "…"
        rows.append([str(trial["number"]), str(trial["run_id"] or "-"), status.value if status else "gone",
                     *(display_value(trial["params"][n]) for n in names), *([score] if metric else [])])
    headers = ["TRIAL", "RUN", "STATUS", *names, *([metric] if metric else [])]
    if rows:
        lines.append(table(headers, rows, right={0, 1}))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _end(search_id: int, action: str) -> int:
    from cast.protocol.status import FINAL_STATUSES

    search = getattr(_client(), action)(search_id)
    status = SearchStatus(search["status"])
    active = sum(1 for t in search["trials"] if t["status"] and RunStatus(t["status"]) not in FINAL_STATUSES)
    fate = "will finish" if status is SearchStatus.STOPPED else "are being killed"
    sys.stdout.write(f"Search {search_id} is {status.value}: no new runs"
                     + (f"; {active} active run(s) {fate}" if active else "") + "\n")
    return 0


@hyper.command(context_settings=CONTEXT)
@click.argument("search_id", type=int, metavar="H")
def stop(search_id) -> int:
    """Stop a search: no new runs; its running runs finish."""
    return _end(search_id, "stop_search")


@hyper.command(context_settings=CONTEXT)
@click.argument("search_id", type=int, metavar="H")
def kill(search_id) -> int:
    """Kill a search: no new runs; its active runs are killed."""
    return _end(search_id, "kill_search")


for _command in (grid, random, bayes):
    hyper.add_command(_command)

COMMANDS = (hyper,)
