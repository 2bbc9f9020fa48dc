"""The one retry policy of the SDK and the worker: which answers are tried
again, the pauses (doubling, a Retry-After honoured within its bound), the
budget and the count of the same error answer."""

from __future__ import annotations

from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from cast.protocol.retries import MAX_RETRY_AFTER, Failure, RetryPolicy, classify, retry_after_seconds


@pytest.mark.parametrize("status, permanent, failure", [
    (408, False, Failure.OUTAGE), (429, False, Failure.OUTAGE),
    (502, False, Failure.OUTAGE), (503, False, Failure.OUTAGE), (504, False, Failure.OUTAGE),
    (503, True, Failure.OUTAGE),  # a balancer's 503 is an outage whatever a header says
    (500, False, Failure.ERROR), (507, False, Failure.ERROR),
    (500, True, Failure.FINAL), (507, True, Failure.FINAL),
    (400, False, Failure.FINAL), (403, False, Failure.FINAL), (404, False, Failure.FINAL), (409, False, Failure.FINAL),
])
def test_which_answers_are_tried_again(status, permanent, failure):
    assert classify(status, permanent=permanent) is failure


def test_retry_after_in_seconds_or_as_a_date_within_its_bound():
    now = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    at = lambda delta: format_datetime(now + timedelta(seconds=delta), usegmt=True)  # noqa: E731
    clock = now.timestamp
    assert retry_after_seconds("1") == 1.0 and retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds(at(5), now=clock) == 5.0
    assert retry_after_seconds(at(-5), now=clock) == 0.0  # a date gone by: no wait
    assert retry_after_seconds("86400") == MAX_RETRY_AFTER == retry_after_seconds(at(86400), now=clock)
    for unreadable in (None, "", "soon", "-3", "1.5", "Mon, 32 Foo 2026 99:00:00"):
        assert retry_after_seconds(unreadable) is None, unreadable


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pauses_double_up_to_the_most_and_a_retry_after_lengthens_one():
    attempts = RetryPolicy(first_delay=0.1, max_delay=0.5).attempts()
    pauses = [attempts.pause(Failure.OUTAGE) for _ in range(5)]
    assert pauses == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert attempts.pause(Failure.OUTAGE, retry_after=3.0) == 3.0  # the server asked for longer
    assert attempts.pause(Failure.OUTAGE, retry_after=0.01) == 0.5  # never shorter than the backoff


def test_the_budget_ends_the_tries_before_a_pause_would_pass_it():
    clock = Clock()
    attempts = RetryPolicy(first_delay=1.0, max_delay=4.0, budget=10.0).attempts(clock=clock)
    slept = []
    while (pause := attempts.pause(Failure.OUTAGE)) is not None:
        slept.append(pause)
        clock.now += pause
    assert slept == [1.0, 2.0, 4.0] and clock.now == 7.0  # a fourth pause (4 s) would end at 11 s
    assert RetryPolicy(first_delay=1.0, max_delay=1.0, budget=10.0).attempts(clock=clock).pause(
        Failure.OUTAGE, retry_after=20.0) is None  # a Retry-After past the budget: give up now


def test_the_same_error_answer_n_times_in_a_row_ends_the_tries_and_anything_between_restarts_the_count():
    policy = RetryPolicy(first_delay=0.0, max_delay=0.0, max_same_errors=3)
    attempts = policy.attempts()
    assert attempts.pause(Failure.ERROR, answer=(500, "x")) is not None
    assert attempts.pause(Failure.ERROR, answer=(500, "x")) is not None
    assert attempts.pause(Failure.OUTAGE) is not None  # an outage between: the count starts again
    assert attempts.pause(Failure.ERROR, answer=(500, "x")) is not None
    assert attempts.pause(Failure.ERROR, answer=(500, "y")) is not None  # another answer too
    assert attempts.pause(Failure.ERROR, answer=(500, "y")) is not None
    assert attempts.pause(Failure.ERROR, answer=(500, "y")) is None and attempts.repeats == 3
    # An outage never ends the tries without a budget, however long it lasts.
    outage = policy.attempts()
    assert all(outage.pause(Failure.OUTAGE) is not None for _ in range(1000))


def test_a_final_answer_is_never_tried_again():
    assert RetryPolicy(first_delay=0.1, max_delay=1.0).attempts().pause(Failure.FINAL) is None


def test_the_sdk_and_the_worker_answer_alike():
    """Both classify the same answers the same way: the SDK's ApiError and the
    worker's client take their verdict from the protocol's `classify`."""
    import httpx

    from cast.client.sdk import ApiError
    from cast.worker.client import Refused, ServerUnavailable, _check

    for status, headers in [(503, {"Retry-After": "2"}), (429, {}), (500, {}), (507, {"X-Cast-Permanent": "1"}),
                            (400, {})]:
        sdk = ApiError(status, "detail", permanent="X-Cast-Permanent" in headers,
                       retry_after=retry_after_seconds(headers.get("Retry-After")))
        try:
            _check(httpx.Response(status, headers=headers, json={"detail": "detail"}))
        except ServerUnavailable as exc:
            worker_failure, worker_retry_after = (Failure.ERROR if exc.answer else Failure.OUTAGE), exc.retry_after
        except Refused:
            worker_failure, worker_retry_after = Failure.FINAL, None
        assert sdk.failure is worker_failure, status
        assert sdk.retry_after == worker_retry_after, status
