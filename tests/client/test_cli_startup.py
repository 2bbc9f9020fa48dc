"""The CLI stays light: a `cast` invocation imports neither server nor worker
code, nor the heavy libraries only some verbs need, nor the verb modules of
other verbs than its own, nor the standard library's modules that a warm
`cast run` outside a repository does without, so every command starts fast
(bench/bench_core.py measures it)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"
HEAVY = ("pydantic", "yaml", "httpx", "tarfile", "rich", "fastapi", "sqlalchemy", "cast.server", "cast.worker")
# What only other verbs than `cast run` need: their modules and the rules of hyperparameter searches.
NOT_FOR_RUN = ("cast.client.cli_data", "cast.client.cli_account", "cast.client.cli_admin",
               "cast.client.cli_hyper", "cast.client.cli_metrics", "cast.protocol.hyper", "cast.protocol.metrics")
# The standard library's modules `cast run` does without (http.client brings
# email and ssl; the SDK speaks HTTP through cast.client.transport): the
# ones the bare interpreter has not loaded already.
STDLIB_NOT_FOR_RUN = ("http", "email", "ssl", "secrets", "hashlib", "subprocess", "signal", "encodings.idna", "shlex")


def _modules_after(probe: str) -> list[str]:
    code = f"import sys, json\n{probe}\nprint(json.dumps(sorted(sys.modules)))\n"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True, timeout=60).stdout.splitlines()[-1])  # after what the probe printed


def _has(loaded: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in loaded)


def test_the_run_path_imports_nothing_heavy():
    loaded = _modules_after("from cast.client import cli, cli_spec, config, sdk, render, embedded, code\n"
                            "cli.cli.get_command(None, 'run')")
    for name in HEAVY:
        assert not _has(loaded, name), f"{name} imported at startup"
    for name in NOT_FOR_RUN:
        assert name not in loaded, f"{name} imported for `cast run`"
    bare = _modules_after("")
    for name in STDLIB_NOT_FOR_RUN:
        assert not _has(loaded, name) or _has(bare, name), f"{name} imported for `cast run`"


def test_a_warm_run_outside_a_repository_imports_no_more(tmp_path):
    """`cast run true` itself, to its end, against a server that answers as
    the control plane would: no request opens what the import left out."""
    from tests.client.test_transport import Scripted, ok

    page = b'{"chunks": [], "next_offset": 0, "finished": true, "outcome": {"status": "complete"}}\n'
    server = Scripted([[ok(b'{"id": 7}')],  # the follow stream comes on a connection of its own
                       [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%X\r\n%s\r\n0\r\n\r\n" % (len(page), page)]])
    probe = (f"import os\nos.chdir({str(tmp_path)!r})\n"
             f"os.environ.update(CAST_SERVER_URL='http://127.0.0.1:{server.port}', CAST_TOKEN='t')\n"
             "from cast.client import cli\n"
             "try:\n    cli.cli.main(args=['run', 'true'], standalone_mode=False)\nexcept SystemExit:\n    pass")
    loaded, bare = _modules_after(probe), _modules_after("")
    assert "cast.client.cli_runs" in loaded and "cast.client.render" in loaded  # it ran
    for name in STDLIB_NOT_FOR_RUN:
        assert not _has(loaded, name) or _has(bare, name), f"{name} imported by `cast run true`"


def test_a_verb_imports_its_own_module():
    loaded = _modules_after("from cast.client import cli\ncli.cli.get_command(None, 'ls')")
    assert "cast.client.cli_data" in loaded
    assert "cast.client.cli_admin" not in loaded  # looked for after cli_data's verbs


def test_every_verb_module_is_one_the_group_looks_in():
    from cast.client import cli

    modules = {path.stem for path in CLIENT.glob("cli_*.py") if "\nCOMMANDS = " in path.read_text()}
    assert modules == set(cli.VERB_MODULES)
    listed = cli.cli.list_commands(None)
    assert len(listed) == len(set(listed)), "a verb name taken twice"
    for name in listed:
        assert cli.cli.get_command(None, name).name == name
    assert cli.cli.get_command(None, "no-such-verb") is None
    with pytest.raises(TypeError, match="COMMANDS"):  # it would be lost: the group has no table of its own
        cli.cli.add_command(cli.cli.get_command(None, "run"), "again")


def test_client_imports_no_server_or_worker_code():
    for path in CLIENT.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for name in names:
                assert not name.startswith(("cast.server", "cast.worker", "..server", "..worker")), (path, name)
