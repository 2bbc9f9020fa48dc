"""The verbs that administer cast: users, tokens, the embedded server, the
server and worker processes, and a worker's environment cache.

Owns: creating and listing users and tokens (a secret is printed once, on
stdout, with its note on stderr), `up` and `down` of the embedded server, and
handing `server`, `worker` and `cache` over to their own programs.
"""

from __future__ import annotations

import os
import sys

import click

from .cli_common import CONTEXT, PASSTHROUGH, UsageProblem, print_json
from .config import client as _client
from .sdk import ApiError


@click.group(context_settings=CONTEXT)
def user() -> None:
    """Users of the control plane: create (admins) and list (admins)."""


@user.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option("--admin", is_flag=True, help="The user may manage users and see everyone's runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the user and its token as JSON.")
def user_create(name, admin, as_json) -> int:
    """Create user NAME and print its first token (shown only once)."""
    created = _client().create_user(name, admin=admin)
    if as_json:
        print_json(created)
        return 0
    role = "admin" if created["admin"] else "user"
    sys.stderr.write(f"Created {role} {created['name']}; its token (token {created['token']['id']}) is shown only once:\n")
    sys.stdout.write(created["token"]["token"] + "\n")
    return 0


@user.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
def user_ls(as_json) -> int:
    """List the users (admins only)."""
    from .render import local_time, table

    users = _client().list_users()["users"]
    if as_json:
        print_json(users)
        return 0
    rows = [[u["name"], "admin" if u["admin"] else "user", local_time(u["created_at"])] for u in users]
    sys.stdout.write(table(["NAME", "ROLE", "CREATED"], rows) + "\n")
    return 0


@click.group(context_settings=CONTEXT)
def token() -> None:
    """Bearer tokens: create, list and revoke. Secrets are shown once, stored hashed."""


@token.command("create", context_settings=CONTEXT)
@click.option("--user", "user_name", metavar="NAME", help="For another user (admins only; default: you).")
@click.option("--worker", is_flag=True, help="A worker token, for `cast worker --token-file` (admins only).")
@click.option("--name", default="", metavar="TEXT", help="A note saying what the token is for.")
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON.")
def token_create(user_name, worker, name, as_json) -> int:
    """Create a token and print its secret (shown only once)."""
    if worker and user_name:
        raise UsageProblem("--worker tokens belong to no user; leave out --user")
    created = _client().create_token(kind="worker" if worker else "user", name=name, user=user_name)
    if as_json:
        print_json(created)
        return 0
    owner = "a worker" if created["kind"] == "worker" else created["user"]
    sys.stderr.write(f"Created token {created['id']} for {owner}; it is shown only once:\n")
    sys.stdout.write(created["token"] + "\n")
    return 0


@token.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
def token_ls(as_json) -> int:
    """List your tokens (an admin: everyone's), without their secrets."""
    from .render import local_time, table

    tokens = _client().list_tokens()["tokens"]
    if as_json:
        print_json(tokens)
        return 0
    rows = [[str(t["id"]), t["kind"], t["user"] or "-", t["name"] or "-", local_time(t["created_at"]),
             local_time(t["revoked_at"]) if t["revoked_at"] else "-"] for t in tokens]
    sys.stdout.write(table(["ID", "KIND", "USER", "NAME", "CREATED", "REVOKED"], rows, right={0}) + "\n")
    return 0


@token.command("revoke", context_settings=CONTEXT)
@click.argument("token_ids", type=int, nargs=-1, required=True, metavar="ID...")
def token_revoke(token_ids) -> int:
    """Revoke tokens: from now on they are refused (401)."""
    client = _client()
    failures = 0
    for token_id in token_ids:
        try:
            client.revoke_token(token_id)
        except ApiError as exc:
            sys.stderr.write(f"cast: error: token {token_id}: {exc.detail}\n")
            failures += 1
            continue
        sys.stdout.write(f"Token {token_id} revoked\n")
    return 1 if failures else 0


@click.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def up(args) -> int:
    """Run the embedded control plane and worker in the foreground (^C stops them)."""
    from .config import cast_home
    from .embedded import run_foreground

    run_foreground(cast_home(), args)
    return 0


@click.command(context_settings=CONTEXT)
@click.option("--kill", is_flag=True, help="Kill active runs (outputs not saved) instead of stopping them.")
def down(kill) -> int:
    """Stop the embedded control plane and worker; active runs are stopped, their outputs saved."""
    from .config import cast_home
    from .embedded import stop

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    say(stop(cast_home(), kill=kill, say=say))
    return 0


def _exec_module(module: str, args) -> None:
    command = [sys.executable, "-m", module, *args]
    sys.stdout.flush()
    os.execv(command[0], command)


@click.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def server(args) -> int:
    """Run a control plane (python -m cast.server ARGS; try `cast server --help`)."""
    _exec_module("cast.server", args)
    return 0


@click.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args) -> int:
    """Run a worker (python -m cast.worker ARGS; try `cast worker --help`)."""
    _exec_module("cast.worker", args)
    return 0


@click.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cache(args) -> int:
    """Show or prune a worker's environment cache: cast cache ls | prune [ARGS]."""
    if not args or args[0] not in ("ls", "prune", "-h", "--help"):
        raise UsageProblem("cast cache needs ls or prune")
    _exec_module("cast.worker", ("cache", *args))
    return 0


COMMANDS = (user, token, up, down, server, worker, cache)
