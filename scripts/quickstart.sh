#!/usr/bin/env bash
# Quickstart: install cast and run a first job on the embedded default (a local
# control plane and worker started in the background under CAST_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cast run "echo hello > greeting.txt && cat greeting.txt"
cast ls runs/1
