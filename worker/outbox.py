"""One run's ordered outbox: everything the worker tells the server about a run.

Log lines, status changes and the output push are queued in the order they
happen and delivered by one sender thread in that order, so a follower sees
"Run is running", then the job's lines, then "Saving… done". Metric points
(cast.worker.metrics) travel in the same queue, in batches of their own with
their own `seq` counter, under the same rules. Log lines join the run of
lines at the queue's end while it is of their stream and younger than a
second (`cast.protocol.logs.LogRun`: the server stores a run as one chunk),
and go in batches of runs (a line waits LINGER seconds for company, and while
lines flow until GAP after the last batch's send, FLOOD_GAP while they pour:
a few large batches a second; a batch stays far below the server's body cap
however long its lines) carrying the API's
`seq` counter (lines sent before), so a batch retried after a lost answer is
stored once. A line longer than MAX_LINE_CHARS is split into several here,
whatever wrote it, so nothing is lost.

Status changes queued by the time the sender looks go in one request,
applied by the server in order in one transaction, each carrying the log
lines queued before it (a short run's statuses, lines and outcome: one
request); one queued with a `linger` waits that long for company, and the
lines behind it wait with it. A retried batch is recorded once, as a lone
report is: each report the table refuses (already applied by the lost try)
is skipped, and its lines are stored from their `seq`. While the server is
unreachable or answers 5xx, the sender keeps retrying the same item with
backoff: the run goes on, the outbox buffers, and the server receives
everything, in order, exactly once when it returns.

What the server refuses for good (a 4xx other than 408/409/429, a 5xx it marks
permanent, the same 5xx answer `max_same_errors` times in a row) is never
retried forever: a refused output push is recorded in `outputs_refused`, so
the run fails with that reason instead of ending as if it were saved; any
other refused report calls `on_refused` with the reason, and the run's owner
ends it `failed`. Either way the run's log names the request and the answer.

A kill must not wait behind a push that blocks (a slow server, a file the tar
cannot read): `drop_pending_results` detaches an output push in flight, and a
fresh sender carries on with what follows in the queue; the old sender's
answer, whenever it comes, is ignored.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from cast.protocol.logs import MAX_BATCH_LINES, LogBatch, LogRun, split_line, split_lines
from cast.protocol.messages import LogStream
from cast.protocol.worker_messages import MAX_REASON_LENGTH, MAX_STATUS_BATCH, StatusReport
from cast.protocol.metrics import MAX_BATCH as MAX_POINT_BATCH
from cast.protocol.metrics import MetricPoint
from cast.protocol.status import RunStatus
from cast.worker.client import Conflict, Refused, ServerClient, with_retries

log = logging.getLogger(__name__)

LINGER = 0.02  # seconds a log line may wait for others to share its batch
# Seconds from one log batch's send to the next one's while lines flow: a run
# printing without pause sends a few large batches a second, not one per
# round trip (each request and each follower's read costs the server the same
# whatever it holds); a line still reaches the server within about GAP.
GAP = 0.04
# While lines pour (the last batch held FLOOD_LINES or more), the gap is
# FLOOD_GAP instead: a run printing a million lines makes a few appends and
# follower reads a second, each costing the server about the same whatever it
# holds, while a line printed now and then still leaves within GAP.
FLOOD_LINES = 1000
FLOOD_GAP = 0.1
RUN_SPAN = 1.0  # seconds from a run's first line past which a line starts a new run
MAX_BATCH = MAX_BATCH_LINES  # log lines per request
# Characters of log text per request: far below the server's JSON body cap
# even when escaping makes each character six bytes (lines are at most 64 KiB).
MAX_BATCH_CHARS = 1 << 20
# Past this many unsent lines or characters the job's output waits (its pipe
# fills, so it blocks on its next print) instead of the worker's memory
# growing without bound.
MAX_PENDING_LINES = 50_000
MAX_PENDING_CHARS = 64 << 20
MAX_PENDING_POINTS = 100_000  # past this the metrics reader waits (the run's file keeps them)


def _clip(text: str | None) -> str | None:
    """A note or reason cut to what the server keeps; its end says most (the
    last lines of a failed build)."""
    if text is None or len(text) <= MAX_REASON_LENGTH:
        return text
    return "…" + text[-(MAX_REASON_LENGTH - 1):]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class _LogRun:
    """Lines of one stream queued within RUN_SPAN of the first (whose time it keeps)."""

    stream: LogStream
    lines: list[str]
    chars: int
    time: str
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class _Point:
    point: MetricPoint
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class _StatusChange:
    status: RunStatus
    note: str | None
    exit_code: int | None
    reason: str | None
    limits: str | None
    due: float  # when it goes even alone (monotonic); a status queued behind it sends it at once


@dataclass
class _OutputPush:
    send: Callable[[ServerClient, int, str], object]  # called again for each attempt


class Outbox:
    """`on_conflict` is called when the server answers 409; it returns True when the
    lease is still held (the refused item is skipped) and False when it is lost
    (the outbox gives up on everything). `on_refused(reason)` is called when
    the server refuses a log batch or a status report for good."""

    def __init__(self, client: ServerClient, run_id: int, lease_token: str,
                 on_conflict: Callable[[], bool], on_refused: Callable[[str], None]):
        self._client = client
        self._run_id = run_id
        self._token = lease_token
        self._on_conflict = on_conflict
        self._on_refused = on_refused
        self._items: list = []
        self._in_flight = 0  # items at the head of _items being delivered now
        self._log_sent_at = float("-inf")  # when the last log batch was taken to send (monotonic)
        self._log_sent_lines = 0  # how many lines it held
        self._entries_sent = 0  # the API's `seq`
        self._points_sent = 0  # the metrics API's `seq`
        self._pending_points = 0
        self._pending_lines = 0
        self._pending_chars = 0
        self._truncated = False  # the server keeps no more stdout/stderr lines of this run
        # Why the server refused the output push for good (over its size cap, say).
        self.outputs_refused: str | None = None
        self._abandoned = False
        self._closed = False
        # The producers' hot path enters the lock itself (in C), not the Condition's Python wrapper.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Bumped when an output push in flight is detached: a sender of an
        # older generation leaves the queue alone once its call returns.
        self._generation = 0
        self._thread = self._start_sender()

    def _start_sender(self) -> threading.Thread:
        thread = threading.Thread(target=self._send_loop, args=(self._generation,),
                                  name=f"outbox-{self._run_id}", daemon=True)
        thread.start()
        return thread

    # --- producers --------------------------------------------------------

    def log(self, stream: LogStream, text: str) -> None:
        """Queue one line (a note of the worker's, a build's line)."""
        self.log_lines(stream, [text])

    def log_lines(self, stream: LogStream, lines: list[str]) -> None:
        """Queue lines of one stream in their order, in one step (a line
        reader's read: thousands of lines cost about what one does). Past the
        pending bounds the caller waits before queueing them, so the bounds
        are overshot by one call's lines at most."""
        with self._lock:
            if self._truncated and stream is not LogStream.CAST:
                return
            if self._pending_lines >= MAX_PENDING_LINES or self._pending_chars >= MAX_PENDING_CHARS:
                self._cond.wait_for(lambda: (self._pending_lines < MAX_PENDING_LINES
                                             and self._pending_chars < MAX_PENDING_CHARS)
                                    or self._abandoned or self._closed)
            if self._abandoned or self._closed:
                return
            self._add_lines(stream, split_lines(lines))

    def _add_lines(self, stream: LogStream, lines: list[str]) -> None:
        """Queue lines (none longer than MAX_LINE_CHARS) on the last run while
        it may take them, the rest on new runs; under the lock.

        Only a new run wakes the sender: lines joining a run change nothing it
        waits for (its linger is timed), and a wake-up per line cost the
        worker more than the line itself. A run takes a slice of the lines at
        once; only where the characters bound falls inside the slice are they
        counted one by one."""
        items = self._items
        now = time.monotonic()
        start, end = 0, len(lines)
        full = False  # the last run takes no more of these lines
        while start < end:
            last = items[-1] if len(items) > self._in_flight else None
            if full or not (type(last) is _LogRun and last.stream is stream and now - last.queued_at < RUN_SPAN
                            and len(last.lines) < MAX_BATCH):
                last = _LogRun(stream, [], 0, utc_now())
                items.append(last)
                self._cond.notify_all()
                full = False
            stop = min(end, start + MAX_BATCH - len(last.lines))
            size = sum(map(len, lines[start:stop]))
            if last.chars + size > MAX_BATCH_CHARS:
                stop, size = start, 0
                while stop < end and last.chars + size + len(lines[stop]) <= MAX_BATCH_CHARS:
                    size += len(lines[stop])
                    stop += 1
                if stop == start:  # the next line does not fit: a new run takes it, alone if need be
                    if last.lines:
                        full = True
                        continue
                    stop, size = start + 1, len(lines[start])
            last.lines += lines if stop - start == end else lines[start:stop]
            last.chars += size
            self._pending_lines += stop - start
            self._pending_chars += size
            start = stop

    def metrics(self, points: list[MetricPoint]) -> None:
        """Queue points (already checked) behind what was queued before them."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending_points < MAX_PENDING_POINTS
                                or self._abandoned or self._closed)
            if self._abandoned or self._closed:
                return
            self._pending_points += len(points)
            self._items.extend(_Point(point) for point in points)
            self._cond.notify_all()

    def status(self, status: RunStatus, *, note: str | None = None, exit_code: int | None = None,
               reason: str | None = None, limits: str | None = None, linger: float = 0.0) -> None:
        """Queue a status change; it waits up to `linger` seconds for the next
        one to share its request (anything else queued behind it ends the wait)."""
        self._put(_StatusChange(status, _clip(note), exit_code, _clip(reason), _clip(limits),
                                due=time.monotonic() + linger))

    def push_outputs(self, send: Callable[[ServerClient, int, str], object]) -> None:
        self._put(_OutputPush(send))

    def _put(self, item) -> None:
        with self._cond:
            if self._abandoned or self._closed:
                return
            self._items.append(item)
            self._cond.notify_all()

    def drop_pending_results(self) -> None:
        """Forget queued status changes and output pushes (a kill overrides them),
        the push being sent included; log lines and metric points stay."""
        with self._cond:
            head, rest = self._items[: self._in_flight], self._items[self._in_flight:]
            if head and isinstance(head[0], _OutputPush) and not self._abandoned:
                log.info("run %s: the output push in flight is dropped", self._run_id)
                head, self._in_flight = [], 0
                self._generation += 1
                self._thread = self._start_sender()
            self._items = head + [item for item in rest if isinstance(item, (_LogRun, _Point))]
            self._cond.notify_all()

    # --- the run's end ----------------------------------------------------

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def wait_delivered(self, timeout: float | None = None) -> bool:
        """True once everything queued so far was delivered (or given up)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._abandoned or not self._items, timeout)

    def abandon(self) -> None:
        """Give up: the lease is lost, nothing more may be sent."""
        with self._cond:
            self._abandoned = True
            self._items.clear()
            self._pending_lines = self._pending_chars = self._pending_points = 0
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the sender once the queue is empty. A detached sender, or one of
        an abandoned outbox, is not waited for: its call may block for long, and
        it leaves the queue alone once it returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = None if self._abandoned else self._thread
        if thread is not None:
            thread.join()

    # --- the sender -------------------------------------------------------

    def _next_batch(self, generation: int) -> list | None:
        """Wait for the next thing to send: status changes with the log lines
        queued between them, one output push, or a run of log lines or of
        metric points. None when the outbox is finished (or this sender was
        replaced)."""
        with self._cond:
            while True:
                if self._abandoned or (self._closed and not self._items) or generation != self._generation:
                    return None
                if not self._items:
                    self._cond.wait()
                    continue
                head = self._items[0]
                if not isinstance(head, (_LogRun, _Point, _StatusChange)):
                    self._in_flight = 1
                    return [head]
                batch = self._points() if isinstance(head, _Point) else self._report()
                if batch is not _WAITED:
                    self._in_flight = len(batch)
                    return batch

    def _report(self) -> list | object:
        """Every status change queued by now, with the log lines queued
        between them, up to the last status, in one request (a run passes
        several statuses in milliseconds; a short run's whole life is one
        request). While they are all that is queued and one of them lingers,
        they wait for company (`_WAITED` after the wait), but log lines at
        the head go at once; lines alone, as `_lines` says. Called under the
        lock."""
        walked, count, chars, statuses, last = [], 0, 0, 0, -1
        for item in self._items:
            if isinstance(item, _LogRun):
                if count + len(item.lines) > MAX_BATCH or chars + item.chars > MAX_BATCH_CHARS:
                    if walked:
                        break
                count += len(item.lines)
                chars += item.chars
            elif isinstance(item, _StatusChange):
                statuses += 1
                last = len(walked)
            else:
                break
            walked.append(item)
            if statuses == MAX_STATUS_BATCH:
                break
        if last < 0:
            return self._lines(walked, count)
        batch = walked[:last + 1]
        remaining = min(item.due for item in batch if isinstance(item, _StatusChange)) - time.monotonic()
        if len(walked) == len(self._items) and remaining > 0 and not self._closed:
            if isinstance(self._items[0], _LogRun):  # the lines ahead do not wait for them
                return self._lines(list(itertools.takewhile(lambda item: isinstance(item, _LogRun), batch)), None)
            self._cond.wait(remaining)
            return _WAITED
        self._lines_sent([item for item in batch if isinstance(item, _LogRun)])
        return batch

    def _lines_sent(self, runs: list) -> None:
        """Note when `runs` left, and how many lines they held: the next batch of lines keeps its gap."""
        if runs:
            self._log_sent_at, self._log_sent_lines = time.monotonic(), sum(len(run.lines) for run in runs)

    def _lines(self, runs: list, count: int | None) -> list | object:
        """`runs`, the log lines at the head, as a batch; `_WAITED` after
        lingering for company (a line waits LINGER for others while nothing
        else is queued, and lines follow a batch by GAP, FLOOD_GAP while they
        pour). `count` None: send them now."""
        if count is not None:
            only_lines = len(runs) == len(self._items) and count < MAX_BATCH
            due = max(runs[0].queued_at + LINGER,
                      self._log_sent_at + (FLOOD_GAP if self._log_sent_lines >= FLOOD_LINES else GAP))
            remaining = due - time.monotonic()
            if only_lines and remaining > 0 and not self._closed:
                self._cond.wait(remaining)
                return _WAITED
        self._lines_sent(runs)
        return runs

    def _points(self) -> list | object:
        """The metric points at the head, as a batch (or `_WAITED`, as `_lines`)."""
        points = list(itertools.takewhile(lambda item: isinstance(item, _Point),
                                          self._items[:MAX_POINT_BATCH]))
        only_points = len(points) == len(self._items) and len(points) < MAX_POINT_BATCH
        remaining = points[0].queued_at + LINGER - time.monotonic()
        if only_points and remaining > 0 and not self._closed:
            self._cond.wait(remaining)
            return _WAITED
        return points

    def _send_loop(self, generation: int) -> None:
        while (batch := self._next_batch(generation)) is not None:
            delivered = False
            refused = None
            try:
                with_retries(lambda: self._deliver(batch),
                             should_continue=lambda: not self._abandoned and generation == self._generation,
                             max_same_errors=self._client.max_same_errors)
                delivered = True
            except Conflict as exc:
                # Answered with statuses refused: what came with them was stored.
                delivered = isinstance(exc, _Overtaken)
                if generation != self._generation:
                    return
                if not self._on_conflict():
                    log.warning("run %s: lease lost (%s); dropping what was not sent", self._run_id, exc)
                    self.abandon()
                else:
                    log.info("run %s: server refused %s: %s", self._run_id, _describe(batch), exc)
            except Refused as exc:
                if generation != self._generation:
                    return
                refused = exc
            except Exception:  # the sender must outlive any one bad item
                if generation != self._generation:
                    return
                if not self._abandoned:
                    log.exception("run %s: could not deliver %s", self._run_id, _describe(batch))
            if refused is not None:  # before the item leaves the queue: a waiter reads the outcome
                self._refused_for_good(batch, refused)
            with self._cond:
                if generation != self._generation:
                    return  # detached while its call ran: the queue is the new sender's
                runs = [item for item in batch if isinstance(item, _LogRun)]
                if runs:
                    count = sum(len(run.lines) for run in runs)
                    # A refused batch was not stored, so it does not count for `seq`.
                    if delivered:
                        self._entries_sent += count
                    if not self._abandoned:
                        self._pending_lines -= count
                        self._pending_chars -= sum(run.chars for run in runs)
                elif isinstance(batch[0], _Point):
                    if delivered:
                        self._points_sent += len(batch)
                    if not self._abandoned:
                        self._pending_points -= len(batch)
                del self._items[: self._in_flight]
                self._in_flight = 0
                self._cond.notify_all()

    def _refused_for_good(self, batch: list, exc: Refused) -> None:
        """Say which request failed and why, in the run's log unless the log
        itself was refused; then fail the run (a refused push is the run
        owner's to report, with its exit code)."""
        what = _describe(batch)
        log.error("run %s: server refused %s for good: %s", self._run_id, what, exc)
        if not isinstance(batch[0], _LogRun):
            self._note(f"The server refused {what} (HTTP {exc.status_code}): {exc.detail}")
        if isinstance(batch[0], _OutputPush):
            self.outputs_refused = exc.detail
        else:
            self._on_refused(f"the server refused {what}: {exc.detail}")

    def _note(self, text: str) -> None:
        """A `cast` line for the run's log, queued without waiting for room (the
        sender itself calls this, and only it makes room)."""
        with self._cond:
            if self._abandoned:
                return
            self._add_lines(LogStream.CAST, split_line(text))

    def _deliver(self, batch: list) -> None:
        first = batch[0]
        changes = [item for item in batch if isinstance(item, _StatusChange)]
        if changes:
            # Each status carries the lines queued before it, from the `seq` they start at.
            lines_before, runs, seq = [], [], self._entries_sent
            for item in batch:
                if isinstance(item, _LogRun):
                    runs.append(LogRun(item.stream, item.lines, item.time))
                    continue
                lines_before.append(LogBatch(self._token, seq, runs) if runs else None)
                seq += sum(len(run.lines) for run in runs)
                runs = []
            answer = self._client.report_statuses(self._run_id, self._token, [StatusReport(
                lease_token=self._token, status=change.status, note=change.note,
                exit_code=change.exit_code, reason=change.reason, limits=change.limits) for change in changes],
                lines_before=lines_before)
            if answer.log_truncated:
                self._truncated = True
            if answer.refused:  # the rest were applied: the sender handles it as a lone report's 409
                refused = ", ".join(f"'{changes[index].status}'" for index in answer.refused)
                raise _Overtaken(f"the server has run {self._run_id} {answer.status}; it refused {refused}")
        elif isinstance(first, _LogRun):
            # Runs in flight take no more lines (see _add_lines): what is sent is what is counted.
            answer = self._client.append_logs(self._run_id, self._token, seq=self._entries_sent, runs=[
                LogRun(run.stream, run.lines, run.time) for run in batch
            ])
            if answer.get("truncated"):
                self._truncated = True
        elif isinstance(first, _Point):
            self._client.append_metrics(self._run_id, self._token, seq=self._points_sent,
                                        points=[item.point for item in batch])
        else:
            first.send(self._client, self._run_id, self._token)


_WAITED = object()  # a batch's answer after waiting for company: look at the queue again


class _Overtaken(Conflict):
    """A report was answered, but the transition table refused some of its
    statuses (a stop or kill overtook them, or an earlier try applied them)."""


def _describe(batch: list) -> str:
    """The request that carries `batch`, as the run's log names it."""
    first = batch[0]
    if isinstance(first, _Point):
        return f"a batch of {len(batch)} metric points"
    if isinstance(first, _OutputPush):
        return "the output push"
    changes = [item for item in batch if isinstance(item, _StatusChange)]
    lines = f"a batch of {sum(len(run.lines) for run in batch if isinstance(run, _LogRun))} log lines"
    if not changes:
        return lines
    statuses = ", ".join(f"'{change.status}'" for change in changes)
    reports = f"the {statuses} status report{'s' if len(changes) > 1 else ''}"
    return f"{lines} and {reports}" if any(isinstance(item, _LogRun) for item in batch) else reports
