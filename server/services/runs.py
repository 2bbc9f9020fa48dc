"""Runs: creation, the status machine, reading, stop/kill and labels.

Every status change goes through `switch_status`: ONE conditional
`UPDATE runs ... WHERE status IN sources_of(new) [AND lease_token = ...]
RETURNING`, which also stores the transition with its time and writes the
stage lines a follower sees. What a worker does with a run (claims, heartbeats,
reports, the reaper) lives in `leases.py`, on top of this.

Like every service, these take the caller's Session and only flush; the
caller commits (see db.py).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import ColumnElement, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from cast.protocol.messages import LogStream, RunSpec
from cast.protocol.status import FINAL_STATUSES, MOUNTABLE_STATUSES, RunStatus, sources_of, stage_lines
from cast.protocol.validate import parse_resource
from cast.server import events
from cast.server.errors import BadRequest, InvalidTransition, LeaseLost, NotFound, RunNotFound
from cast.server.models import (
    CodeBundle,
    OutputFile,
    Run,
    RunLabel,
    RunMount,
    RunTransition,
    SearchTrial,
    Upload,
    UploadFile,
    User,
    utcnow,
)
from cast.server.schemas.runs import RunCreate
from cast.server.services import capacity, git, logs, reuse, unique
from cast.server.settings import Settings

S = RunStatus
_MOUNTABLE = [s.value for s in RunStatus if s in MOUNTABLE_STATUSES]
# "complete, failed or stopped", in the order of the status table.
_MOUNTABLE_TEXT = ", ".join(_MOUNTABLE[:-1]) + " or " + _MOUNTABLE[-1]


# --- reading ----------------------------------------------------------------

def visible_run(session: Session, *, run_id: int, viewer: User) -> Run:
    """The run, if it exists and `viewer` may see it (its owner or an admin)."""
    run = session.get(Run, run_id)
    if run is None or not (viewer.is_admin or run.owner_id == viewer.id):
        raise RunNotFound(run_id)
    return run


def describe(session: Session, runs: list[Run], *, with_transitions: bool) -> list[dict]:
    """The API view of `runs` (a few batched queries, not a few per run)."""
    ids = [run.id for run in runs]
    owners = dict(session.execute(select(User.id, User.name).where(User.id.in_({r.owner_id for r in runs}))).all())
    labels: dict[int, list[str]] = defaultdict(list)
    for run_id, label in session.execute(
        select(RunLabel.run_id, RunLabel.label).where(RunLabel.run_id.in_(ids)).order_by(RunLabel.label)
    ):
        labels[run_id].append(label)
    mounted_by: dict[int, list[int]] = defaultdict(list)
    for source, run_id in session.execute(
        select(RunMount.source_run_id, RunMount.run_id).where(RunMount.source_run_id.in_(ids))
        .distinct().order_by(RunMount.run_id)
    ):
        mounted_by[source].append(run_id)
    transitions: dict[int, list[dict]] = defaultdict(list)
    if with_transitions:
        for row in session.scalars(
            select(RunTransition).where(RunTransition.run_id.in_(ids)).order_by(RunTransition.id)
        ):
            transitions[row.run_id].append({"status": row.status, "at": row.at, "note": row.note})
    trials = {row.run_id: row for row in session.scalars(select(SearchTrial).where(SearchTrial.run_id.in_(ids)))}
    views = []
    for run in runs:
        view = {
            "id": run.id, "status": run.status, "owner": owners.get(run.owner_id, "?"),
            "spec": RunSpec.from_dict(run.spec),
            "labels": labels[run.id], "created_at": run.created_at, "started_at": run.started_at,
            "finished_at": run.finished_at, "exit_code": run.exit_code, "reason": run.reason,
            "attempt": run.attempt, "worker": run.worker_name, "executor": run.executor,
            "limits": run.limits, "mounted_by": mounted_by[run.id], "deleted_at": run.deleted_at,
        }
        if (trial := trials.get(run.id)) is not None:
            view.update(search_id=trial.search_id, trial=trial.number, search_params=trial.params)
        if with_transitions:
            view["transitions"] = transitions[run.id]
        views.append(view)
    return views


def _listed(*, viewer: User, statuses: list[RunStatus], label: str | None) -> list[ColumnElement]:
    """Which runs a listing holds: the viewer's (an admin: everyone's), filtered."""
    clauses = []
    if not viewer.is_admin:
        clauses.append(Run.owner_id == viewer.id)
    if statuses:
        clauses.append(Run.status.in_([s.value for s in statuses]))
    if label:
        clauses.append(Run.id.in_(select(RunLabel.run_id).where(RunLabel.label == label)))
    return clauses


def list_runs(
    session: Session, *, viewer: User, statuses: list[RunStatus], label: str | None, limit: int, before: int | None
) -> tuple[list[Run], int | None]:
    query = select(Run).where(*_listed(viewer=viewer, statuses=statuses, label=label))
    if before is not None:
        query = query.where(Run.id < before)
    runs = list(session.scalars(query.order_by(Run.id.desc()).limit(limit + 1)))
    if len(runs) > limit:
        return runs[:limit], runs[limit - 1].id
    return runs, None


def count_runs(session: Session, *, viewer: User, statuses: list[RunStatus], label: str | None) -> int:
    """How many runs the listing with these filters holds, over all its pages."""
    clauses = _listed(viewer=viewer, statuses=statuses, label=label)
    return session.scalar(select(func.count()).select_from(Run).where(*clauses))


# --- the status machine -----------------------------------------------------------

def switch_status(
    session: Session,
    *,
    run: int | ColumnElement,
    to: RunStatus,
    note: str | Callable[[Run], str | None] | None = None,
    lease_token: str | None = None,
    where: tuple[ColumnElement, ...] = (),
    values: dict | None = None,
    must: bool = True,
    via: tuple[tuple[RunStatus, str | None], ...] = (),
    current: RunStatus | None = None,
    ahead: logs.WorkerBatch | None = None,
) -> Run | None:
    """Move `run` (an id, or a scalar subquery choosing one) to `to` if the table allows it.

    `via` are statuses (each with its note) the run passes through first, in
    order, as a worker's batch of reports says: still one UPDATE, from a
    source of the first, and one INSERT each for their transitions and their
    stage lines. The path must hold in the table (`is_path`).

    Refusals raise RunNotFound, LeaseLost or InvalidTransition when `must`,
    else return None. `note` qualifies the stage that ended (it may be computed
    from the updated run: then it must return a non-empty text).

    Where the table allows one source only (the claim and a worker's reports
    but saving), the status it left is known before the UPDATE, and so the
    number of stage lines: that UPDATE also reserves their offsets in the log
    (`log_size`), which saves the append its own UPDATE of the run. So is
    `current`, the status a caller left the run in earlier in its transaction
    (whose row it has held since): the UPDATE then asks for that source alone.
    `ahead` is a worker's batch printed before the first of the steps: its
    rows go before the stage lines, its counters in the same UPDATE, which
    reserves their offsets where it reserves any.
    """
    steps = [*via, (to, note)]
    if not is_path([status for status, _ in steps]):
        raise ValueError(f"no path through the status table: {[str(status) for status, _ in steps]}")
    now = utcnow()
    rows = ahead.rows if ahead else []
    changes = dict(values or {}, **(ahead.counters if ahead else {}), status=to.value)
    if to in FINAL_STATUSES:
        changes.update(finished_at=now, lease_expires_at=None)
    if to is S.MACHINE_REQUESTED:  # a requeue: the next attempt starts from scratch
        changes.update(
            attempt=Run.attempt + 1, lease_token=None, lease_expires_at=None, worker_id=None,
            worker_name=None, executor=None, limits=None, started_at=None, finished_at=None, exit_code=None,
        )
    first = steps[0][0]
    sources = _SOURCES[first] if current is None else _SOURCES[first] & {current}
    previous = next(iter(sources)) if len(sources) == 1 else None
    reserved = 0
    if previous is not None:
        # The count of stage lines depends on whether there is a note, not on its text.
        reserved = sum(len(lines) for _, lines, _ in rows) + sum(
            len(stage_lines(before, status, None if step_note is None else "?"))
            for before, (status, step_note) in zip([previous, *(s for s, _ in steps)], steps))
        if reserved:
            changes["log_size"] = Run.log_size + reserved
    statement = (
        update(Run)
        .where(Run.id == run, Run.status.in_([source.value for source in sources]), *where)
        .values(**changes)
        .returning(Run)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if lease_token is not None:
        statement = statement.where(Run.lease_token == lease_token)
    updated = session.scalars(statement).one_or_none()
    if updated is None:
        if must and isinstance(run, int):
            _explain_refusal(session, run_id=run, to=first, lease_token=lease_token)
        return None
    if previous is None:  # several sources: the last transition recorded says which
        previous = RunStatus(session.scalar(
            select(RunTransition.status).where(RunTransition.run_id == updated.id)
            .order_by(RunTransition.id.desc()).limit(1)
        ))
    records, lines = [], []
    for status, step_note in steps:
        text = step_note(updated) if callable(step_note) else step_note
        records.append({"run_id": updated.id, "status": status.value, "at": now, "note": text})
        lines += stage_lines(previous, status, text)
        previous = status
    session.execute(_RECORD, records if len(records) > 1 else records[0])
    if reserved:
        logs.insert_chunks(session, run_id=updated.id, end=updated.log_size,
                           rows=[*rows, (LogStream.CAST.value, lines, now)] if lines else rows)
    else:
        logs.append(session, updated, [*rows, (LogStream.CAST.value, lines, now)])
    events.changed(session, events.run_key(updated.id))
    if to is S.MACHINE_REQUESTED:
        events.changed(session, events.queue_key(updated.gpus))
    # Flushed now so a following change in this transaction reads this one's transition.
    session.flush()
    return updated


def is_path(statuses: list[RunStatus]) -> bool:
    """Whether the table allows each of `statuses` to follow the one before."""
    return all(before in _SOURCES[after] for before, after in zip(statuses, statuses[1:]))


_SOURCES = {status: sources_of(status) for status in RunStatus}
# Built once: every status change runs it.
_RECORD = insert(RunTransition.__table__).values(
    run_id=bindparam("run_id"), status=bindparam("status"), at=bindparam("at"), note=bindparam("note"))


def _explain_refusal(session: Session, *, run_id: int, to: RunStatus, lease_token: str | None) -> None:
    current = session.get(Run, run_id, populate_existing=True)
    if current is None:
        raise RunNotFound(run_id)
    if lease_token is not None and current.lease_token != lease_token:
        raise LeaseLost(run_id)
    raise InvalidTransition(run_id, current.status, to.value)


# --- creating ---------------------------------------------------------------------

class Origin(enum.Enum):
    """Where the run a create answers comes from."""

    MADE = "made"  # a new run, made by this create
    SUBMITTED = "submitted"  # the one an earlier try of the same submit key made
    REUSED = "reused"  # an earlier complete run that did the same (`idempotent`)


def create_run(session: Session, *, owner: User, body: RunCreate, settings: Settings) -> tuple[Run, Origin]:
    """The new run, with its reuse key; or the run an earlier try of this
    submit made; or, when `body.idempotent` and an earlier complete run did
    the same, that run. The origin says which."""
    # Resolved before touching the database: ls-remote may take seconds and
    # must not hold the write lock.
    commit_sha = None
    if body.git_url:
        commit_sha = git.resolve_commit(body.git_url, body.commit_ref, timeout=settings.git_timeout_seconds,
                                        allow_local=settings.allow_local_git)
    spec = body.to_spec(commit_sha=commit_sha, code_digest=None)
    mount_rows = _check_mounts(session, spec=spec, viewer=owner)
    if spec.code_bundle:
        bundle = session.get(CodeBundle, (owner.id, spec.code_bundle))
        if bundle is None:
            raise BadRequest(f"code bundle {spec.code_bundle} is unknown; upload it first (PUT /api/v1/code/KEY)")
        spec.code_digest = bundle.digest
    key = reuse.reuse_key(session, spec)
    if body.submit_key:
        # A retried submit may reach another replica while the first try's insert is in flight.
        unique.lock_key(session, "submit", str(owner.id), body.submit_key)
    if body.submit_key and (made := reuse.find_submitted(session, key=key, owner=owner,
                                                         submit_key=body.submit_key)) is not None:
        return made, Origin.SUBMITTED
    if body.idempotent and (earlier := reuse.find_reusable(session, key=key, viewer=owner)) is not None:
        return earlier, Origin.REUSED
    waiting = capacity.check_runnable(session, spec=spec, settings=settings, queue_anyway=body.queue_anyway)
    stored = spec.to_dict()
    if body.submit_key:  # kept beside the spec (RunSpec.from_dict ignores it) for find_submitted
        stored[reuse.SUBMIT_KEY] = body.submit_key
    # A new run's waiting line is its log's first: its offset is reserved by the insert itself.
    run = Run(owner_id=owner.id, status=S.MACHINE_REQUESTED.value, spec=stored, gpus=spec.gpus,
              retries=spec.retries, attempt=1, created_at=utcnow(), reuse_key=key, log_size=1 if waiting else 0)
    session.add(run)
    session.flush()
    session.execute(_RECORD, {"run_id": run.id, "status": run.status, "at": run.created_at, "note": None})
    session.add_all(RunLabel(run_id=run.id, label=label) for label in body.labels)
    session.add_all(RunMount(run_id=run.id, position=i, **row) for i, row in enumerate(mount_rows))
    if waiting:
        logs.insert_chunks(session, run_id=run.id, end=1, rows=[(LogStream.CAST.value, [waiting], run.created_at)])
    events.changed(session, events.queue_key(run.gpus))
    session.flush()
    return run, Origin.MADE


def describe_made(run: Run, *, owner: User, labels: list[str]) -> dict:
    """`describe` of a run `create_run` just made (Origin.MADE), from what the
    create knows: no query (its labels are `labels`, its one transition its
    creation, no run mounts it yet and no search made it)."""
    return {
        "id": run.id, "status": run.status, "owner": owner.name, "spec": RunSpec.from_dict(run.spec),
        "labels": sorted(labels), "created_at": run.created_at, "started_at": None, "finished_at": None,
        "exit_code": None, "reason": None, "attempt": run.attempt, "worker": None, "executor": None,
        "limits": None, "mounted_by": [], "deleted_at": None,
        "transitions": [{"status": run.status, "at": run.created_at, "note": None}],
    }


def _check_mounts(session: Session, *, spec: RunSpec, viewer: User) -> list[dict]:
    rows = []
    for mount in spec.mounts:
        resource = parse_resource(mount.resource)
        source_run_id = None
        if resource.kind == "runs":
            source = session.get(Run, resource.run_id)
            if source is None or not (viewer.is_admin or source.owner_id == viewer.id):
                raise BadRequest(f"mount {resource}: run {resource.name} does not exist")
            if source.deleted_at is not None:
                raise BadRequest(f"mount {resource}: run {resource.name}'s outputs were deleted "
                                 f"at {source.deleted_at:%Y-%m-%d %H:%M:%S} UTC")
            if RunStatus(source.status) not in MOUNTABLE_STATUSES:
                raise BadRequest(
                    f"mount {resource}: run {resource.name} is {source.status}; only {_MOUNTABLE_TEXT} runs can be mounted"
                )
            if resource.subpath and manifest_kind(session, OutputFile, OutputFile.run_id == source.id, resource.subpath) is None:
                raise BadRequest(f"mount {resource}: run {resource.name} has no output {resource.subpath!r}")
            source_run_id = source.id
        else:
            upload = session.get(Upload, resource.name)
            if upload is None or not (viewer.is_admin or upload.owner_id == viewer.id):
                raise BadRequest(f"mount {resource}: upload {resource.name!r} does not exist")
            if upload.deleted_at is not None:
                raise BadRequest(f"mount {resource}: upload {resource.name!r} was deleted "
                                 f"at {upload.deleted_at:%Y-%m-%d %H:%M:%S} UTC")
            if resource.subpath and (
                upload.kind == "file"
                or manifest_kind(session, UploadFile, UploadFile.upload_name == upload.name, resource.subpath) is None
            ):
                raise BadRequest(f"mount {resource}: upload {resource.name!r} has no {resource.subpath!r}")
        rows.append({"resource": mount.resource, "path": mount.path, "source_run_id": source_run_id})
    return rows


def manifest_kind(session: Session, table, owner_clause, subpath: str) -> str | None:
    """'file' or 'dir' if `subpath` names a file or a folder of a manifest, else None."""
    if session.scalar(select(table.path).where(owner_clause, table.path == subpath)) is not None:
        return "file"
    prefix = subpath + "/"
    # `>=`: an empty folder of an output is a row of its own, its path ending in "/".
    inside = select(table.path).where(owner_clause, table.path >= prefix, table.path < prefix[:-1] + "0").limit(1)
    return "dir" if session.scalar(inside) is not None else None


# --- user actions -----------------------------------------------------------------

def stop_run(session: Session, *, run_id: int, viewer: User) -> Run:
    return _halt(session, run_id=run_id, viewer=viewer, queued_to=S.STOPPED, active_to=S.STOPPING)


def kill_run(session: Session, *, run_id: int, viewer: User) -> Run:
    return _halt(session, run_id=run_id, viewer=viewer, queued_to=S.KILLED, active_to=S.KILLING)


def _halt(session: Session, *, run_id: int, viewer: User, queued_to: RunStatus, active_to: RunStatus) -> Run:
    run = visible_run(session, run_id=run_id, viewer=viewer)
    # A queued run has nothing to wind down; it ends at once.
    target = queued_to if run.status == S.MACHINE_REQUESTED.value else active_to
    return switch_status(session, run=run_id, to=target, note=f"by {viewer.name}",
                         values={"reason": f"{queued_to.value} by {viewer.name}"})


def add_label(session: Session, *, run_id: int, viewer: User, label: str) -> Run:
    run = visible_run(session, run_id=run_id, viewer=viewer)
    if session.get(RunLabel, (run_id, label)) is None:
        unique.insert_once(session, RunLabel(run_id=run_id, label=label))  # or another request added it since
    events.changed(session, events.run_key(run_id))
    session.flush()
    return run


def remove_label(session: Session, *, run_id: int, viewer: User, label: str) -> Run:
    run = visible_run(session, run_id=run_id, viewer=viewer)
    existing = session.get(RunLabel, (run_id, label))
    if existing is None:
        raise NotFound(f"run {run_id} has no label {label!r}")
    session.delete(existing)
    session.flush()
    return run
