"""The `cast` command.

Owns: the click group that gathers the verbs (runs in `cli_runs`, files in
`cli_data`, where you are and signing in in `cli_account`, users, tokens and
servers in `cli_admin`; what `cast run` asks for
is built in `cli_spec`), and `main()`, which reports every error as one line
(`cast: error: ...`) with a non-zero exit code. The verbs talk to the control
plane only through `cast.client.sdk`; they start the embedded server,
`cast server` and `cast worker` as subprocesses, never importing their code.

Startup time matters (a warm `cast run "true"` should take under 0.35 s end
to end), so each verb imports what only it needs inside its function.
"""

from __future__ import annotations

import os
import sys

import click

from cast.protocol.validate import SpecError

from . import cli_account, cli_admin, cli_data, cli_hyper, cli_metrics, cli_runs
from .cli_common import CONTEXT
from .sdk import CastError


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """cast: run ML jobs on a remote machine and keep what they write.

    With no CAST_SERVER_URL set, cast starts (on first use) and reuses an
    embedded control plane and worker on this machine, with its data under
    CAST_HOME (default ~/.cast). See docs/cli.md for the full reference.
    """


for _command in (*cli_runs.COMMANDS, *cli_metrics.COMMANDS, *cli_hyper.COMMANDS, *cli_data.COMMANDS,
                 *cli_account.COMMANDS, *cli_admin.COMMANDS):
    cli.add_command(_command)


def _error(message: str) -> None:
    sys.stderr.write(f"cast: error: {' '.join(str(message).split()) or 'unknown error'}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure becomes one `cast: error:` line and an exit code."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    try:
        result = cli.main(args=argv, prog_name="cast", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        _error(exc.format_message())
        code = exc.exit_code
    except SpecError as exc:
        _error(str(exc))
        code = 2
    except CastError as exc:
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = 130
    except BrokenPipeError:
        # The reader went away (e.g. `cast logs N | head`); say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("CAST_DEBUG"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set CAST_DEBUG=1 for the traceback)")
        code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Flush and leave without the interpreter's teardown of every module
    imported (10-30 ms, a tenth of a warm `cast run "true"`): nothing else is
    left to write, as every file the commands open is closed by then."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away, as above
            code = code or 141
        except ValueError:  # closed
            pass
    os._exit(code)
