"""`python -m cast.worker`: its arguments, each mistake one line and exit 2,
and the `cache` command listing and pruning environments."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cast.worker.__main__ import main
from cast.worker.locking import try_lock
from tests.factories import submit, wait_final


@pytest.fixture
def api(server):
    with server.api() as client:
        yield client


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("CAST_SERVER_URL", "CAST_WORKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("  a-token\n")
    return path


def refusal(capsys, argv: list[str]) -> str:
    """The one line `main(argv)` refuses `argv` with (exit code 2)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    return line


@pytest.mark.parametrize("flags, message", [
    ([], "no server: pass --server URL or set CAST_SERVER_URL"),
    (["--server", "http://127.0.0.1:9", "--max-runs", "0"], "--max-runs must be at least 1"),
    (["--server", "http://127.0.0.1:9", "--max-same-errors", "0"], "--max-same-errors must be at least 1"),
    (["--server", "http://127.0.0.1:9"], "no worker token: pass --token-file FILE or set CAST_WORKER_TOKEN"),
])
def test_serve_refuses_missing_or_bad_settings_in_one_line(capsys, clean_env, tmp_path, flags, message):
    assert refusal(capsys, [*flags, "--gpus", "none", "--work-dir", str(tmp_path / "w")]) == f"cast worker: {message}"
    assert not (tmp_path / "w").exists()  # refused before anything was made


def test_a_bad_gpu_list_is_refused(capsys, clean_env, tmp_path):
    line = refusal(capsys, ["--server", "http://127.0.0.1:9", "--gpus", "zero", "--work-dir", str(tmp_path)])
    assert line.startswith("cast worker: ") and "zero" in line


def test_a_token_file_that_cannot_be_read_or_is_blank_is_refused(capsys, clean_env, tmp_path):
    base = ["--server", "http://127.0.0.1:9", "--gpus", "none", "--work-dir", str(tmp_path / "w")]
    missing = tmp_path / "absent"
    assert refusal(capsys, [*base, "--token-file", str(missing)]) == (
        f"cast worker: cannot read the token file {missing}: No such file or directory")
    blank = tmp_path / "blank"
    blank.write_text(" \n")
    assert refusal(capsys, [*base, "--token-file", str(blank)]) == (
        "cast worker: no worker token: pass --token-file FILE or set CAST_WORKER_TOKEN")


def test_a_work_dir_in_use_by_another_worker_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CAST_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CAST_WORKER_TOKEN", "a-token")
    work_dir = tmp_path / "w"
    held = try_lock(work_dir / "worker.lock")
    try:
        assert refusal(capsys, ["--gpus", "none", "--work-dir", str(work_dir)]) == (
            f"cast worker: another worker is using {work_dir}")
    finally:
        held.close()


def test_docker_flags_are_refused_for_the_local_executor(capsys, clean_env, tmp_path, token_file):
    line = refusal(capsys, ["--server", "http://127.0.0.1:9", "--token-file", str(token_file), "--gpus", "none",
                            "--work-dir", str(tmp_path / "w"), "--executor", "local", "--pids-limit", "9",
                            "--base-image", "x:1"])
    assert line == "cast worker: --base-image, --pids-limit: only for the docker executor, not --executor local"


def test_cache_ls_and_prune_of_an_empty_cache(capsys, tmp_path):
    local = ["--work-dir", str(tmp_path), "--executor", "local"]
    assert main(["cache", "ls", *local]) == 0
    assert capsys.readouterr().out == "no cached environments\n"
    assert main(["cache", "ls", "--json", *local]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["cache", "prune", "--all", *local]) == 0
    assert capsys.readouterr().out == f"removed 0 environments\npackage cache {tmp_path / 'uv-cache'}: empty\n"
    assert refusal(capsys, ["cache", "prune", *local]) == (
        "cast worker: say which environments to remove: --older-than DURATION or --all")


def test_the_cache_command_lists_and_prunes_environments(api, worker):
    assert wait_final(api, submit(api, "true", pip=["termcolor"]), timeout=120)["status"] == "complete"

    def cache(*args):
        return subprocess.run([sys.executable, "-m", "cast.worker", "cache", *args, "--work-dir", str(worker.work_dir),
                               "--executor", "local"], capture_output=True, text=True, timeout=60)

    listed = cache("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["executor"] == "local" and entry["holds"] == "pip: termcolor" and entry["size"] > 0
    # The environment stays, and so does what it uses of the package cache.
    kept = cache("prune", "--older-than", "1d").stdout.splitlines()
    assert kept[0] == "removed 0 environments"
    assert kept[1].startswith(f"package cache {worker.work_dir / 'uv-cache'}: pruned by uv, ")
    pruned = cache("prune", "--all")
    assert pruned.returncode == 0 and "removed 1 environment" in pruned.stdout
    assert f"package cache {worker.work_dir / 'uv-cache'}: removed, " in pruned.stdout
    assert not (worker.work_dir / "uv-cache").exists()
    assert json.loads(cache("ls", "--json").stdout) == []
    refused = cache("prune")
    assert refused.returncode == 2 and "--older-than" in refused.stderr
    misread = cache("prune", "--older-than", "7x")
    assert misread.returncode == 2
    assert misread.stderr.strip() == ("cast worker: --older-than '7x' must be seconds, "
                                      "or a number with s, m, h or d (90, 90s, 5m, 2h, 7d)")


def test_bad_worker_arguments_are_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cast.worker", "--server", "http://127.0.0.1:9",
                             "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=30,
                            env={k: v for k, v in os.environ.items() if k != "CAST_WORKER_TOKEN"})
    assert result.returncode == 2
    assert result.stderr.strip() == "cast worker: no worker token: pass --token-file FILE or set CAST_WORKER_TOKEN"
