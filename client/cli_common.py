"""What every verb module of the `cast` command shares.

Owns: the click context settings, `UsageProblem` (bad input on the command
line) and JSON output. Kept apart from `cli.py`, which imports the verb
modules, so that they import this without a cycle.
"""

from __future__ import annotations

import json
import sys

from .sdk import CastError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Verbs that hand their arguments to another program, which parses them (and --help) itself.
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


class UsageProblem(CastError):
    """Bad input on the command line (exit code 2, like click's usage errors)."""

    exit_code = 2


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
