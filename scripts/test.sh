#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (see setup.sh --system), then runs every test on SQLite, then the tests of the
# control plane (tests/server) again on PostgreSQL (a server the suite starts
# itself; see tests/conftest.py). Extra arguments go to both pytest runs.
#
# Each pass runs its test files in parallel processes (pytest-xdist; one file's
# tests stay in one process, in order, so a module's fixtures start once): the
# tests mostly wait on servers, workers and runs. CAST_TEST_PROCESSES sets how
# many (2 unless set; 0 runs them in pytest's own process).
#
# Why not the whole suite twice: a pass costs about as much CPU as the 2-core CI
# machine has in half an hour (2026-12-02: 27 minutes on SQLite; the rest of the
# suite on PostgreSQL, run by hand, 25 more, every test passing), so two whole
# passes cannot fit well under CI's hour however they are spread. Every directory also runs on PostgreSQL
# (CAST_TEST_POSTGRES_PATHS=tests makes that pass the whole suite);
# tests/server holds the tests of every query, claim, migration and wake-up,
# and the client, worker, web and example tests reach the database only
# through the same routes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
parallel=(-n "${CAST_TEST_PROCESSES:-2}" --dist loadfile)
read -r -a postgres_paths <<< "${CAST_TEST_POSTGRES_PATHS:-tests/server}"
# The PostgreSQL pass runs even when the SQLite one failed: CI shows both.
failed=0
# The slowest tests are listed at the end of each pass: they are where the time goes.
python3 -m pytest "${parallel[@]}" --durations=30 tests "$@" || failed=1
CAST_TEST_DATABASE=postgresql python3 -m pytest "${parallel[@]}" --durations=20 "${postgres_paths[@]}" "$@" || failed=1
exit $failed
