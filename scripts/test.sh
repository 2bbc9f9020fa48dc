#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (see setup.sh --system), then runs every test on SQLite, then every test
# again on PostgreSQL (a server the suite starts itself; see tests/conftest.py)
# but those that would run exactly as they did: tests/scale and the compose
# tests start their own PostgreSQL whatever the pass, tests/protocol and
# tests/docs open no database. Extra arguments go to both pytest runs.
#
# Each pass runs its test files in parallel processes (pytest-xdist; one file's
# tests stay in one process, in order, so a module's fixtures start once):
# CAST_TEST_PROCESSES sets how many (3 unless set; 0 runs them in pytest's own
# process). The tests mostly wait on servers, workers and runs, and a pass's
# wall time is set by its longest files: on 2026-12-02 (2 cores) the SQLite
# pass took 20:22 in 2 processes (1.1 cores busy) and 19:13 in 4 (1.3), the
# PostgreSQL pass 18:42 in 3 (1.3); both passes side by side were slower than
# one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
parallel=(-n "${CAST_TEST_PROCESSES:-3}" --dist loadfile)
same_on_both=(--ignore tests/scale --ignore tests/docker/test_compose.py --ignore tests/docker/test_compose_scale.py
              --ignore tests/protocol --ignore tests/docs)
# The PostgreSQL pass runs even when the SQLite one failed: CI shows both.
failed=0
# The slowest tests are listed at the end of each pass: they are where the time goes.
python3 -m pytest "${parallel[@]}" --durations=30 tests "$@" || failed=1
CAST_TEST_DATABASE=postgresql python3 -m pytest "${parallel[@]}" --durations=30 tests "${same_on_both[@]}" "$@" || failed=1
exit $failed
