"""A run's log as it crosses HTTP: the worker's batches, the reads' pages, and the rule on long lines.

Lines travel in runs, never one object per line: a worker's batch
(`LogBatch`) is runs of lines of one stream with one time (`LogRun`), and a
read answers a page (`LogPage`) of chunks (`LogChunk`: the offset of its first
line, its stream, its time, its lines). Offsets stay per line: chunk `c`
holds the lines `c.offset .. c.offset + len(c.lines) - 1`, and a page's
`next_offset` is where the next read starts, so a reader cut off anywhere
resumes without loss or repeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .messages import LogStream
from .status import RunStatus

# Lines one read answers at most (the server's bound and what `cast logs` asks
# for), and the bytes of stored line text past which a read ends early (the
# lines themselves may be long): a page is a few MiB however the log looks.
MAX_READ_LINES = 200_000
MAX_READ_BYTES = 8 << 20
# Lines in one worker batch; its characters are bounded by the body cap.
MAX_BATCH_LINES = 50_000
# Characters of a line (CAST_MAX_LOG_LINE_CHARS is the server's; this is the
# worker's): a longer line becomes several lines of at most this many.
MAX_LINE_CHARS = 64 * 1024


def split_line(text: str, limit: int = MAX_LINE_CHARS) -> list[str]:
    """`text` as lines of at most `limit` characters, nothing dropped."""
    if len(text) <= limit:
        return [text]
    return [text[i:i + limit] for i in range(0, len(text), limit)]


def split_lines(lines: list[str], limit: int = MAX_LINE_CHARS) -> list[str]:
    """`lines` with every line longer than `limit` split (see split_line); the
    list itself when none is, which is checked in C."""
    if not lines or max(map(len, lines)) <= limit:
        return lines
    return [piece for line in lines for piece in split_line(line, limit)]


@dataclass
class LogRun:
    """Consecutive lines of one stream as a worker sends them; `time` is its first line's."""

    stream: LogStream
    lines: list[str]
    time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        run: dict[str, Any] = {"stream": self.stream.value, "lines": self.lines}
        if self.time is not None:
            run["time"] = self.time
        return run


@dataclass
class LogBatch:
    """The body of a worker's `POST /runs/{id}/logs`: `seq` is the number of
    lines it sent before this batch, so a retried batch is stored once."""

    lease_token: str
    seq: int
    runs: list[LogRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"lease_token": self.lease_token, "seq": self.seq, "runs": [run.to_dict() for run in self.runs]}


@dataclass
class LogChunk:
    """Lines `offset ..` of one stream as a read answers them; `time` is the first line's."""

    offset: int
    stream: LogStream
    time: str
    lines: list[str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LogChunk":
        return cls(offset=data["offset"], stream=LogStream(data["stream"]), time=data["time"], lines=data["lines"])


@dataclass
class RunOutcome:
    """How a run ended, as the follow stream's finished page says it, so a
    follower prints the outcome without asking for the run: its final status,
    exit code, reason, and its creation and end (ISO times)."""

    status: RunStatus
    exit_code: int | None = None
    reason: str | None = None
    created_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunOutcome":
        return cls(status=RunStatus(data["status"]), exit_code=data.get("exit_code"), reason=data.get("reason"),
                   created_at=data.get("created_at"), finished_at=data.get("finished_at"))

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "exit_code": self.exit_code, "reason": self.reason,
                "created_at": self.created_at, "finished_at": self.finished_at}


@dataclass
class LogPage:
    """One read of a log, or one message of the follow stream: chunks in
    order, the offset to read next, and whether the run is final and all of
    its log was sent; the follow stream's finished page also carries the
    run's `outcome` (a server before it sent none: None)."""

    chunks: list[LogChunk]
    next_offset: int
    finished: bool
    outcome: RunOutcome | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LogPage":
        outcome = data.get("outcome")
        return cls(chunks=[LogChunk.from_dict(c) for c in data.get("chunks") or []],
                   next_offset=data["next_offset"], finished=data["finished"],
                   outcome=RunOutcome.from_dict(outcome) if outcome else None)

    @property
    def line_count(self) -> int:
        return sum(len(chunk.lines) for chunk in self.chunks)

    def entries(self) -> Iterator[dict[str, Any]]:
        """One `{offset, time, stream, text}` per line: for callers that want lines one by one."""
        for chunk in self.chunks:
            for i, text in enumerate(chunk.lines):
                yield {"offset": chunk.offset + i, "time": chunk.time, "stream": chunk.stream.value, "text": text}
