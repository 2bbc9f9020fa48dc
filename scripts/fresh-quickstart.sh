#!/usr/bin/env bash
# The README's quickstart in a fresh virtual environment (not this machine's
# interpreter, no site packages) with a fresh CAST_HOME, so a dependency that
# only a well-used machine happens to have fails here. pip in the venv reads
# the host's pip configuration, as the README's install does.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d /tmp/cast-fresh.XXXXXX)"
venv="$work/venv"
export CAST_HOME="$work/home"
unset CAST_SERVER_URL CAST_TOKEN
stop() {
    # A failed step leaves no embedded server behind.
    [ -x "$venv/bin/cast" ] && [ -e "$CAST_HOME/server.lock" ] && "$venv/bin/cast" down >/dev/null 2>&1
    rm -rf "$work"
}
trap stop EXIT

python3 -m venv "$venv"
export PATH="$venv/bin:$PATH"
bash scripts/quickstart.sh 2>&1 | tee "$work/quickstart.log"

fail() { echo "fresh-quickstart: $*" >&2; exit 1; }
[ "$(command -v cast)" = "$venv/bin/cast" ] || fail "cast did not come from the fresh venv: $(command -v cast)"
grep -qx "hello" "$work/quickstart.log" || fail "the first run did not print hello"
grep -q "Run 1 complete" "$work/quickstart.log" || fail "run 1 did not complete"
grep -qE "^greeting\.txt[[:space:]]+6 B$" "$work/quickstart.log" || fail "cast ls runs/1 did not list greeting.txt (6 B)"
cast down
echo "fresh-quickstart: the README's quickstart passed in a fresh venv"
