"""The CLI stays light: a `cast` invocation imports neither server nor worker
code, nor the heavy libraries only some verbs need, so every command starts
fast (the benchmark target is a warm `cast run "true"` under 0.35 s)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "client"
HEAVY = ("pydantic", "yaml", "httpx", "tarfile", "rich", "fastapi", "sqlalchemy", "cast.server", "cast.worker")


def test_the_run_path_imports_nothing_heavy():
    probe = (
        "import sys, json\n"
        "from cast.client import cli, cli_spec, config, sdk, render, embedded, code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout)
    for name in HEAVY:
        assert not [m for m in loaded if m == name or m.startswith(name + ".")], f"{name} imported at startup"


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
