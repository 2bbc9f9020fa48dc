"""The search driver: what the control plane's loop does for each running search.

Owns: recording each finished trial's metric value, choosing the next trials'
parameters (grid order, seeded random points, Optuna's TPE rebuilt from the
recorded trials), starting their runs through `runs.create_run` (so a trial
meets every check `cast run` meets) and ending the search once its runs are
done. Everything lives in the `searches` and `search_trials` tables, so a
restarted control plane resumes each search where it was.

`drive_once` works in short transactions: one that settles a search (values,
the end) and says how many trials it wants, then, per trial, the choice of
parameters outside any transaction (Optuna takes a moment) and a write
transaction that claims the trial's number: it starts the run only if the
search is still running and still has exactly that many trials, and the
number is the trial's primary key, so two drivers never start the same trial.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cast.protocol import hyper
from cast.protocol.hyper import Goal, MetricAgg, SearchKind, SearchStatus
from cast.protocol.status import FINAL_STATUSES, RunStatus
from cast.protocol.validate import SpecError
from cast.server.db import Database
from cast.server.errors import BadRequest, DomainError
from cast.server.models import Run, Search, SearchTrial, User, utcnow
from cast.server.schemas.runs import RunCreate
from cast.server.services import runs
from cast.server.settings import Settings

log = logging.getLogger("cast.server.hyper")
# TPE's random start: a third of the budget, between 2 and Optuna's default of 10.
MAX_STARTUP_TRIALS = 10


@dataclass
class TrialState:
    number: int
    params: dict[str, Any]
    value: float | None
    finished: bool
    failed: bool  # its run did not complete, or it reported no value of the search's metric


@dataclass
class Step:
    """A running search that wants `wanted` more trials now."""

    search_id: int
    kind: SearchKind
    spec: dict[str, Any]
    trials: list[TrialState]
    wanted: int
    pending: list[dict[str, Any]] = field(default_factory=list)


# --- a trial's run --------------------------------------------------------------


def run_body(spec: dict[str, Any], params: dict[str, Any], *, search_id: int) -> RunCreate:
    """The run body of the trial with `params`, checked as `POST /runs` checks one."""
    command = hyper.substitute(spec["command"], params)
    body = {**spec["run"], "command": command, "labels": [*spec["labels"], hyper.search_label(search_id)]}
    try:
        return RunCreate.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        cause = (first.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, Exception) else first.get("msg", "invalid")
        raise BadRequest(f"run.{where}: {message}" if where else f"run: {message}") from None


def start_trial(session: Session, *, search: Search, owner: User, number: int, params: dict[str, Any],
                settings: Settings) -> Run:
    body = run_body(search.spec, params, search_id=search.id)
    run, _reused = runs.create_run(session, owner=owner, body=body, settings=settings)
    session.add(SearchTrial(search_id=search.id, number=number, params=params, run_id=run.id))
    session.flush()
    return run


def read_value(session: Session, *, spec: dict[str, Any], run_id: int) -> float | None:
    from cast.server.services import metrics

    return metrics.aggregate(session, run_id=run_id, name=spec["metric"], agg=MetricAgg(spec["metric_agg"]).value)


# --- one pass -----------------------------------------------------------------------


def running_search_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Search.id).where(Search.status == SearchStatus.RUNNING.value)
                                .order_by(Search.id)))


def settle(session: Session, *, search_id: int) -> Step | None:
    """Record finished trials' values and end the search once all its runs are
    done; the step that starts more trials, if it wants any now."""
    search = session.get(Search, search_id, populate_existing=True)
    if search is None or search.status != SearchStatus.RUNNING.value:
        return None
    spec = search.spec
    rows = session.execute(
        select(SearchTrial, Run.status).outerjoin(Run, Run.id == SearchTrial.run_id)
        .where(SearchTrial.search_id == search_id).order_by(SearchTrial.number)
    ).all()
    trials = []
    for trial, status in rows:
        status = RunStatus(status) if status is not None else None
        if status is RunStatus.COMPLETE and trial.value is None and spec["metric"]:
            trial.value = read_value(session, spec=spec, run_id=trial.run_id)
        finished = status is None or status in FINAL_STATUSES
        failed = finished and (status is not RunStatus.COMPLETE or (spec["metric"] is not None and trial.value is None))
        trials.append(TrialState(trial.number, trial.params, trial.value, finished, failed))
    session.flush()
    active = sum(not t.finished for t in trials)
    if len(trials) >= spec["num_runs"] and not active:
        _finish(session, search_id=search_id, trials=trials, metric=spec["metric"])
        return None
    wanted = min(spec["parallel"] - active, spec["num_runs"] - len(trials))
    return Step(search_id, SearchKind(search.kind), spec, trials, wanted) if wanted > 0 else None


def _finish(session: Session, *, search_id: int, trials: list[TrialState], metric: str | None) -> None:
    if all(t.failed for t in trials):
        status = SearchStatus.FAILED
        reason = (f"none of its {len(trials)} runs completed"
                  + (f" with a value of {metric}" if metric else ""))
    else:
        status, reason = SearchStatus.COMPLETE, None
    session.execute(update(Search).where(Search.id == search_id, Search.status == SearchStatus.RUNNING.value)
                    .values(status=status.value, finished_at=utcnow(), reason=reason))


def fail(session: Session, *, search_id: int, reason: str) -> None:
    session.execute(update(Search).where(Search.id == search_id, Search.status == SearchStatus.RUNNING.value)
                    .values(status=SearchStatus.FAILED.value, finished_at=utcnow(), reason=reason[:4096]))


def claim_and_start(session: Session, *, search_id: int, number: int, params: dict[str, Any],
                    settings: Settings) -> bool:
    """Start trial `number` if the search is running and has exactly `number` trials."""
    search = session.get(Search, search_id, populate_existing=True)
    if search is None or search.status != SearchStatus.RUNNING.value:
        return False
    if session.scalar(select(func.count()).where(SearchTrial.search_id == search_id)) != number:
        return False
    owner = session.get(User, search.owner_id)
    try:
        start_trial(session, search=search, owner=owner, number=number, params=params, settings=settings)
    except (DomainError, SpecError) as error:
        # What was true when the search began no longer is (a mount deleted, a bundle gone).
        fail(session, search_id=search_id, reason=f"trial {number} could not start: {error}")
        return False
    return True


# --- choosing parameters ---------------------------------------------------------------


def propose(*, kind: SearchKind, spec: dict[str, Any], trials: list[TrialState], pending: list[dict[str, Any]],
            number: int) -> dict[str, Any]:
    """Trial `number`'s parameters; `pending` are those chosen in this pass and not yet recorded."""
    params = hyper.parse_params(spec["params"])
    if kind is SearchKind.GRID:
        return hyper.grid_point(params, number)
    if kind is SearchKind.RANDOM:
        return hyper.sample(params, seed=spec["seed"], number=number)
    return _ask_tpe(params, spec=spec, trials=trials, pending=pending, number=number)


