"""How the CLI shows things: stage lines, log pages, tables, times and
progress bars (sizes and durations are formatted by cast.protocol.units).

On a terminal the output looks like Spell's (✨ stage lines, 💫/🎉/💥
headers, a live progress bar); piped, the same lines come out plain, without
emoji and without progress bars, so they can be grepped and diffed.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone

from cast.protocol.logs import LogChunk
from cast.protocol.messages import LogStream
from cast.protocol.units import format_duration, human_size

CAST_MARK, START_MARK, DONE_MARK, FAIL_MARK = "✨", "💫", "🎉", "💥"


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Printer:
    """Writes cast's own lines and a run's log to one stream."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.fancy = is_terminal(self.stream)

    def line(self, text: str, mark: str = CAST_MARK) -> None:
        self.stream.write(f"{mark} {text}\n" if self.fancy else f"{text}\n")
        self.stream.flush()

    def chunks(self, chunks: list[LogChunk]) -> None:
        """A page of a run's log: `cast` stage lines marked, job output as is
        (joined in C: a page may hold 200,000 lines)."""
        if not chunks:
            return
        out = []
        for chunk in chunks:
            lines = chunk.lines
            if chunk.stream is LogStream.CAST and self.fancy:
                lines = [f"{CAST_MARK} {line}" for line in lines]
            out.append("\n".join(lines))
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()


# --- times ------------------------------------------------------------

def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from `start` to `end` (or to now when `end` is None)."""
    begin = parse_time(start)
    if begin is None:
        return None
    finish = parse_time(end) or datetime.now(timezone.utc)
    return max(0.0, (finish - begin).total_seconds())


def run_duration(run: dict) -> str:
    seconds = seconds_between(run.get("created_at"), run.get("finished_at"))
    return "" if seconds is None else format_duration(seconds)


def local_time(text: str | None) -> str:
    value = parse_time(text)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# --- tables ---------------------------------------------------------------

def table(headers: list[str] | None, rows: list[list[str]], *, right: set[int] = frozenset(), gap: int = 2) -> str:
    """Columns padded to their widest cell; `right` aligns columns to the right."""
    all_rows = ([headers] if headers else []) + rows
    if not all_rows:
        return ""
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = []
    for row in all_rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((" " * gap).join(cells).rstrip())
    return "\n".join(lines)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- progress ---------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr; silent when stderr is not a terminal."""

    WIDTH = 28

    def __init__(self, label: str, total: int | None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = is_terminal(self.stream)
        self.label = label
        self.total = total
        self.done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled and time.monotonic() - self._last_draw > 0.1:
            self._draw()

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        elapsed = max(self._last_draw - self._started, 1e-6)
        rate = f"{human_size(self.done / elapsed)}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * self.WIDTH)
            bar = "█" * filled + "░" * (self.WIDTH - filled)
            text = f"{self.label} {bar} {fraction:4.0%}  {human_size(self.done)} / {human_size(self.total)}  {rate}"
        else:
            text = f"{self.label}  {human_size(self.done)}  {rate}"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


# --- metrics ----------------------------------------------------------------

SPARK_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """`values` as at most `width` bars, each the mean of its share of the values,
    scaled from the smallest to the largest (a flat series is a flat line)."""
    if not values:
        return ""
    width = max(1, width)
    if len(values) > width:
        size = len(values) / width
        values = [_mean(values[int(i * size):max(int((i + 1) * size), int(i * size) + 1)]) for i in range(width)]
    low, high = min(values), max(values)
    if high == low:
        return SPARK_BARS[0] * len(values)
    top = len(SPARK_BARS) - 1
    span = high / 2 - low / 2  # halves: the difference of two large doubles may overflow
    return "".join(SPARK_BARS[round((v / 2 - low / 2) / span * top)] for v in values)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
