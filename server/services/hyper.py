"""Hyperparameter searches as their owner sees them: create, read, stop, kill.

A search is created with its first trial's run (so what would fail every run
fails the request instead); the control plane's loop (`hyper_driver`) starts
the rest. A search's status changes with one conditional UPDATE each, so a
stop racing the driver's end of the search leaves one of them in effect.
"""

from __future__ import annotations

import secrets
from collections import defaultdict

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cast.protocol.hyper import Goal, SearchKind, SearchStatus
from cast.protocol.status import FINAL_STATUSES, RunStatus
from cast.server.errors import Conflict, SearchEnded, SearchNotFound
from cast.server.models import Run, Search, SearchTrial, User, utcnow
from cast.server.schemas.hyper import SearchCreate
from cast.server.services import git, hyper_driver, runs
from cast.server.settings import Settings

LIST_LIMIT = 100


def create_search(session: Session, *, owner: User, body: SearchCreate, settings: Settings) -> Search:
    plan = body.plan()
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
    spec = {
        "command": body.command, "params": dict(body.params), "run": dict(body.run), "labels": body.labels,
        "num_runs": plan.num_runs, "parallel": body.parallel, "metric": body.metric, "goal": body.goal.value,
        "metric_agg": body.metric_agg.value, "seed": seed,
    }
    first = hyper_driver.propose(kind=body.kind, spec=spec, trials=[], pending=[], number=0)
    checked = hyper_driver.run_body(spec, first, search_id=0)
    if checked.git_url:
        # Every trial runs the same code: the ref is resolved once, before the database is touched.
        spec["run"]["commit_ref"] = git.resolve_commit(checked.git_url, checked.commit_ref,
                                                       timeout=settings.git_timeout_seconds,
                                                       allow_local=settings.allow_local_git)
    search = Search(owner_id=owner.id, kind=body.kind.value, status=SearchStatus.RUNNING.value, spec=spec,
                    created_at=utcnow())
    session.add(search)
    session.flush()
    hyper_driver.start_trial(session, search=search, owner=owner, number=0, params=first, settings=settings)
    return search


def visible_search(session: Session, *, search_id: int, viewer: User) -> Search:
    search = session.get(Search, search_id)
    if search is None or not (viewer.is_admin or search.owner_id == viewer.id):
        raise SearchNotFound(search_id)
    return search


def list_searches(session: Session, *, viewer: User) -> list[Search]:
    query = select(Search).order_by(Search.id.desc()).limit(LIST_LIMIT)
    if not viewer.is_admin:
        query = query.where(Search.owner_id == viewer.id)
    return list(session.scalars(query))


def describe(session: Session, searches: list[Search], *, with_trials: bool) -> list[dict]:
    """The API view of `searches`: trials with their runs' statuses, best first in `best`."""
    ids = [s.id for s in searches]
    owners = dict(session.execute(select(User.id, User.name).where(User.id.in_({s.owner_id for s in searches}))).all())
    trials: dict[int, list[dict]] = defaultdict(list)
    for trial, status in session.execute(
        select(SearchTrial, Run.status).outerjoin(Run, Run.id == SearchTrial.run_id)
        .where(SearchTrial.search_id.in_(ids)).order_by(SearchTrial.search_id, SearchTrial.number)
    ):
        trials[trial.search_id].append({"number": trial.number, "params": trial.params, "run_id": trial.run_id,
                                        "status": status, "value": trial.value})
    views = []
    for search in searches:
        spec = search.spec
        if spec["metric"]:
            _fill_values(session, spec, trials[search.id])
        scored = [t for t in trials[search.id] if t["value"] is not None]
        best = None
        if scored:
            pick = min if spec["goal"] == Goal.MINIMIZE.value else max
            best = pick(scored, key=lambda t: t["value"])
        view = {
            "id": search.id, "kind": SearchKind(search.kind), "status": SearchStatus(search.status),
            "command": spec["command"], "params": spec["params"], "labels": spec["labels"],
            "metric": spec["metric"], "goal": spec["goal"], "metric_agg": spec["metric_agg"],
            "num_runs": spec["num_runs"], "parallel": spec["parallel"], "seed": spec["seed"],
            "created_at": search.created_at, "finished_at": search.finished_at, "reason": search.reason,
            "owner": owners.get(search.owner_id, "?"), "trials_started": len(trials[search.id]), "best": best,
        }
        if with_trials:
            view["trials"] = trials[search.id]
        views.append(view)
    return views


def _fill_values(session: Session, spec: dict, trials: list[dict]) -> None:
    # The driver records values only while a search runs: a stopped search's
    # last runs end later, and their values are read here.
    for trial in trials:
        if trial["value"] is None and trial["status"] == RunStatus.COMPLETE.value:
            trial["value"] = hyper_driver.read_value(session, spec=spec, run_id=trial["run_id"])


def stop_search(session: Session, *, search_id: int, viewer: User) -> Search:
    """No new runs; the running ones finish."""
    return _end(session, search_id=search_id, viewer=viewer, to=SearchStatus.STOPPED,
                sources=(SearchStatus.RUNNING,))


def kill_search(session: Session, *, search_id: int, viewer: User) -> Search:
    """No new runs, and its active runs killed (also those of a stopped search)."""
    search = _end(session, search_id=search_id, viewer=viewer, to=SearchStatus.KILLED,
                  sources=(SearchStatus.RUNNING, SearchStatus.STOPPED))
    active = session.scalars(
        select(Run.id).join(SearchTrial, SearchTrial.run_id == Run.id)
        .where(SearchTrial.search_id == search_id, Run.status.not_in([s.value for s in FINAL_STATUSES]))
    ).all()
    for run_id in active:
        try:
            runs.kill_run(session, run_id=run_id, viewer=viewer)
        except Conflict:  # it ended meanwhile, or is already being killed
            pass
    return search


def _end(session: Session, *, search_id: int, viewer: User, to: SearchStatus,
         sources: tuple[SearchStatus, ...]) -> Search:
    search = visible_search(session, search_id=search_id, viewer=viewer)
    ended = session.scalar(
        update(Search).where(Search.id == search_id, Search.status.in_([s.value for s in sources]))
        .values(status=to.value, finished_at=utcnow(), reason=f"{to.value} by {viewer.name}")
        .returning(Search.id).execution_options(synchronize_session=False)
    )
    if ended is None:
        session.refresh(search)
        raise SearchEnded(search_id, search.status, to.value)
    session.refresh(search)
    return search
