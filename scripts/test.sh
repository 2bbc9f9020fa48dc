#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (see setup.sh --system), then runs every test on SQLite, then the tests of the
# control plane again on PostgreSQL (a server the suite starts itself; see
# tests/conftest.py). Extra arguments go to both pytest runs.
#
# Why not the whole suite twice: on the 2-core CI machine the SQLite pass takes
# about 45 minutes. Every directory also runs on PostgreSQL
# (`CAST_TEST_DATABASE=postgresql python3 -m pytest tests/DIR`), but both whole
# passes at once took about 80 minutes here (2026-12-01), too close to CI's
# limit; tests/server holds the tests of every query, claim, migration and
# wake-up, and the client, worker, web and example tests reach the database
# only through the same routes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
# The slowest tests are listed at the end of each pass: they are where the time
# goes when the suite has to fit CI's hour with the PostgreSQL pass grown.
python3 -m pytest --durations=40 tests "$@"
CAST_TEST_DATABASE=postgresql python3 -m pytest --durations=20 tests/server "$@"
