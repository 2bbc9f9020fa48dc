"""A command's output stream (bytes) as log lines: the one line reader of both
executors (a local run's pipes, a container's attach stream) and of image builds.

Lines end at `\\n` (a `\\r\\n` ending counts as `\\n`); invalid UTF-8 is
replaced. A line rewritten in place with `\\r` (a progress bar) is logged as
its states, not as every rewrite: a state (the text before or after a `\\r`)
is kept when at least PROGRESS_INTERVAL seconds passed since the last state
kept of that line, and the line's final state (at its `\\n` or the stream's
end) is always kept, never twice in a row. A bar updated 100,000 times in a
minute becomes about 120 lines, the last one its end. A bar that stops
updating is not left unseen until its line ends: a timer keeps its latest
state once it is due (a training loop's bar that stalls shows where it
stalled). A line with no end is never held whole: past MAX_PARTIAL characters
its start is logged (the outbox splits it to the server's line length), so a
stream without newlines cannot fill memory.

Lines go out in lists, every line one read completed in one call (the
outbox queues them in one step): a run printing a million lines costs the
worker a few hundred calls, not a million.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable

from cast.protocol.logs import MAX_LINE_CHARS

Emit = Callable[[list[str]], None]  # takes the lines (never empty) in their order

PROGRESS_INTERVAL = 0.5
# Seconds a held state waits at least before the timer keeps it: a bar written
# in several writes is seen whole.
STALL = 0.05
MAX_PARTIAL = MAX_LINE_CHARS


class LineReader:
    """Bytes in (`feed`, then `close`), complete lines out to `emit`, for one
    stream: one call per `feed` that completed any, with all of them.

    With `timer` (the default), a rewritten line's latest state is also kept
    by a timer thread when no data comes (`emit` is then called from it, never
    at once with a `feed`'s); a test with its own `clock` turns it off."""

    def __init__(self, emit: Emit, *, clock: Callable[[], float] = time.monotonic, timer: bool = True):
        self._emit = emit
        self._out: list[str] = []  # the lines of the call under way, emitted together at its end
        self._clock = clock
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The line being written: its latest state only, ending in "\r" when
        # that state is complete and not yet kept ("50%\r").
        self._partial = ""
        self._rewritten = False  # the line being written had a "\r"
        self._kept: str | None = None  # the line's last state kept
        self._kept_at = float("-inf")  # when it was kept
        self._lock = threading.Lock()
        self._use_timer = timer
        self._timer: threading.Timer | None = None
        self._closed = False

    def feed(self, data: bytes) -> None:
        with self._lock:
            text = self._partial + self._decoder.decode(data)
            *complete, self._partial = text.split("\n")
            out = self._out
            if "\r" not in text:
                if complete and self._rewritten:  # the end of a line whose state the timer kept
                    self._end(complete[0])
                    complete = complete[1:]
                if out:
                    out += complete
                else:  # the common case: the split's own list goes out as it is
                    self._out = out = complete
            else:
                for line in complete:
                    if "\r" in line or self._rewritten:
                        self._end(self._progress(line.removesuffix("\r"), final=True))
                    else:
                        out.append(line)
            if "\r" in self._partial:
                self._rewritten = True
                self._partial = self._progress(self._partial, final=False)
            while len(self._partial) > MAX_PARTIAL:
                self._out.append(self._partial[:MAX_PARTIAL])
                self._partial = self._partial[MAX_PARTIAL:]
            if self._rewritten and self._use_timer and self._timer is None and self._held():
                self._start_timer()
            self._flush()

    def _flush(self) -> None:
        """Emit the lines this call completed, in one call; under the lock."""
        if self._out:
            lines, self._out = self._out, []
            self._emit(lines)

    def _end(self, line: str) -> None:
        """A rewritten line's final state: kept unless it is the state kept last."""
        if line != self._kept:
            self._out.append(line)
        self._rewritten, self._kept, self._kept_at = False, None, float("-inf")

    def _keep(self, state: str, now: float) -> None:
        self._out.append(state)
        self._kept, self._kept_at = state, now

    def _progress(self, line: str, *, final: bool) -> str:
        """The states of a rewritten line: the one due emitted, the last one
        returned (the final state when `final`, else the one being written, or
        the latest complete one with its "\\r" when none is being written)."""
        *states, last = line.split("\r")
        if final and not last:  # "50%\r" then "\n": the bar's last state stands
            last = next((state for state in reversed(states) if state), "")
            states = states[:len(states) - 1 - states[::-1].index(last)] if last else []
        state = next((state for state in reversed(states) if state), None)
        now = self._clock()
        if state is not None and state != self._kept and now - self._kept_at >= PROGRESS_INTERVAL:
            self._keep(state, now)
        if not final and not last and state is not None and state != self._kept:
            return state + "\r"
        return last

    def _held(self) -> str:
        """The state of the line being rewritten not kept yet ("" when none)."""
        state = self._partial.removesuffix("\r")
        return state if state and "\r" not in state and state != self._kept else ""

    def _start_timer(self) -> None:
        delay = max(STALL, self._kept_at + PROGRESS_INTERVAL - self._clock())
        self._timer = threading.Timer(delay, self._tick)
        self._timer.daemon = True
        self._timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or not self._rewritten or not (state := self._held()):
                return
            now = self._clock()
            if now - self._kept_at >= PROGRESS_INTERVAL:
                self._keep(state, now)
                self._flush()
            else:
                self._start_timer()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            text = self._partial + self._decoder.decode(b"", final=True)
            self._partial = ""
            if "\r" in text or self._rewritten:
                text = self._progress(text.removesuffix("\r"), final=True)
                if text and text != self._kept:
                    self._out.append(text)
                self._rewritten, self._kept, self._kept_at = False, None, float("-inf")
            elif text:
                self._out.append(text)
            self._flush()
