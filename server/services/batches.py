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

from sqlalchemy.orm import Session

from cast.server.errors import LeaseLost, RunNotFound
from cast.server.models import Run

log = logging.getLogger(__name__)


def admit(session: Session, *, run_id: int, lease_token: str, seq: int, count: int, mark: str) -> tuple[Run, int]:
    """The leased run and how many of the batch's `count` records to skip (stored
    before); `mark` names the run's high-water column (`worker_log_seq`,
    `worker_metric_seq`), moved past this batch."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    if run.lease_token != lease_token:
        raise LeaseLost(run_id)
    stored = getattr(run, mark)
    if seq > stored:
        log.warning("run %s: worker batch (%s) starts at %s, expected %s", run_id, mark, seq, stored)
    setattr(run, mark, max(stored, seq + count))
    return run, min(count, max(0, stored - seq))
