"""The verbs that say where you are and sign you in: status, whoami, login,
logout and web.

Owns: showing the server, its workers and the queue (`cast status`), who the
token belongs to and where it came from (`cast whoami`), saving and removing
a login (`cast login URL`, `cast logout`; the file itself is config.py's),
and the viewer's one-time sign-in link (`cast web`).
"""

from __future__ import annotations

import os
import sys

import click

from .cli_common import CONTEXT, UsageProblem, print_json
from .config import client as _client
from .config import resolve_target
from .sdk import ApiError, CastError


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the server's status as JSON.")
def status(as_json) -> int:
    """The server, its workers (executor, capacities, runs now) and the queue."""
    from cast.protocol.units import human_size

    from .render import local_time, table

    answer = _client().status()
    if as_json:
        print_json(answer)
        return 0
    server, workers, queue = answer["server"], answer["workers"], answer["queue"]
    _say(f"Server:   {server['url']} (cast {server['version']})")
    if server.get("database"):
        _say(f"Database: {server['database']}")
    if server.get("storage"):
        _say(f"Storage:  {server['storage']}")
    _say()
    if workers:
        rows = []
        for w in workers:
            runs = ", ".join(f"#{i}" for i in w["runs"]) or "-"
            hidden = w["busy"] - len(w["runs"])
            if hidden:
                runs = f"{runs} (+{hidden} of other users)" if w["runs"] else f"{hidden} of other users"
            rows.append([w["name"], w["executor"], "yes" if w["sandboxed"] else "NO", str(w["cpus"]),
                         human_size(w["memory"]), str(w["gpus"]), f"{w['busy']}/{w['max_runs']}",
                         local_time(w["last_seen_at"]), runs])
        _say(f"Workers ({len(workers)}):")
        _say(table(["NAME", "EXECUTOR", "SANDBOXED", "CPUS", "MEMORY", "GPUS", "SLOTS", "LAST SEEN", "RUNNING"],
                   rows, right={3, 4, 5}))
    else:
        _say(f"Workers: none connected (none asked for work in the last {server['presence_seconds']:.0f} s); "
             "queued runs wait for one")
    by_type = ", ".join(f"{count} {kind}" for kind, count in sorted(queue["by_machine_type"].items()))
    _say()
    _say(f"Queue:    {queue['total']} run{'' if queue['total'] == 1 else 's'} waiting"
         + (f" ({by_type})" if by_type else ""))
    return 0


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the user, server and token source as JSON.")
def whoami(as_json) -> int:
    """Who the token belongs to, on which server, and where the token came from."""
    from .sdk import Client

    target = resolve_target()
    me = Client(target.url, target.token).whoami()
    if as_json:
        print_json({"name": me["name"], "admin": me["admin"], "server": target.url, "token_from": target.source})
        return 0
    _say(f"{me['name']} ({'admin' if me['admin'] else 'user'}) on {target.url}")
    _say(f"token from {target.source}")
    return 0


def _read_secret() -> str:
    if sys.stdin.isatty():
        return click.prompt("Token", hide_input=True, err=True).strip()
    return sys.stdin.readline(4096).strip()


@click.command(context_settings=CONTEXT)
@click.argument("url")
@click.option("--token", metavar="TOKEN",
              help="A user token (default: asked for with hidden input, or read from stdin when not a terminal).")
def login(url, token) -> int:
    """Save URL and a token, checked against that server, for later commands.

    CAST_SERVER_URL, CAST_TOKEN and CAST_TOKEN_FILE still win over the saved login.
    """
    from .config import save_login
    from .sdk import Client

    url = url.strip().rstrip("/")
    secret = (token if token is not None else _read_secret()).strip()
    if not secret:
        raise UsageProblem("no token given: pass --token, type it at the prompt, or pipe it on stdin")
    client = Client(url, secret)
    try:
        me = client.whoami()
    except ApiError as exc:
        raise CastError(f"{url} refused this token ({exc.detail}); nothing saved") from None
    path = save_login(url, secret)
    _say(f"Logged in to {url} as {me['name']} ({'admin' if me['admin'] else 'user'}); saved in {path}")
    if os.environ.get("CAST_SERVER_URL", "").strip():
        sys.stderr.write("cast: note: CAST_SERVER_URL is set and wins over the saved login while it is\n")
    return 0


@click.command(context_settings=CONTEXT)
def logout() -> int:
    """Remove the login saved by `cast login` (the token stays valid on the server)."""
    from .config import config_path, forget_login

    login = forget_login()
    if login is None:
        _say(f"Not logged in (no {config_path()}).")
    else:
        _say(f"Logged out of {login['url']}; removed {config_path()}")
    return 0


def _can_open_browser() -> bool:
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command(context_settings=CONTEXT)
@click.option("--no-open", is_flag=True, help="Only print the link; do not open a browser.")
def web(no_open) -> int:
    """Print the web viewer's URL with a one-time sign-in link, and open it.

    The link signs one browser in, once, within 5 minutes.
    """
    from .render import local_time
    from .sdk import Client

    target = resolve_target()
    link = Client(target.url, target.token).create_sign_in_link()
    url = target.url.rstrip("/") + link["path"]
    _say(f"Viewer:  {target.url.rstrip('/')}/")
    _say(f"Sign in: {url}")
    _say(f"(one use, until {local_time(link['expires_at'])})")
    if not no_open and _can_open_browser():
        import webbrowser

        sys.stdout.flush()
        if not webbrowser.open(url):
            sys.stderr.write("cast: could not open a browser; open the link above\n")
    return 0


COMMANDS = (status, whoami, login, logout, web)
