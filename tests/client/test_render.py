"""cast.client.render: stage lines and log pages on a terminal and piped,
times read from the server's ISO strings, tables and the progress bar."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from cast.client.render import (
    CAST_MARK, DONE_MARK, Printer, Progress, local_time, parse_time, run_duration, seconds_between, shorten, table,
)
from cast.protocol.logs import LogChunk
from cast.protocol.messages import LogStream


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as a tty does."""

    def isatty(self) -> bool:
        return True


CHUNKS = [LogChunk(0, LogStream.CAST, "2026-01-01T00:00:00Z", ["Building"]),
          LogChunk(1, LogStream.STDOUT, "2026-01-01T00:00:01Z", ["epoch 1", ""])]


def test_piped_output_is_plain_text():
    out = io.StringIO()
    printer = Printer(out)
    printer.line("Run 7 finished", DONE_MARK)
    printer.chunks(CHUNKS)
    printer.chunks([])
    assert out.getvalue() == "Run 7 finished\nBuilding\nepoch 1\n\n"


def test_a_terminal_gets_the_marks_on_cast_lines_only():
    out = Terminal()
    printer = Printer(out)
    printer.line("Run 7 finished", DONE_MARK)
    printer.chunks(CHUNKS)
    assert out.getvalue() == f"{DONE_MARK} Run 7 finished\n{CAST_MARK} Building\nepoch 1\n\n"


def test_a_closed_file_or_a_stream_without_isatty_is_not_a_terminal(tmp_path):
    closed = open(tmp_path / "out.txt", "w")
    closed.close()
    assert Printer(closed).fancy is False
    assert Progress("x", 1, stream=object()).enabled is False


def test_times_are_read_as_utc_unless_they_say_otherwise():
    assert parse_time(None) is None and parse_time("") is None
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_time("2026-01-02T05:04:05+02:00") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert seconds_between("2026-01-02T03:04:05Z", "2026-01-02T03:05:35.5Z") == 90.5
    assert seconds_between("2026-01-02T03:04:05Z", "2026-01-02T03:04:00Z") == 0.0  # clocks apart: never negative
    assert seconds_between(None, "2026-01-02T03:04:05Z") is None
    assert local_time(None) == "-"
    assert local_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).astimezone(
    ).strftime("%Y-%m-%d %H:%M:%S")


def test_a_run_without_an_end_is_timed_until_now():
    started = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    assert 299 <= seconds_between(started, None) < 400
    assert run_duration({"created_at": "2026-01-02T03:04:05Z", "finished_at": "2026-01-02T03:05:35Z"}) == "1m30s"
    assert run_duration({}) == ""


def test_tables_pad_columns_and_align_the_chosen_ones_right():
    text = table(["ID", "COMMAND", "SIZE"], [["1", "python train.py", "3 KiB"], ["12", "ls", "10 B"]], right={0, 2})
    assert text.splitlines() == [
        "ID  COMMAND           SIZE",
        " 1  python train.py  3 KiB",
        "12  ls                10 B",
    ]
    assert table(None, [["a", "b"]]) == "a  b"
    assert table(None, []) == ""
    assert table(["A", "B"], [["x", ""]], gap=1) == "A B\nx"  # no trailing spaces


def test_shorten_keeps_one_line_of_at_most_width():
    assert shorten("python  train.py\n--lr 3", 40) == "python train.py --lr 3"
    assert shorten("abcdefghij", 5) == "abcd…"
    assert shorten("abcde", 5) == "abcde"


def test_progress_draws_on_a_terminal_and_is_silent_piped():
    shown = Terminal()
    bar = Progress("upload", 2048, stream=shown)
    bar.advance(1024)
    bar.finish()
    last = shown.getvalue().split("\r\x1b[2K")[-1]
    assert last.startswith("upload ") and "50%" in last and "1.0 KB / 2.0 KB" in last and last.endswith("/s\n")
    assert "█" * (Progress.WIDTH // 2) + "░" * (Progress.WIDTH // 2) in last

    unknown = Terminal()
    Progress("download", None, stream=unknown).finish()
    assert unknown.getvalue().startswith("\r\x1b[2Kdownload  0 B  ")

    piped = io.StringIO()
    quiet = Progress("upload", 10, stream=piped)
    quiet.advance(10)
    quiet.finish()
    assert piped.getvalue() == "" and quiet.done == 10


def test_sparkline_scales_between_the_extremes_and_averages_down_to_its_width():
    from cast.client.render import sparkline

    assert sparkline([]) == ""
    assert sparkline([3.0, 3.0]) == "▁▁"
    assert sparkline([0, 7, 3.5]) == "▁█▅"
    assert sparkline(list(range(100)), width=4) == "▁▃▆█"
    assert len(sparkline(list(range(1000)), width=30)) == 30
    assert sparkline([-1.7e308, 1.7e308]) == "▁█"  # no overflow between the extremes
