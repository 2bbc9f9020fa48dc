"""What the CLI tests check beyond the shared run helpers (tests/factories.py):
the shape of a refusal."""

from __future__ import annotations

from tests.conftest import CliResult


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """A refusal: non-zero exit, one `cast: error:` line on stderr, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cast: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
