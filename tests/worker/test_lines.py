"""cast.worker.lines: a command's output bytes as log lines, for both
executors: lines split across reads, bad UTF-8 replaced, a line without end
given out in pieces, and `\\r` rewrites (progress bars) kept as a state at most
every PROGRESS_INTERVAL and the final one. Real processes write the bars here:
a tqdm-like loop through a local run's pipe reader. A bar that stalls shows
its latest state by the reader's timer, with the real clock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from cast.protocol.messages import LogStream
from cast.worker import lines as lines_module
from cast.worker.docker_images import pump_output
from cast.worker.executors.local import LocalProcess
from cast.worker.lines import MAX_PARTIAL, PROGRESS_INTERVAL, STALL, LineReader


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reader(clock=None) -> tuple[LineReader, list[str]]:
    """A reader into a list; with a test's clock, without the timer (it runs on real time)."""
    out: list[str] = []
    return LineReader(out.extend, **({"clock": clock, "timer": False} if clock else {})), out


def test_lines_are_split_across_reads_and_crlf_endings_dropped():
    reader, out = _reader()
    for chunk in (b"one\r\ntw", b"o\n\nthr", b"ee"):
        reader.feed(chunk)
    assert out == ["one", "two", ""]
    reader.close()
    assert out == ["one", "two", "", "three"]
    reader.close()
    assert out[-1] == "three" and len(out) == 4  # nothing left to flush twice


def test_a_character_split_between_reads_survives_and_bad_bytes_are_replaced():
    reader, out = _reader()
    euro = "€".encode()
    reader.feed(b"price " + euro[:1])
    reader.feed(euro[1:] + b"\n\xff\xfeend\n")
    assert out == ["price €", "\ufffd\ufffdend"]


def test_a_line_without_end_is_given_out_in_pieces_rather_than_held_whole():
    reader, out = _reader()
    for _ in range(10):
        reader.feed(b"x" * 16 * 1024)
    reader.close()
    assert "".join(out) == "x" * 160 * 1024
    assert len(out) > 1 and max(len(line) for line in out) <= MAX_PARTIAL


def test_a_rewritten_line_keeps_a_state_per_interval_and_its_final_state():
    clock = Clock()
    reader, out = _reader(clock)
    reader.feed(b"start\n")
    for percent in range(101):
        reader.feed(f"\r{percent:3d}%".encode())
        clock.now += 0.01  # 100 updates a second
    reader.feed(b"\n")
    reader.feed(b"after\n")
    # The first state, one per 0.5 s (every 50 updates), the final one; then the next line.
    assert out == ["start", "  0%", " 50%", "100%", "after"]


def test_a_bar_ending_in_a_carriage_return_keeps_its_last_state_and_one_read_keeps_one_state():
    clock = Clock()
    reader, out = _reader(clock)
    reader.feed(b"\rA\rB\rC\r\n")
    assert out == ["B", "C"]  # one state due (the latest complete one), then the final one
    reader.feed(b"\rD\rE")
    clock.now += PROGRESS_INTERVAL
    reader.feed(b"\rF")
    reader.close()
    assert out == ["B", "C", "D", "E", "F"]


def test_pump_output_keeps_the_two_streams_apart():
    out: list[str] = []
    err: list[str] = []
    pump_output(iter([(b"a\nb", None), (None, b"oops"), (b"c\n", b"!\n")]), out.extend, err.extend)
    assert out == ["a", "bc"] and err == ["oops!"]


TQDM_LIKE = textwrap.dedent("""
    import sys, time
    print("training", flush=True)
    start = time.monotonic()
    for i in range(100_001):
        if i % 100 == 0 or i == 100_000:
            sys.stderr.write(f"\\r{i * 100 // 100_000:3d}%|{'#' * (i * 20 // 100_000):20s}| {i}/100000")
            sys.stderr.flush()
        if i % 1000 == 0:
            time.sleep(0.01)  # about a second in all
    sys.stderr.write("\\n")
    print("done", flush=True)
""")


def test_a_tqdm_like_bar_through_a_local_runs_pipe_becomes_a_few_lines(monkeypatch):
    monkeypatch.setattr(lines_module, "PROGRESS_INTERVAL", 0.2)
    process = subprocess.Popen([sys.executable, "-c", TQDM_LIKE], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got: list[tuple[LogStream, str]] = []
    lock = threading.Lock()

    def sink(stream: LogStream, texts: list[str]) -> None:
        with lock:
            got.extend((stream, text) for text in texts)

    readers = [threading.Thread(target=LocalProcess._pump, args=(process.stdout, LogStream.STDOUT, sink)),
               threading.Thread(target=LocalProcess._pump, args=(process.stderr, LogStream.STDERR, sink))]
    for reader in readers:
        reader.start()
    assert process.wait(timeout=120) == 0
    for reader in readers:
        reader.join(timeout=60)
    assert [text for stream, text in got if stream is LogStream.STDOUT] == ["training", "done"]
    bar = [text for stream, text in got if stream is LogStream.STDERR]
    # 1,001 rewrites in about a second: a handful of states, the last one the bar's end.
    assert 1 <= len(bar) <= 30, bar
    assert bar[-1] == f"100%|{'#' * 20}| 100000/100000"
    assert all("\r" not in text for text in bar)


def _wait_for(out: list[str], count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_stalled_bar_shows_its_latest_state_by_the_timer_and_its_end_once():
    reader, out = _reader()
    reader.feed(b"epoch 1\n\r 10%")
    _wait_for(out, 2)
    assert out == ["epoch 1", " 10%"]  # nothing more comes: the timer keeps the state being written
    start = time.monotonic()
    reader.feed(b"\r 20%")
    reader.feed(b"\r 30%")  # the bar stalls here
    _wait_for(out, 3)
    assert out == ["epoch 1", " 10%", " 30%"]
    # Kept once due (PROGRESS_INTERVAL after the last state kept), not at once.
    assert time.monotonic() - start >= PROGRESS_INTERVAL * 0.8
    reader.feed(b"\ndone\n")  # its end is the state shown already: not repeated
    reader.close()
    assert out == ["epoch 1", " 10%", " 30%", "done"]


def test_a_stalled_bar_that_ends_each_state_with_a_carriage_return_shows_it_too():
    reader, out = _reader()
    reader.feed(b"1/3\r")
    _wait_for(out, 1)
    assert out == ["1/3"]
    reader.feed(b"2/3\r")
    _wait_for(out, 2)
    assert out == ["1/3", "2/3"]
    reader.feed(b"\n")  # the final state is 2/3, shown already; no empty line either
    reader.feed(b"next\n")
    reader.close()
    assert out == ["1/3", "2/3", "next"]


def test_the_timer_keeps_nothing_after_close_and_leaves_plain_lines_alone():
    reader, out = _reader()
    reader.feed(b"plain\npartial without end")
    time.sleep(STALL * 4)
    assert out == ["plain"]  # a line without "\r" waits for its end as before
    reader.feed(b"\r 99%")  # the text before a "\r" is a state: kept at once (none was yet)
    reader.close()  # the timer due for " 99%" later is cancelled: close keeps it as the final state
    time.sleep(PROGRESS_INTERVAL * 2)
    assert out == ["plain", "partial without end", " 99%"]
