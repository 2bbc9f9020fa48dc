"""The CLI stays light: a `cast` invocation imports neither server nor worker
code, nor the heavy libraries only some verbs need, nor the verb modules of
other verbs than its own, so every command starts fast (bench/bench_core.py
measures it)."""

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


def _modules_after(probe: str) -> list[str]:
    code = f"import sys, json\n{probe}\nprint(json.dumps(sorted(sys.modules)))\n"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)


def test_the_run_path_imports_nothing_heavy():
    loaded = _modules_after("from cast.client import cli, cli_spec, config, sdk, render, embedded, code\n"
                            "cli.cli.get_command(None, 'run')")
    for name in HEAVY:
        assert not [m for m in loaded if m == name or m.startswith(name + ".")], f"{name} imported at startup"
    for name in NOT_FOR_RUN:
        assert name not in loaded, f"{name} imported for `cast run`"


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
