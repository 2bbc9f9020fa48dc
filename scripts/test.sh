#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (see setup.sh --system), then runs every test on SQLite and every test again
# on PostgreSQL (a server the suite starts itself; see tests/conftest.py).
# Extra arguments go to both pytest runs.
#
# The two passes run at the same time, each pytest's lines prefixed with its
# database: most of a pass's time is spent waiting (servers and workers
# starting, leases, runs that sleep, Docker builds), not computing, so on the
# 2-core CI machine two at once take far less than one after the other. The
# tests are made for it: every server, worker, database, bucket, container,
# image repository and compose project has a port or name of its own.
#
# tests/scale and tests/docker/test_compose_scale.py run once, in the SQLite
# pass: their clusters have PostgreSQL of their own whatever CAST_TEST_DATABASE
# says, so a second run would test the same thing again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system

pass() {  # NAME, then the pytest command
    local name=$1
    shift
    "$@" 2>&1 | sed -u "s/^/[$name] /"
}

pass sqlite python3 -m pytest tests "$@" &
sqlite=$!
CAST_TEST_DATABASE=postgresql pass postgresql python3 -m pytest tests \
    --ignore=tests/scale --ignore=tests/docker/test_compose_scale.py "$@" &
postgresql=$!

failed=0
wait "$sqlite" || { echo "test.sh: the SQLite pass failed" >&2; failed=1; }
wait "$postgresql" || { echo "test.sh: the PostgreSQL pass failed" >&2; failed=1; }
exit "$failed"
