"""A worker's batches of a run's append-only records (log lines, metric points):
the lease check and the `seq` deduplication, one rule for both.

A batch carries `seq`, the number of records the worker sent before it (of
this kind, in this attempt), and the run keeps a high-water mark per kind. A
batch retried after a lost answer starts below the mark: its first
`mark - seq` records were stored already and are skipped, so every record is
stored exactly once however often the worker retries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from cast.protocol.status import LEASED_STATUSES, RunStatus
from cast.server.errors import LeaseLost, RunNotFound
from cast.server.models import Run

log = logging.getLogger(__name__)


def held_run(session: Session, *, run_id: int, lease_token: str, leased: bool = True,
             columns: Iterable[str] = ()) -> Run:
    """The run if `lease_token` is its lease's, and with `leased` if it is
    still leased, else RunNotFound or LeaseLost: the one check of every call a
    worker makes on a run. `columns` names the only columns to load (the rest
    load when first read): a batch needs a few counters, not the spec."""
    query = select(Run).where(Run.id == run_id)
    if columns:
        query = query.options(load_only(*(getattr(Run, name) for name in ("lease_token", "status", *columns))))
    run = session.scalars(query).first()
    if run is None:
        raise RunNotFound(run_id)
    if run.lease_token != lease_token or (leased and RunStatus(run.status) not in LEASED_STATUSES):
        raise LeaseLost(run_id)
    return run


def admit(session: Session, *, run_id: int, lease_token: str, seq: int, count: int, mark: str,
          columns: Iterable[str] = (), held: Run | None = None) -> tuple[Run, int]:
    """The run and how many of the batch's `count` records to skip (stored
    before); `mark` names the run's high-water column (`worker_log_seq`,
    `worker_metric_seq`), moved past this batch; `columns`, the others the
    caller reads. The lease's token must match; the run may have ended since
    (its last records may come after its final report). `held` is the run as
    the caller's own UPDATE returned it in this transaction, whose row it
    holds: read no more."""
    if held is not None and held.id == run_id:
        if held.lease_token != lease_token:
            raise LeaseLost(run_id)
        run = held
    else:
        run = held_run(session, run_id=run_id, lease_token=lease_token, leased=False, columns=(mark, *columns))
    stored = getattr(run, mark)
    if seq > stored:
        log.warning("run %s: worker batch (%s) starts at %s, expected %s", run_id, mark, seq, stored)
    setattr(run, mark, max(stored, seq + count))
    return run, min(count, max(0, stored - seq))
