"""Durations and sizes as people type and read them: the one parser and the one formatter of each."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """Seconds from `90`, `90s`, `5m`, `2h` or `7d`; ValueError naming `what` otherwise."""
    match = _DURATION.match(str(text).strip().lower())
    if not match:
        raise ValueError(f"{what} {text!r} must be seconds, or a number with s, m, h or d (90, 90s, 5m, 2h, 7d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not seconds > 0:
        raise ValueError(f"{what} {text!r} must be more than zero")
    if seconds == float("inf"):
        raise ValueError(f"{what} {text!r} must be a finite duration")
    return seconds


def parse_size(text: str | int) -> int:
    """Bytes from 123, "512m", "8g", "1.5G"."""
    if isinstance(text, int):
        return text
    value = text.strip().lower().rstrip("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise ValueError(f"memory size {text!r} must be bytes or a number with k, m, g or t") from None


def human_size(size: int | float | None) -> str:
    """6 B, 1.5 KB, 12 MB, 3.4 GB (powers of 1024); '-' for unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """0.41s, 12.3s, 1m7s, 2h3m4s: the style of Spell's 'Total run time'."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"
