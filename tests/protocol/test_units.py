"""Durations and sizes: the one parser and formatter of each, at their edges."""

from __future__ import annotations

import pytest

from cast.protocol.units import format_duration, human_size, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1.5m", 90), (" 5M ", 300),
    ("0.5", 0.5), (90, 90), (2.5, 2.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "5x", "", "inf", "nan", "1e3", "5 m", "m", "1.5.0s"])
def test_what_is_not_a_duration(text):
    with pytest.raises(ValueError) as caught:
        parse_duration(text, what="--timeout")
    assert str(caught.value) == (f"--timeout {text!r} must be seconds, or a number with s, m, h or d "
                                 "(90, 90s, 5m, 2h, 7d)")


@pytest.mark.parametrize("text", ["0", "0s", "0.0m"])
def test_a_duration_is_more_than_zero(text):
    with pytest.raises(ValueError, match=f"^duration '{text}' must be more than zero$"):
        parse_duration(text)


def test_a_duration_too_long_for_a_float_is_refused():
    with pytest.raises(ValueError, match="must be a finite duration$"):
        parse_duration("9" * 400, what="--timeout")


@pytest.mark.parametrize("size, shown", [
    (None, "-"), (0, "0 B"), (6, "6 B"), (1023, "1023 B"), (1.9, "1 B"), (1024, "1.0 KB"), (1536, "1.5 KB"),
    (3000, "2.9 KB"), (100 * 1024, "100 KB"), (12 * 1024**2, "12.0 MB"), (int(3.4 * 1024**3), "3.4 GB"),
    (5 * 1024**4, "5.0 TB"), (2000 * 1024**4, "2000 TB"),
])
def test_human_sizes(size, shown):
    assert human_size(size) == shown


@pytest.mark.parametrize("seconds, shown", [
    (0, "0.00s"), (0.414, "0.41s"), (9.99, "9.99s"), (10, "10.0s"), (12.34, "12.3s"), (59.9, "59.9s"),
    (60, "1m0s"), (67, "1m7s"), (67.6, "1m8s"), (3599, "59m59s"), (3600, "1h0m0s"), (7384, "2h3m4s"),
    (100 * 3600, "100h0m0s"),
])
def test_formatted_durations(seconds, shown):
    assert format_duration(seconds) == shown


@pytest.mark.parametrize("text, size", [
    (123, 123), ("123", 123), ("4k", 4096), ("4kb", 4096), ("512m", 512 << 20), ("8g", 8 << 30),
    ("1.5G", 3 << 29), (" 2T ", 2 << 40),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "g", "8x", "1.5"])
def test_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="must be bytes or a number with k, m, g or t"):
        parse_size(text)
