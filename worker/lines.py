"""A command's output stream (bytes) as log lines: the one line reader of both
executors (a local run's pipes, a container's attach stream) and of image builds.

Lines end at `\\n` (a `\\r\\n` ending counts as `\\n`); invalid UTF-8 is
replaced. A line rewritten in place with `\\r` (a progress bar) is logged as
its states, not as every rewrite: a state (the text before a `\\r`) is kept
when at least PROGRESS_INTERVAL seconds passed since the last state kept of
that line, and the line's final state (at its `\\n` or the stream's end) is
always kept. A bar updated 100,000 times in a minute becomes about 120 lines,
the last one its end. A line with no end is never held whole: past
MAX_PARTIAL characters its start is logged (the outbox splits it to the
server's line length), so a stream without newlines cannot fill memory.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable

from cast.protocol.logs import MAX_LINE_CHARS

PROGRESS_INTERVAL = 0.5
MAX_PARTIAL = MAX_LINE_CHARS


class LineReader:
    """Bytes in (`feed`, then `close`), complete lines out to `emit`, for one stream."""

    def __init__(self, emit: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic):
        self._emit = emit
        self._clock = clock
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # the line being written: its latest state only
        self._kept_at = float("-inf")  # when the line's last state was kept

    def feed(self, data: bytes) -> None:
        text = self._partial + self._decoder.decode(data)
        *complete, self._partial = text.split("\n")
        if "\r" not in text:
            for line in complete:
                self._emit(line)
        else:
            for line in complete:
                if "\r" in line:
                    line = self._progress(line.removesuffix("\r"), final=True)
                self._kept_at = float("-inf")
                self._emit(line)
        if "\r" in self._partial:
            self._partial = self._progress(self._partial, final=False)
        while len(self._partial) > MAX_PARTIAL:
            self._emit(self._partial[:MAX_PARTIAL])
            self._partial = self._partial[MAX_PARTIAL:]

    def _progress(self, line: str, *, final: bool) -> str:
        """The states of a rewritten line: those due emitted, the last one returned
        (the final state when `final`, else the one still being written)."""
        *states, last = line.split("\r")
        if final and not last:  # "50%\r" then "\n": the bar's last state stands
            last = next((state for state in reversed(states) if state), "")
            states = states[:len(states) - 1 - states[::-1].index(last)] if last else []
        now = self._clock()
        if now - self._kept_at >= PROGRESS_INTERVAL:
            state = next((state for state in reversed(states) if state), None)
            if state is not None:
                self._emit(state)
                self._kept_at = now
        return last

    def close(self) -> None:
        text = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if "\r" in text:
            text = self._progress(text.removesuffix("\r"), final=True)
        if text:
            self._emit(text)
