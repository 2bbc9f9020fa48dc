"""Which file names the server stores, and how a name is shown when it is not.

Owns the rule that a worker applies before pushing a run's outputs and that
the server applies to every member of an output or upload tar, so both refuse
the same names with the same reason: a stored path is valid UTF-8, holds no
control character (a newline would break the download route, the log and a
terminal), has no component longer than 255 bytes (the filesystem's limit)
and is at most 1024 bytes long (so `cast cp` can write it under any folder,
on any client). `printable` shows any name on one line of plain text,
whatever bytes it holds.
"""

from __future__ import annotations

import os

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}
_SHOWN_CHARACTERS = 240


def name_problem(path: str) -> str | None:
    """Why a file at the relative `path` cannot be stored, or None when it can.

    `path` is '/'-separated, as os functions return it (bytes that are not
    UTF-8 arrive as surrogate escapes).
    """
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        return "its name holds a control character (a newline, a tab, ...)"
    if any(len(part) > MAX_COMPONENT_BYTES for part in encoded.split(b"/")):
        return f"a part of its name is longer than {MAX_COMPONENT_BYTES} bytes"
    if len(encoded) > MAX_PATH_BYTES:
        return f"its path is {len(encoded)} bytes long; the server stores paths of at most {MAX_PATH_BYTES} bytes"
    return None


def printable(path: str) -> str:
    """`path` as one line of valid UTF-8: bytes that are not UTF-8 as \\xNN,
    control characters escaped, a very long path shortened in its middle."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace").translate(_CONTROLS)
    if len(text) > _SHOWN_CHARACTERS:
        head = _SHOWN_CHARACTERS // 3
        tail = _SHOWN_CHARACTERS - head
        text = f"{text[:head]}…({len(text) - _SHOWN_CHARACTERS} characters)…{text[-tail:]}"
    return text
