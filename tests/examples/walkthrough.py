"""The GPT-2 jokes walkthrough of docs/tutorial.md as the executor tests share
it: the example's code as a git repo made in the test (fixture
`example_repo`), the four runs through the real `cast` CLI with their
assertions (`walk_through`), and the checks on what they print and save.

1. generate text;  2. upload the jokes CSV and turn it into data.txt;
3. fine-tune on runs/2/data.txt;  4. generate from the mounted runs/3/output;
then two runs that write into their mounts, which must fail and change nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import REPO_ROOT, CliResult

EXAMPLE = REPO_ROOT / "examples" / "gpt2"
JOKES_CSV = EXAMPLE / "data" / "onelinefun.csv"

CastCommand = Callable[..., CliResult]


def finetune_command(steps: int) -> str:
    """A tiny fine-tune: seconds on a CPU, and enough steps for the loss to fall for certain."""
    return ("python examples/gpt2/finetune.py --init tiny --train_data_file=data.txt --output_dir=output"
            f" --num_train_epochs=1 --max_steps={steps} --per_device_train_batch_size=8 --block_size=32"
            " --learning_rate=2e-3 --seed=7")


def make_example_repo(root: Path) -> Path:
    """A git repository holding a committed copy of examples/gpt2."""
    shutil.copytree(EXAMPLE, root / "examples" / "gpt2",
                    ignore=shutil.ignore_patterns("__pycache__", "data.txt", "output"))
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "jokes"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    return root


@pytest.fixture
def example_repo(tmp_path) -> Path:
    return make_example_repo(tmp_path / "jokes")


def completed(result: CliResult, run_id: int) -> list[str]:
    """The run's output lines, after checking that run `run_id` completed."""
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Casting run #{run_id}…"
    assert lines[-1] == f"Run {run_id} complete"
    start, end = lines.index("Run is running") + 1, lines.index("Saving… done")
    if lines[start].startswith("Sandbox: "):  # the local executor's line on how the run is held
        start += 1
    return lines[start:end]


def failed(result: CliResult, run_id: int) -> str:
    """The run's output, after checking that run `run_id` failed."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"Run {run_id} failed (exit code 1)" in result.stdout, result.stdout
    return result.stdout


def generated_text(lines: list[str]) -> str:
    assert lines[0] == "=== GENERATED SEQUENCE 1 ===", lines
    text = "\n".join(lines[1:])
    assert len(text.strip()) >= 10, text
    return text


def losses(output_lines: list[str]) -> list[dict]:
    """finetune.py's per-step records; its stdout is JSON lines only."""
    records = [json.loads(line) for line in output_lines]
    assert records[-1]["train_seconds"] > 0
    return [r for r in records if "loss" in r]


def assert_loads(folder: Path) -> None:
    """`folder` holds a GPT-2 and its tokenizer that transformers loads and runs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("Scaring men is easy.").input_ids
    assert tokenizer.decode(ids) == "Scaring men is easy."
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)


def walk_through(cast_run: CastCommand, cli: CastCommand, downloads: Path) -> list[CliResult]:
    """The four runs of the walkthrough, numbered 1 to 4 on a fresh server, and
    two more (5, 6) that write into their mounts. `cast_run(*args)` is
    `cast run` as the executor under test needs it (in the example's repo, with
    its packages); `cli(*args)` any other cast command. Returns the four runs'
    results, for what an executor prints around the job's own output."""
    downloads.mkdir()

    # 1. GPT-2 writes something (a random one: the hub's weights are not reachable here).
    first = cast_run("python examples/gpt2/generate.py --init tiny --length=30 --prompt=' '")
    assert generated_text(completed(first, 1)).startswith(" ")

    # 2. The jokes: uploaded, mounted, turned into data.txt.
    uploaded = cli("upload", str(JOKES_CSV))
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.strip() == "Uploaded uploads/onelinefun.csv (248 KB)"
    second = cast_run("-m", "uploads/onelinefun.csv", "python examples/gpt2/prepare_data.py")
    assert completed(second, 2) == ["wrote 2950 jokes to data.txt"]
    listed = cli("ls", "runs/2", "--json")
    assert [(e["name"], e["type"]) for e in listed.json()] == [("data.txt", "file")]
    assert cli("cp", "runs/2/data.txt", str(downloads)).returncode == 0
    data = (downloads / "data.txt").read_text(encoding="utf-8")
    assert data.count("\n") == 2950 and data.endswith("\n")

    # 3. Fine-tuning on the mounted data.txt: the loss falls, the model is saved.
    third = cast_run("-m", "runs/2/data.txt", finetune_command(60))
    steps = losses(completed(third, 3))
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5, (steps[0], steps[-1])
    output_files = {e["name"] for e in cli("ls", "runs/3/output", "--json").json()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= output_files
    assert cli("cp", "runs/3/output", str(downloads)).returncode == 0
    assert_loads(downloads / "output")

    # 4. The fine-tuned model, mounted read-only, writes jokes.
    fourth = cast_run("-m", "runs/3/output",
                      "python examples/gpt2/generate.py --model_name_or_path=output --length=30 --prompt=' '")
    generated_text(completed(fourth, 4))

    # The mounts are read-only: writing into them fails the run and changes nothing.
    # (Appending to data.txt may be refused by its mode before the mount is
    # consulted; a new file in a mounted folder can only be refused by the mount.)
    appended = failed(cast_run("-m", "runs/2/data.txt", "echo one more joke >> data.txt"), 5)
    assert "data.txt: " in appended
    touched = failed(cast_run("-m", "runs/3/output", "touch output/extra.txt"), 6)
    assert "touch: cannot touch 'output/extra.txt': Read-only file system" in touched.splitlines()
    recopied = downloads / "recopied.txt"
    assert cli("cp", "runs/2/data.txt", str(recopied)).returncode == 0
    assert recopied.read_text(encoding="utf-8") == data
    assert {e["name"] for e in cli("ls", "runs/3/output", "--json").json()} == output_files
    return [first, second, third, fourth]
