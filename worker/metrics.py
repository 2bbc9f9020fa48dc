"""A run's metrics on the worker: its metrics file followed as it grows, and
the Hugging Face Trainer lines of its log, turned into points for the outbox.

Owns:
- the run's metrics folder, beside (never inside) its working dir, so the file
  is never saved as an output: `metrics.jsonl`, the file `$CAST_METRICS` names,
  and `cast_metrics.py`, the helper put on the run's PYTHONPATH (a copy of
  `cast.protocol.cast_metrics`); `run_env` says what a run's environment gets;
- `MetricsFile`: the reader. The file is the run's to write, so the worker
  opens it once, before the run starts, with O_NOFOLLOW, and reads only through
  that descriptor: whatever the run later puts at the path (a link to
  /etc/shadow, a FIFO) is never opened. Reads are bounded per poll, a line
  longer than MAX_LINE_BYTES is skipped to its end, a partial last line waits
  for its newline (or the run's end);
- `trainer_metrics`: a line a Trainer prints (`{'loss': 0.5, 'epoch': 1.0}`)
  as metrics, after a cheap shape check, with `ast.literal_eval` only;
- `RunMetrics`: one run's metrics: both sources through one `Gate` (the
  per-run bounds of cast.protocol.metrics), refused lines counted per kind
  and named in the run's log (periodically and at the end, one line per kind).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from cast.protocol import cast_metrics
from cast.protocol.messages import LogStream
from cast.protocol.metrics import (
    ENV_VAR,
    MAX_LINE_BYTES,
    MAX_NAMES_PER_RUN,
    MAX_POINTS_PER_RUN,
    MetricPoint,
    PointRefused,
    Problem,
    check_point,
)
from cast.worker.fsops import remove_tree
from cast.worker.outbox import Outbox, utc_now

log = logging.getLogger(__name__)

FILE_NAME = "metrics.jsonl"
HELPER_NAME = "cast_metrics.py"
POLL_INTERVAL = 0.2  # seconds between looks at the file
READ_CHUNK = 1 << 20
MAX_READ_PER_POLL = 8 << 20  # bytes read before the reader hands its points on
# Bytes of the file read in all: past this the rest is not read (the run is
# told), so a run cannot keep its worker parsing forever.
MAX_FILE_BYTES = 2 << 30
REPORT_INTERVAL = 30.0  # seconds between the log's lines about refused lines
EXAMPLE_CHARS = 80
# A Trainer's log line: a dict literal of quoted names; anything else is not looked at further.
_TRAINER_SHAPE = re.compile(r"^\{'[^'\\\n]{1,200}': [-+0-9.einfa]")
MAX_TRAINER_LINE = 4096
_DECODER = json.JSONDecoder()


def run_env(folder: str, env: dict[str, str]) -> dict[str, str]:
    """What a run's environment gets when its metrics folder appears at `folder`
    (a path as the run sees it): CAST_METRICS, and the helper on PYTHONPATH
    ahead of whatever the run set there."""
    path = folder if not env.get("PYTHONPATH") else f"{folder}{os.pathsep}{env['PYTHONPATH']}"
    return {ENV_VAR: f"{folder}/{FILE_NAME}", "PYTHONPATH": path}


def trainer_metrics(text: str) -> dict[str, float] | None:
    """The metrics in a line a Hugging Face Trainer prints, or None for any other line."""
    line = text.strip()
    if len(line) > MAX_TRAINER_LINE or not line.endswith("}") or not _TRAINER_SHAPE.match(line):
        return None
    try:
        found = ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(found, dict) or not found:
        return None
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               for k, v in found.items()):
        return None
    return found


def parse_line(raw: bytes) -> MetricPoint:
    """One line of the metrics file as a point; PointRefused says why not."""
    try:
        found = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        found = None
    if not isinstance(found, dict) or "name" not in found or "value" not in found:
        raise PointRefused(Problem.NOT_JSON, str(Problem.NOT_JSON))
    return check_point(found["name"], found["value"], found.get("step"))


def _example(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(c if c.isprintable() else "?" for c in text[:EXAMPLE_CHARS + 1])
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


class Gate:
    """The per-run bounds both sources share: names and points of this attempt,
    and the count of what was refused, per kind, with the first example."""

    def __init__(self):
        self._lock = threading.Lock()
        self.names: set[str] = set()
        self.points = 0
        self.refused: Counter[Problem] = Counter()
        self._reported: Counter[Problem] = Counter()
        self._examples: dict[Problem, str] = {}

    def admit(self, point: MetricPoint) -> bool:
        with self._lock:
            if self.points >= MAX_POINTS_PER_RUN:
                self._refuse(Problem.TOO_MANY_POINTS, point.name)
                return False
            if point.name not in self.names:
                if len(self.names) >= MAX_NAMES_PER_RUN:
                    self._refuse(Problem.TOO_MANY_NAMES, point.name)
                    return False
                self.names.add(point.name)
            self.points += 1
            return True

    def refuse(self, problem: Problem, example: bytes | str) -> None:
        with self._lock:
            self._refuse(problem, example)

    def _refuse(self, problem: Problem, example: bytes | str) -> None:
        self.refused[problem] += 1
        if problem not in self._examples:
            self._examples[problem] = _example(example)

    @property
    def full(self) -> bool:
        return self.points >= MAX_POINTS_PER_RUN

    def unreported(self) -> list[str]:
        """A log line per kind refused since the last call."""
        with self._lock:
            lines = []
            for problem, count in self.refused.items():
                new = count - self._reported[problem]
                if new:
                    lines.append(f"Metrics: {new} line{'s' if new != 1 else ''} refused, {problem} "
                                 f"(the first: {self._examples[problem]!r}; {count} so far)")
            self._reported = Counter(self.refused)
            return lines


class MetricsFile:
    """Follows one run's metrics file through the descriptor opened by `open`."""

    def __init__(self, path: Path, gate: Gate, deliver: Callable[[list[MetricPoint]], None],
                 note: Callable[[str], None]):
        self.path = path
        self._gate = gate
        self._deliver = deliver
        self._note = note
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._position = 0
        self._pending = b""  # a line whose newline has not come yet
        self._skipping = False  # inside a line too long to keep, until its newline
        self._stopped = False  # no more reading: the byte cap, or the point cap
        self._ending = threading.Event()
        self._thread: threading.Thread | None = None
        self.read_points = 0

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file")
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name=f"metrics-{self.path.parent.name}", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Read what is left (the run has ended) and stop."""
        self._ending.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            self._note_replaced()
            os.close(self._fd)
            self._fd = None

    def _follow(self) -> None:
        last_report = time.monotonic()
        while True:
            ending = self._ending.is_set()
            try:
                self._read_available(final=ending)
            except OSError as exc:  # the descriptor is ours; a failed read ends the reading, not the run
                log.warning("%s: cannot read: %s", self.path, exc)
                self._note(f"Metrics: reading the metrics file failed ({exc.strerror or exc}); "
                           f"later points were not read")
                self._stopped = True
            if ending:
                break
            if time.monotonic() - last_report >= REPORT_INTERVAL:
                for line in self._gate.unreported():
                    self._note(line)
                last_report = time.monotonic()
            self._ending.wait(POLL_INTERVAL)

    def _read_available(self, *, final: bool) -> None:
        while not self._stopped:
            read = 0
            points: list[MetricPoint] = []
            while read < MAX_READ_PER_POLL:
                if self._position >= MAX_FILE_BYTES:
                    self._stopped = True
                    self._note(f"Metrics: the metrics file passed {MAX_FILE_BYTES >> 30} GiB; "
                               f"the rest was not read")
                    break
                chunk = os.pread(self._fd, min(READ_CHUNK, MAX_FILE_BYTES - self._position), self._position)
                if not chunk:
                    break
                self._position += len(chunk)
                read += len(chunk)
                points += self._lines(chunk)
            if final and read < MAX_READ_PER_POLL and self._pending and not self._skipping:
                points += self._points([self._pending])  # the last line needs no newline
                self._pending = b""
            if points:
                self.read_points += len(points)
                self._deliver(points)
            if self._gate.full:
                self._stopped = True
            if read < MAX_READ_PER_POLL:
                return

    def _lines(self, chunk: bytes) -> list[MetricPoint]:
        lines = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if self._skipping:
                if end >= 0:
                    self._skipping = False
            elif len(self._pending) + len(piece) > MAX_LINE_BYTES:
                self._gate.refuse(Problem.TOO_LONG, self._pending[:EXAMPLE_CHARS] + piece[:EXAMPLE_CHARS])
                self._pending = b""
                self._skipping = end < 0
            elif end < 0:
                self._pending += piece
            else:
                lines.append(self._pending + piece)
                self._pending = b""
            if end < 0:
                break
            start = end + 1
        return self._points(lines)

    def _points(self, lines: list[bytes]) -> list[MetricPoint]:
        points = []
        now = utc_now()
        for raw in lines:
            if not raw.strip():
                continue
            try:
                point = parse_line(raw)
            except PointRefused as exc:
                self._gate.refuse(exc.problem, raw)
                continue
            if self._gate.admit(point):
                points.append(MetricPoint(point.name, point.value, point.step, now))
        return points

    def _note_replaced(self) -> None:
        """Say so when the run put something else at the file's path: what it
        wrote there afterwards was not read (and is not followed)."""
        try:
            info = os.lstat(self.path)
            same = (info.st_dev, info.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            self._note(f"Metrics: the run replaced or removed its metrics file ({ENV_VAR}); "
                       f"only what it wrote to the original file was read")


class RunMetrics:
    """One run's metrics: its folder, its file's reader and its log's Trainer lines."""

    def __init__(self, folder: Path, outbox: Outbox, *, log_metrics: bool):
        self.folder = folder
        self._outbox = outbox
        self._log_metrics = log_metrics
        self._gate = Gate()
        self._file: MetricsFile | None = None
        self._lock = threading.Lock()
        self._trainer_lines = 0
        self.log_points = 0

    @property
    def file_path(self) -> Path:
        return self.folder / FILE_NAME

    def prepare(self) -> None:
        """The folder, an empty metrics file and the helper; the file opened for reading."""
        remove_tree(self.folder)
        self.folder.mkdir(mode=0o755, parents=True)
        fd = os.open(self.file_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.close(fd)
        shutil.copyfile(cast_metrics.__file__, self.folder / HELPER_NAME)
        os.chmod(self.folder / HELPER_NAME, 0o444)
        self._file = MetricsFile(self.file_path, self._gate, self._outbox.metrics, self._note)
        self._file.open()

    def start(self) -> None:
        if self._file is not None:
            self._file.start()

    def log_sink(self, stream: LogStream, lines: list[str]) -> None:
        """The executor's sink of the command's output: the lines to the outbox
        in one call, and a Trainer's lines of stdout and stderr also as points."""
        self._outbox.log_lines(stream, lines)
        if not self._log_metrics or stream is LogStream.CAST:
            return
        for text in lines:
            self._trainer_points(text)

    def _trainer_points(self, text: str) -> None:
        found = trainer_metrics(text)
        if found is None:
            return
        now = utc_now()
        points = []
        with self._lock:
            self._trainer_lines += 1
            step = self._trainer_lines
        for name, value in found.items():
            try:
                point = check_point(name, value, step)
            except PointRefused as exc:
                self._gate.refuse(exc.problem, text)
                continue
            if self._gate.admit(point):
                points.append(MetricPoint(point.name, point.value, step, now))
        if points:
            with self._lock:
                self.log_points += len(points)
            self._outbox.metrics(points)

    def finish(self) -> None:
        """After the run's command ended: the file read to its end, and what was refused said."""
        if self._file is not None:
            self._file.finish()
        for line in self._gate.unreported():
            self._note(line)

    def close(self) -> None:
        """Stop reading (if `finish` was not reached) and remove the folder."""
        if self._file is not None:
            self._file.finish()
            self._file = None
        remove_tree(self.folder)

    def _note(self, text: str) -> None:
        self._outbox.log(LogStream.CAST, text)
