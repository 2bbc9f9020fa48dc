"""Benchmark: a warm `cast run "true"` end to end on the embedded default
against a bare `bash -c true`, in the same process run.

Prints both medians and their ratio. The embedded control plane and worker run
under a temporary CAST_HOME with the local executor and are stopped at the end.

    python bench/bench_core.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# The `cast` script installed beside this interpreter: a PATH lookup may hit a
# version-manager shim (pyenv's adds ~100 ms) that a user's install would not have.
CAST = str(Path(sys.executable).with_name("cast"))


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
        env.update(CAST_HOME=home, CAST_EXECUTOR="local")
        try:
            subprocess.run([CAST, "run", "true"], env=env, check=True, stdout=subprocess.DEVNULL)  # warm-up: starts the embedded default
            cast_times = [timed([CAST, "run", "true"], env) for _ in range(args.runs)]
            bare_times = [timed(["bash", "-c", "true"], env) for _ in range(args.runs)]
        finally:
            subprocess.run([CAST, "down"], env=env, stdout=subprocess.DEVNULL)
    cast_median, bare_median = statistics.median(cast_times), statistics.median(bare_times)
    print(f"warm cast run true : median {cast_median * 1000:.0f} ms over {args.runs} runs")
    print(f"bare bash -c true  : median {bare_median * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio              : {cast_median / bare_median:.1f}x  (goal: cast run under 350 ms)")


if __name__ == "__main__":
    main()
