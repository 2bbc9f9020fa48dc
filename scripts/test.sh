#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (see setup.sh --system), then runs every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
python3 -m pytest tests "$@"
