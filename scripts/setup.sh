#!/usr/bin/env bash
# Installs cast and, with --system, everything its whole test suite needs on a
# Debian host: git, bubblewrap, the Docker engine (started if not running), Chromium, Firefox ESR, and
# the offline base image (built once, reused while its tag exists).
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[all]'

[ "${1:-}" = "--system" ] || exit 0

# The GPT-2 example's tests import torch and transformers on the host. torch is
# pinned: that release's CPU wheel is what this machine's pip settings find; a
# bare requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0 -r examples/gpt2/requirements.txt

need=()
command -v git >/dev/null || need+=(git)
command -v bwrap >/dev/null || need+=(bubblewrap)  # the local executor's sandbox
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/firefox-esr ] || need+=(firefox-esr)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "setup: starting the Docker engine"
    (setsid dockerd >/var/log/dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi

bash docker/build-base-image.sh
