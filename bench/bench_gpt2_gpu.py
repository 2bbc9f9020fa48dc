"""Benchmark: the walkthrough's fine-tune on a GPU, bare and through cast.

On a machine with an NVIDIA GPU (torch and transformers installed, no network
needed), runs in one process run:

1. bare: `python examples/gpt2/finetune.py --init small` on the 2,950 jokes,
   10 epochs, batch 2;
2. the same command as `cast run -t gpu` on an embedded control plane with the
   local executor (the example and data.txt are uploaded and mounted, so no
   git repository is needed on the machine),

and prints both wall times (and the training seconds finetune.py reports) and
their ratio. Goal: cast adds at most 3% to the bare time.

    python bench/bench_gpt2_gpu.py [--epochs 10] [--batch 2] [--bf16] [--init tiny --machine-type cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "gpt2"
CAST = str(Path(sys.executable).with_name("cast"))


def train_seconds(output: str) -> float:
    """The `train_seconds` finetune.py prints as its last JSON line."""
    for line in reversed(output.splitlines()):
        match = re.search(r'\{"train_seconds".*\}', line)
        if match:
            return json.loads(match.group(0))["train_seconds"]
    raise SystemExit("finetune.py printed no train_seconds line:\n" + output[-2000:])


def timed(cmd: list[str], **kwargs) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--init", choices=["small", "tiny"], default="small",
                        help="tiny checks the script itself on a CPU in seconds")
    parser.add_argument("--machine-type", default="gpu", help="cpu checks the script on a machine without a GPU")
    args = parser.parse_args()
    train_args = [f"--num_train_epochs={args.epochs}", f"--per_device_train_batch_size={args.batch}",
                  *(["--bf16"] if args.bf16 else [])]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "data.txt"
        subprocess.run([sys.executable, EXAMPLE / "prepare_data.py", f"--csv_file={EXAMPLE / 'data' / 'onelinefun.csv'}",
                        f"--output_file={data}"], check=True)

        bare_wall, bare_out = timed([sys.executable, str(EXAMPLE / "finetune.py"), "--init", args.init,
                                     f"--train_data_file={data}", f"--output_dir={scratch / 'bare-output'}", *train_args])

        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        env.update(CAST_HOME=str(scratch / "home"), CAST_EXECUTOR="local")
        try:
            subprocess.run([CAST, "upload", str(data), "-n", "data.txt"], env=env, check=True, cwd=scratch)
            subprocess.run([CAST, "upload", str(EXAMPLE), "-n", "gpt2"], env=env, check=True, cwd=scratch)
            command = (f"python gpt2/finetune.py --init {args.init} --train_data_file=data.txt --output_dir=output "
                       + " ".join(train_args))
            cast_wall, cast_out = timed([CAST, "run", "-t", args.machine_type, "-m", "uploads/data.txt", "-m", "uploads/gpt2",
                                         command], env=env, cwd=scratch)
        finally:
            subprocess.run([CAST, "down"], env=env, cwd=scratch)

    print(f"bare fine-tune      : {bare_wall:.1f} s wall, {train_seconds(bare_out):.1f} s training")
    print(f"cast run -t {args.machine_type:<11}: {cast_wall:.1f} s wall, {train_seconds(cast_out):.1f} s training")
    print(f"ratio (wall)        : {cast_wall / bare_wall:.3f}x  (goal: at most 1.03x)")


if __name__ == "__main__":
    main()
