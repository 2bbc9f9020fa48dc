#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (see setup.sh --system), then runs every test on SQLite, then the tests of the
# control plane and of its reliability again on PostgreSQL (a server the suite
# starts itself; see tests/conftest.py). Extra arguments go to both pytest runs.
#
# Why not the whole suite twice: on the 2-core CI machine the SQLite pass takes
# about 30 minutes; tests/server and tests/reliability hold the tests that
# exercise the database (queries, claims, races, faults), and the client,
# worker, web and example tests reach it only through the same routes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
python3 -m pytest tests "$@"
CAST_TEST_DATABASE=postgresql python3 -m pytest tests/server tests/reliability "$@"
