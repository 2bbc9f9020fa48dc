"""The `cast` command.

Owns: the click group that gathers the verbs (runs in `cli_runs`, files in
`cli_data`, where you are and signing in in `cli_account`, users, tokens and
servers in `cli_admin`; what `cast run` asks for
is built in `cli_spec`), and `main()`, which reports every error as one line
(`cast: error: ...`) with a non-zero exit code. The verbs talk to the control
plane only through `cast.client.sdk`; they start the embedded server,
`cast server` and `cast worker` as subprocesses, never importing their code.

Startup time matters (every call pays it), so each verb imports what only it
needs inside its function, and the group imports a verb module only when it
is the one asked for (`_Verbs`).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from cast.protocol.validate import SpecError

from .cli_common import CONTEXT
from .sdk import CastError

# The verb modules, each with its COMMANDS, in the order a verb is looked for:
# the runs' first, since `cast run` is the call whose start-up is felt most.
VERB_MODULES = ("cli_runs", "cli_data", "cli_account", "cli_metrics", "cli_hyper", "cli_admin")


def _module_commands(module: str) -> dict[str, click.Command]:
    return {command.name: command for command in importlib.import_module(f".{module}", __package__).COMMANDS}


class _Verbs(click.Group):
    """The `cast` group: a verb is looked for module by module, so a call
    imports the verb modules up to its own (`cast run` only cli_runs; the rest
    import click options, hyperparameter rules and more, about 30 ms of CPU a
    call). Listing the verbs (`--help`, `commands`) imports them all."""

    def get_command(self, ctx, cmd_name):
        for module in VERB_MODULES:
            if (command := _module_commands(module).get(cmd_name)) is not None:
                return command
        return None

    def list_commands(self, ctx):
        return sorted(self.commands)

    @property
    def commands(self) -> dict[str, click.Command]:
        return {name: command for module in VERB_MODULES for name, command in _module_commands(module).items()}

    @commands.setter
    def commands(self, given) -> None:
        # click.Group's __init__ sets the (empty) table; the verbs come from VERB_MODULES only.
        if given:
            raise TypeError("cast's verbs are listed in their modules' COMMANDS")

    def add_command(self, cmd, name=None) -> None:
        raise TypeError("cast's verbs are listed in their modules' COMMANDS, not added to the group")


@click.group(cls=_Verbs, context_settings=CONTEXT)
def cli() -> None:
    """cast: run ML jobs on a remote machine and keep what they write.

    With no CAST_SERVER_URL set, cast starts (on first use) and reuses an
    embedded control plane and worker on this machine, with its data under
    CAST_HOME (default ~/.cast). See docs/cli.md for the full reference.
    """


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
