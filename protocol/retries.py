"""The one retry policy of the CLI's SDK and the worker: which failures of a
request to the control plane are worth another try, how long to pause
between tries, and when to give up.

Worth another try: a connection that could not be made or broke, and the
answers that mean "not now" rather than "never": 408 and 429 (busy), 502,
503 and 504 (`OUTAGE_STATUSES`: a server restarting, a balancer whose
replica died, a database away: the server says so with Retry-After), and any
other 5xx the server did not mark permanent (`X-Cast-Permanent: 1`, a full
disk say). Every other answer is final. An outage is tried through however
often it repeats; another 5xx answered the same `max_same_errors` times in a
row is deterministic (a bug, a name the server cannot store), not an outage,
and ends the tries.

Pauses double from `first_delay` up to `max_delay`; a server's Retry-After
(seconds, or an HTTP date) lengthens a pause, never beyond
MAX_RETRY_AFTER. With a `budget`, no try starts past that many seconds from
the first; without one the caller decides when to stop (the worker's outbox
tries until its lease is lost).

Who says what: `classify` turns an answer's status into a `Failure` kind; the
caller keeps one `Attempts` per request and asks it for each pause.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Answers of a server or balancer that is away for now, however often they repeat.
OUTAGE_STATUSES = frozenset({502, 503, 504})
# 4xx answers that mean "not now" rather than "never".
BUSY_STATUSES = frozenset({408, 429})
# The longest pause a Retry-After may ask for (a larger one is taken as this).
MAX_RETRY_AFTER = 30.0


class Failure(enum.Enum):
    """What a failed try says about the next one."""

    OUTAGE = "outage"  # no connection, a lost one, 408, 429, 502-504: try again, however often
    ERROR = "error"  # another 5xx: try again, unless it is the same answer `max_same_errors` times in a row
    FINAL = "final"  # any other answer, or a 5xx marked permanent: another try cannot help


def classify(status: int, *, permanent: bool = False) -> Failure:
    """The kind of failure an error answer (status 400 and up) is."""
    if status in BUSY_STATUSES or status in OUTAGE_STATUSES:
        return Failure.OUTAGE
    if status >= 500 and not permanent:
        return Failure.ERROR
    return Failure.FINAL


def retry_after_seconds(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """A Retry-After header's pause in seconds (0 to MAX_RETRY_AFTER), or None
    when there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        import email.utils  # only here: the CLI's start-up imports this module, and rarely needs a date

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is not one
            return None
        seconds = when.timestamp() - now()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float
    max_delay: float
    # Seconds from the first try past which no try starts; None: until the caller stops.
    budget: float | None = None
    # The same ERROR answer this many times in a row ends the tries; None: never.
    max_same_errors: int | None = None

    def attempts(self, *, clock: Callable[[], float] = time.monotonic) -> "Attempts":
        """The state of one request's tries, started now."""
        return Attempts(self, clock)


@dataclass
class Attempts:
    """One request's tries under a policy: `pause` after each failure."""

    policy: RetryPolicy
    clock: Callable[[], float]
    started: float = field(init=False)
    repeats: int = field(init=False, default=0)  # the last ERROR answer, this many times in a row
    _delay: float = field(init=False)
    _last: object = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._delay = self.policy.first_delay

    def pause(self, failure: Failure, *, answer: object = None, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next try after `failure`, or None to give
        up: the failure is FINAL, the budget would be passed, or `answer` (what
        tells one ERROR answer from another: its status and detail) came
        `max_same_errors` times in a row. An outage between breaks a run of
        the same answers."""
        if failure is Failure.FINAL:
            return None
        if failure is Failure.ERROR:
            self.repeats = self.repeats + 1 if answer == self._last else 1
            self._last = answer
            if self.policy.max_same_errors is not None and self.repeats >= self.policy.max_same_errors:
                return None
        else:
            self.repeats, self._last = 0, None
        delay = max(self._delay, retry_after or 0.0)
        self._delay = min(self._delay * 2, self.policy.max_delay)
        if self.policy.budget is not None and self.clock() + delay - self.started > self.policy.budget:
            return None
        return delay
