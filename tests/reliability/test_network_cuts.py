"""Network cuts between the CLI and the server: the `cast` command talks to the
server through a TCP proxy on loopback, and the test drops every connection
the proxy carries, several times, while `cast logs -f` or `cast run` follows a
run (alternately with a clean close and with a reset). Each reconnects from its
offset: every line is printed exactly once, in order, none missing."""

from __future__ import annotations

import pytest

from tests.conftest import CliResult, wait_until
from tests.factories import log_texts, run_id_of, submit, wait_status

LINES = 60
COMMAND = f'for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.05; done'
CUT_AFTER = ["line 10", "line 25", "line 40", "line 55"]


def _cut_while_following(proxy, printed_path, follower) -> int:
    """Cut the proxy's connections each time the follower has printed the next
    CUT_AFTER line; the number of connections cut."""
    cut = 0
    for index, marker in enumerate(CUT_AFTER):
        wait_until(lambda: marker in printed_path.read_text().splitlines() or follower.poll() is not None,
                   timeout=60, what=f"the follower to print {marker!r}")
        cut += proxy.cut(abort=index % 2 == 1)
    follower.wait(timeout=60)
    return cut


@pytest.mark.parametrize("command", ["logs", "run"])
def test_following_through_cut_connections_prints_every_line_once(command, server, worker, proxy_to, cast_via):
    proxy = proxy_to(server.port)
    cast = cast_via(proxy.url, server.admin_token)
    if command == "logs":
        with server.api() as api:
            run_id = submit(api, COMMAND)
        follower, stdout, stderr = cast.start("logs", "-f", str(run_id), name="follower")
    else:
        follower, stdout, stderr = cast.start("run", COMMAND, name="follower")
        wait_until(lambda: "Casting run #" in stdout.read_text(), timeout=30, what="the run to be submitted")
        run_id = run_id_of(CliResult(0, stdout.read_text(), ""))

    cuts = _cut_while_following(proxy, stdout, follower)
    errors = stderr.read_text()
    assert follower.returncode == 0, errors
    assert cuts >= len(CUT_AFTER), "each cut should have dropped the follow stream"
    assert "reconnecting" in errors and "Traceback" not in errors

    assert wait_status(server, run_id, "complete")["status"] == "complete"
    printed = stdout.read_text().splitlines()
    if command == "run":
        printed = printed[2:]  # "Casting run #N…" and "Stop viewing logs with ^C" come before the log
    assert [line for line in printed if line.startswith("line ")] == [f"line {i}" for i in range(1, LINES + 1)]
    # Everything the log holds, exactly once and in order, then the outcome.
    assert printed[:-2] == log_texts(server, run_id)
    assert printed[-1] == f"Run {run_id} complete"
