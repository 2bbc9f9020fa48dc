"""The GPT-2 jokes walkthrough of docs/tutorial.md, end to end through the real
`cast` CLI against a real server and a local-executor worker, offline with
`--init tiny` (the runs and their checks: walkthrough.py).

The example's code reaches the runs as the code bundle of a git repo made in
the test (the CLI run inside it); the data and fine-tune steps also run with
the example checked out by `--github-url file://...`.
torch and transformers come from the worker's interpreter, which the local
executor's venv is layered over, so the runs ask for no packages.
"""

from __future__ import annotations

import subprocess

from tests.examples.walkthrough import (JOKES_CSV, assert_loads, completed, example_repo, finetune_command,  # noqa: F401
                         losses, walk_through)


def test_the_four_runs_of_the_jokes_walkthrough_from_a_code_bundle(example_repo, worker, cli, tmp_path):
    runs = walk_through(lambda *args: cli("run", *args, cwd=example_repo), cli, tmp_path / "downloads")
    assert all("Machine_Requested… done (local, cpu)" in run.stdout.splitlines() for run in runs)


def test_the_data_and_finetune_steps_from_a_git_url(example_repo, worker, cli, tmp_path):
    """As the original walkthrough took its scripts from a git repository: the
    same steps with the example checked out from `--github-url file://...`,
    typed outside any repository."""
    head = subprocess.run(["git", "-C", str(example_repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    source = ("--github-url", f"file://{example_repo}", "--commit-ref", "main")
    assert cli("upload", str(JOKES_CSV)).returncode == 0

    prepared = cli("run", *source, "-m", "uploads/onelinefun.csv", "python examples/gpt2/prepare_data.py")
    assert completed(prepared, 1) == ["wrote 2950 jokes to data.txt"]
    assert cli("info", "1", "--json").json()["spec"]["commit_sha"] == head

    finetuned = cli("run", *source, "-m", "runs/1/data.txt", finetune_command(30))
    steps = losses(completed(finetuned, 2))
    assert len(steps) == 30 and steps[-1]["loss"] < steps[0]["loss"] - 0.3, (steps[0], steps[-1])
    assert cli("cp", "runs/2/output", str(tmp_path)).returncode == 0
    assert_loads(tmp_path / "output")