def startup_trials(num_runs: int) -> int:
    return max(2, min(MAX_STARTUP_TRIALS, num_runs // 3))


def _ask_tpe(params: dict[str, hyper.Distribution], *, spec: dict[str, Any], trials: list[TrialState],
             pending: list[dict[str, Any]], number: int) -> dict[str, Any]:
    """Optuna's TPE rebuilt in memory from the recorded trials, asked once: no
    Optuna storage, so the tables stay the one record of the search."""
    import warnings

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState as OptunaState
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {}
    for name, dist in params.items():
        if isinstance(dist, hyper.Choice):
            distributions[name] = CategoricalDistribution(dist.values)
        elif isinstance(dist, hyper.IntRange):
            distributions[name] = IntDistribution(dist.low, dist.high)
        else:
            distributions[name] = FloatDistribution(dist.low, dist.high, log=dist.log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Seeded per trial: a fresh sampler with one seed would draw the same random start each time.
        sampler = optuna.samplers.TPESampler(seed=(spec["seed"] + number) % 2**32, constant_liar=True,
                                             n_startup_trials=startup_trials(spec["num_runs"]))
    study = optuna.create_study(direction=Goal(spec["goal"]).value, sampler=sampler)
    for trial in trials:
        if not trial.finished:
            state, value = OptunaState.RUNNING, None
        elif trial.failed:
            state, value = OptunaState.FAIL, None
        else:
            state, value = OptunaState.COMPLETE, trial.value
        study.add_trial(create_trial(params=trial.params, distributions=distributions, value=value, state=state))
    for chosen in pending:
        study.add_trial(create_trial(params=chosen, distributions=distributions, state=OptunaState.RUNNING))
    asked = study.ask(distributions).params
    # Plain JSON values: Optuna may hand back numpy scalars.
    return {name: int(value) if isinstance(distributions[name], IntDistribution)
            else float(value) if isinstance(distributions[name], FloatDistribution) else value
            for name, value in asked.items()}


# --- the loop's pass --------------------------------------------------------------------


def drive_once(database: Database, settings: Settings) -> None:
    with database.transaction(write=False) as session:
        ids = running_search_ids(session)
    for search_id in ids:
        try:
            _drive_search(database, settings, search_id)
        except Exception:  # one search's trouble must not stall the others
            log.exception("search %s: driver pass failed", search_id)


def _drive_search(database: Database, settings: Settings, search_id: int) -> None:
    with database.transaction() as session:
        step = settle(session, search_id=search_id)
    if step is None:
        return
    for index in range(step.wanted):
        number = len(step.trials) + index
        params = propose(kind=step.kind, spec=step.spec, trials=step.trials, pending=step.pending, number=number)
        with database.transaction() as session:
            if not claim_and_start(session, search_id=search_id, number=number, params=params, settings=settings):
                return
        step.pending.append(params)
