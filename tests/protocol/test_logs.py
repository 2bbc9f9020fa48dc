"""cast.protocol.logs: a long line split with nothing lost, a worker's batch
as its body, and a page read back with an offset per line."""

from __future__ import annotations

from cast.protocol.logs import LogBatch, LogChunk, LogPage, LogRun, split_line, split_lines
from cast.protocol.messages import LogStream


def test_a_long_line_is_split_into_lines_of_the_limit_with_nothing_lost():
    assert split_line("abc", 3) == ["abc"]
    assert split_line("abcdefg", 3) == ["abc", "def", "g"]
    assert split_line("", 3) == [""]
    lines = ["short", "x" * 10, ""]
    assert split_lines(lines, 4) == ["shor", "t", "xxxx", "xxxx", "xx", ""]
    assert split_lines(lines, 10) is lines  # nothing to split: the same list, checked in C
    assert split_lines([], 1) == []


def test_a_batch_is_runs_of_lines_with_their_stream_and_time():
    batch = LogBatch("tok", 7, [LogRun(LogStream.STDOUT, ["a", "b"], "t"), LogRun(LogStream.CAST, ["c"])])
    assert batch.to_dict() == {"lease_token": "tok", "seq": 7, "runs": [
        {"stream": "stdout", "lines": ["a", "b"], "time": "t"}, {"stream": "cast", "lines": ["c"]}]}


def test_a_page_numbers_each_line_from_its_chunks_offset():
    page = LogPage.from_dict({"chunks": [{"offset": 4, "stream": "stderr", "time": "t", "lines": ["x", "y"]},
                                         {"offset": 6, "stream": "cast", "time": "u", "lines": ["z"]}],
                              "next_offset": 7, "finished": True, "unknown": 1})
    assert page.chunks[0] == LogChunk(4, LogStream.STDERR, "t", ["x", "y"])
    assert page.line_count == 3 and page.next_offset == 7 and page.finished
    assert list(page.entries()) == [{"offset": 4, "time": "t", "stream": "stderr", "text": "x"},
                                    {"offset": 5, "time": "t", "stream": "stderr", "text": "y"},
                                    {"offset": 6, "time": "u", "stream": "cast", "text": "z"}]
