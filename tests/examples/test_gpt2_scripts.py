"""The GPT-2 example's scripts run as plain subprocesses, without cast: the data
step, a tiny fine-tune whose loss falls and whose output loads, generation from
that output, and the one-line refusal when the model hub is out of reach."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port

EXAMPLE = REPO_ROOT / "examples" / "gpt2"
JOKES_CSV = EXAMPLE / "data" / "onelinefun.csv"
# Small enough for seconds on a CPU, long enough for the loss to fall for certain.
TINY_FINETUNE = ["--init", "tiny", "--num_train_epochs", "1", "--max_steps", "60", "--block_size", "32",
                 "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--seed", "7"]


def script_env(home: Path, **extra: str) -> dict:
    """No hub cache from the developer's machine, and no hub at all unless a test says otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CAST_"))}
    return {**env, "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1", **extra}


def run_script(name: str, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """data.txt from the jokes CSV, and a tiny GPT-2 fine-tuned on it."""
    workdir = tmp_path_factory.mktemp("gpt2")
    env = script_env(workdir, CAST_METRICS=str(workdir / "metrics.jsonl"))
    prepared = run_script("prepare_data.py", "--csv_file", str(JOKES_CSV), "--output_file", "data.txt",
                          cwd=workdir, env=env)
    assert prepared.returncode == 0, prepared.stderr
    trained = run_script("finetune.py", *TINY_FINETUNE, "--train_data_file", "data.txt",
                         "--output_dir", "output", cwd=workdir, env=env)
    assert trained.returncode == 0, trained.stderr
    return workdir, env, prepared, trained


def test_finetune_reports_its_loss_through_the_metrics_file(finetuned):
    workdir, _, _, trained = finetuned
    points = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [p for p in points if p["name"] == "loss"]
    printed = [line for line in json_lines(trained.stdout) if "loss" in line and "step" in line]
    assert [p["step"] for p in losses] == [line["step"] for line in printed] == list(range(1, 61))
    assert [round(p["value"], 4) for p in losses] == [line["loss"] for line in printed]
    assert {p["name"] for p in points} == {"loss", "learning_rate", "mean_loss"}


def test_prepare_data_writes_each_of_the_2950_jokes_on_its_own_line(finetuned):
    workdir, _, prepared, _ = finetuned
    lines = (workdir / "data.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # the file ends with a newline
    assert len(lines[:-1]) == 2950
    with open(JOKES_CSV, newline="", encoding="utf-8") as stream:
        first = next(csv.DictReader(stream))
    assert lines[0] == first["Joke"]
    assert prepared.stdout.strip() == "wrote 2950 jokes to data.txt"


def test_prepare_data_collapses_line_breaks_inside_a_joke(tmp_path):
    with open(tmp_path / "jokes.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_ALL)
        writer.writerows([["ID", "Joke"], [1, "Two lines,\r\nfirst and\nsecond"], [2, "   "], [3, 'Say "hi"']])
    result = run_script("prepare_data.py", "--csv_file", "jokes.csv", "--output_file", "out.txt",
                        cwd=tmp_path, env=script_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == 'Two lines, first and second\nSay "hi"\n'


def test_prepare_data_refuses_a_csv_without_a_joke_column(tmp_path):
    (tmp_path / "other.csv").write_text("ID,Text\n1,hello\n", encoding="utf-8")
    result = run_script("prepare_data.py", "--csv_file", "other.csv", cwd=tmp_path, env=script_env(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip() == "prepare_data.py: other.csv has no Joke column (columns: ID, Text)"
    assert not (tmp_path / "data.txt").exists()


def test_finetune_logs_a_falling_loss_per_step_and_epoch_and_its_training_time(finetuned):
    _, _, _, trained = finetuned
    records = json_lines(trained.stdout)
    assert len(records) == len(trained.stdout.splitlines())  # stdout is JSON lines only
    summary, steps = records[0], [r for r in records if "step" in r and "loss" in r]
    assert summary["device"] == "cpu" and summary["total_steps"] == 60
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert all(r["epoch"] == 0 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5, (steps[0], steps[-1])
    epochs = [r for r in records if "mean_loss" in r]
    assert epochs == [{"epoch": 0, "mean_loss": epochs[0]["mean_loss"], "steps": 60}]
    assert records[-1]["train_seconds"] > 0 and records[-1]["steps"] == 60


def test_finetune_saves_a_model_and_tokenizer_that_transformers_loads(finetuned):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, _, _, _ = finetuned
    model = AutoModelForCausalLM.from_pretrained(workdir / "output")
    tokenizer = AutoTokenizer.from_pretrained(workdir / "output")
    assert model.config.model_type == "gpt2" and model.config.n_layer == 2
    ids = tokenizer("I just asked my husband").input_ids
    assert len(ids) > 1 and tokenizer.decode(ids) == "I just asked my husband"
    assert model(input_ids=torch.tensor([ids])).logits.shape[-1] == model.config.vocab_size


def test_generate_from_the_finetuned_folder_prints_sequences(finetuned):
    workdir, env, _, _ = finetuned
    result = run_script("generate.py", "--model_name_or_path", "output", "--length", "30", "--prompt", " I",
                        "--num_return_sequences", "2", "--top_k", "50", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "=== GENERATED SEQUENCE 1 ==="
    second = lines.index("=== GENERATED SEQUENCE 2 ===")
    first_text = "\n".join(lines[1:second])
    assert first_text.startswith(" I") and len(first_text) > 20


def test_generate_with_the_same_seed_repeats_itself(finetuned):
    workdir, env, _, _ = finetuned
    runs = [run_script("generate.py", "--model_name_or_path", "output", "--length", "15", "--seed", "3",
                       cwd=workdir, env=env) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout


def test_generate_from_a_random_tiny_gpt2_prints_text(tmp_path):
    result = run_script("generate.py", "--init", "tiny", "--length", "25", "--prompt", "Hello",
                        cwd=tmp_path, env=script_env(tmp_path))
    assert result.returncode == 0, result.stderr
    header, *text = result.stdout.splitlines()
    assert header == "=== GENERATED SEQUENCE 1 ===" and "\n".join(text).startswith("Hello")


@pytest.mark.parametrize("script, offline", [("generate.py", "HF_HUB_OFFLINE"),
                                             ("generate.py", "unreachable endpoint"),
                                             ("finetune.py", "HF_HUB_OFFLINE")])
def test_a_hub_model_without_the_hub_fails_in_one_line_that_names_init(tmp_path, script, offline):
    env = script_env(tmp_path)
    if offline == "unreachable endpoint":  # a loopback port nobody listens on: refused, for certain
        del env["HF_HUB_OFFLINE"]
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "jokes.txt").write_text("a joke\n" * 100)
    extra = ["--train_data_file", "jokes.txt", "--output_dir", "output"] if script == "finetune.py" else []
    result = run_script(script, "--model_name_or_path", "gpt2", *extra, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith(f"{script}: 'gpt2' is neither a local folder nor in the hub cache")
    assert "cannot be reached" in message and "--init tiny" in message
    assert not (tmp_path / "output").exists()


def test_generate_from_a_missing_folder_says_so(tmp_path):
    result = run_script("generate.py", "--model_name_or_path", "./no-such-model", cwd=tmp_path,
                        env=script_env(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "generate.py: no model folder at ./no-such-model"
