"""No run stuck forever: a kill never waits behind a blocked push, and no run
stays in a non-final, leased stage past the server's bound, even while its
worker keeps heartbeating.

The push is blocked for real: the worker talks to the server through a TCP
proxy that stops forwarding a connection once it has carried more than a log
batch ever does (tests/reliability/helpers.py), so the push's sender blocks
as the buffers fill while heartbeats, on their own connections, go on.
"""

from __future__ import annotations

import dataclasses

from tests.factories import output_paths, statuses, submit, wait_final, wait_status

STALL_AFTER = 16 << 20  # bytes towards the server: a push carries more, nothing else does


def test_a_kill_does_not_wait_behind_a_stalled_output_push(server, start_worker, proxy_to, cast_via):
    proxy = proxy_to(server.port)
    start_worker(dataclasses.replace(server, url=proxy.url))
    proxy.stall_uploads(STALL_AFTER)
    cast = cast_via(server.url, server.admin_token)
    with server.api() as api:
        run_id = submit(api, "head -c 256M /dev/zero > big.bin")
        wait_status(api, run_id, "pushing", timeout=120)
        assert cast.run("kill", str(run_id)).returncode == 0
        run = wait_final(api, run_id, timeout=60)
        assert run["status"] == "killed", run
        assert statuses(run)[-3:] == ["pushing", "killing", "killed"]
        assert output_paths(api, run_id) == []
        proxy.resume()  # the stalled push now reaches a server that refuses it (the run is killed)
        after = submit(api, "echo fine > after.txt")
        assert wait_final(api, after, timeout=60)["status"] == "complete"
        assert output_paths(api, after) == ["after.txt"]
        assert wait_final(api, run_id)["status"] == "killed"
