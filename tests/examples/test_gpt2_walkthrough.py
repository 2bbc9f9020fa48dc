"""The GPT-2 jokes walkthrough of docs/tutorial.md, end to end through the real
`cast` CLI against a real server and a local-executor worker, offline with
`--init tiny`:

1. generate text;  2. upload the jokes CSV and turn it into data.txt;
3. fine-tune on runs/2/data.txt;  4. generate from the mounted runs/3/output.

The example's code reaches the runs as the code bundle of a git repo made in
the test (the CLI run inside it); the data and fine-tune steps also run with
the example checked out by `--github-url file://...`.
transformers comes from the worker's interpreter, as a framework would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "gpt2"
JOKES_CSV = EXAMPLE / "data" / "onelinefun.csv"


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


def completed(result, run_id: int) -> list[str]:
    """The run's output lines, after checking that run `run_id` completed."""
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Casting run #{run_id}…"
    assert lines[-1] == f"Run {run_id} complete"
    start, end = lines.index("Run is running"), lines.index("Saving… done")
    return lines[start + 1:end]


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


def test_the_four_runs_of_the_jokes_walkthrough_from_a_code_bundle(example_repo, worker, cli, tmp_path):
    def cast_run(*args: str):
        return cli("run", *args, cwd=example_repo)

    downloads = tmp_path / "downloads"
    downloads.mkdir()

    # 1. GPT-2 writes something (a random one: the hub's weights are not reachable here).
    first = completed(cast_run("python examples/gpt2/generate.py --init tiny --length=30 --prompt=' '"), 1)
    assert generated_text(first).startswith(" ")

    # 2. The jokes: uploaded, mounted, turned into data.txt.
    uploaded = cli("upload", str(JOKES_CSV))
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.strip() == "Uploaded uploads/onelinefun.csv (248 KB)"
    second = completed(cast_run("-m", "uploads/onelinefun.csv", "python examples/gpt2/prepare_data.py"), 2)
    assert second == ["wrote 2950 jokes to data.txt"]
    listed = cli("ls", "runs/2", "--json")
    assert [(e["name"], e["type"]) for e in listed.json()] == [("data.txt", "file")]
    assert cli("cp", "runs/2/data.txt", str(downloads)).returncode == 0
    data = (downloads / "data.txt").read_text(encoding="utf-8")
    assert data.count("\n") == 2950 and data.endswith("\n")

    # 3. Fine-tuning on the mounted data.txt: the loss falls, the model is saved.
    third = completed(cast_run("-m", "runs/2/data.txt", finetune_command(60)), 3)
    steps = losses(third)
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5, (steps[0], steps[-1])
    output_files = {e["name"] for e in cli("ls", "runs/3/output", "--json").json()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= output_files
    assert cli("cp", "runs/3/output", str(downloads)).returncode == 0
    _assert_loads(downloads / "output")

    # 4. The fine-tuned model, mounted read-only, writes jokes.
    fourth = completed(cast_run("-m", "runs/3/output",
                                "python examples/gpt2/generate.py --model_name_or_path=output --length=30 --prompt=' '"), 4)
    generated_text(fourth)

    # The mounts are read-only: writing into them fails the run and changes nothing.
    appended = cast_run("-m", "runs/2/data.txt", "echo one more joke >> data.txt")
    assert appended.returncode != 0 and "Run 5 failed" in appended.stdout
    assert "Read-only file system" in appended.stdout
    touched = cast_run("-m", "runs/3/output", "touch output/model.safetensors output/extra.txt")
    assert touched.returncode != 0 and "Run 6 failed" in touched.stdout
    recopied = tmp_path / "recopied"
    assert cli("cp", "runs/2/data.txt", str(recopied)).returncode == 0
    assert recopied.read_text(encoding="utf-8") == data
    assert {e["name"] for e in cli("ls", "runs/3/output", "--json").json()} == output_files


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
    _assert_loads(tmp_path / "output")


def _assert_loads(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("Scaring men is easy.").input_ids
    assert tokenizer.decode(ids) == "Scaring men is easy."
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
