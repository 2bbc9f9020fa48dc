"""cast.protocol.names: which stored file names are refused, and why, and how
any name is shown on one line."""

from __future__ import annotations

import os

import pytest

from cast.protocol.names import MAX_COMPONENT_BYTES, MAX_PATH_BYTES, name_problem, printable


@pytest.mark.parametrize("path", ["a.txt", "dir/sub/naïve name.txt", "日本/データ.bin", " spaced ", "a" * 255,
                                  "/".join(["d" * 200] * 5)])
def test_storable_names_have_no_problem(path):
    assert name_problem(path) is None


@pytest.mark.parametrize("path, reason", [
    (os.fsdecode(b"bad\xff.txt"), "not valid UTF-8"),
    ("line\nbreak", "control character"),
    ("tab\there", "control character"),
    ("del\x7f", "control character"),
    ("dir/" + "x" * (MAX_COMPONENT_BYTES + 1), f"longer than {MAX_COMPONENT_BYTES} bytes"),
    ("é" * 128, f"longer than {MAX_COMPONENT_BYTES} bytes"),  # 128 characters, 256 bytes
])
def test_refused_names_say_why(path, reason):
    assert reason in name_problem(path)


def test_the_path_limit_counts_bytes_and_names_the_length():
    at_limit = "/".join(["d" * 200] * 5) + "/" + "f" * (MAX_PATH_BYTES - 1005)
    assert len(at_limit.encode()) == MAX_PATH_BYTES and name_problem(at_limit) is None
    over = at_limit + "f"
    assert name_problem(over) == (f"its path is {MAX_PATH_BYTES + 1} bytes long; "
                                  f"the server stores paths of at most {MAX_PATH_BYTES} bytes")


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("plain/naïve.txt") == "plain/naïve.txt"
    assert printable("a\nb\tc\rd\x1b[2Je\x7f") == "a\\nb\\tc\\rd\\x1b[2Je\\x7f"
    assert printable(os.fsdecode(b"bad\xff\xfe.txt")) == "bad\\xff\\xfe.txt"


def test_printable_shortens_a_long_name_in_its_middle():
    name = "start-" + "m" * 1000 + "-end"
    shown = printable(name)
    assert shown.startswith("start-") and shown.endswith("-end")
    assert f"…({len(name) - 240} characters)…" in shown
    assert len(shown) < 300
    exact = "x" * 240
    assert printable(exact) == exact
