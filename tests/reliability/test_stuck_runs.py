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

import httpx
import pytest

from tests.conftest import worker_on_tmpfs
from tests.factories import log_texts, output_paths, statuses, submit, wait_final, wait_status
from tests.server.conftest import Api

STALL_AFTER = 16 << 20  # bytes towards the server: a push carries more, nothing else does
BOUNDS = {"CAST_STAGE_TIMEOUT_SECONDS": "3", "CAST_HALT_TIMEOUT_SECONDS": "2"}


def test_a_kill_does_not_wait_behind_a_stalled_output_push(server, proxy_to, cast_via, base_env):
    proxy = proxy_to(server.port)
    with worker_on_tmpfs(dataclasses.replace(server, url=proxy.url), base_env, name="stalled"):
        proxy.stall_uploads(STALL_AFTER)
        _kill_ends_a_stalled_push(server, proxy, cast_via(server.url, server.admin_token))


def _kill_ends_a_stalled_push(server, proxy, cast) -> None:
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


def test_a_push_stalled_past_the_stage_bound_fails_the_run(start_server, proxy_to, cast_via, base_env):
    server = start_server(env=BOUNDS)
    proxy = proxy_to(server.port)
    with worker_on_tmpfs(dataclasses.replace(server, url=proxy.url), base_env, name="stalled",
                         extra_args=["--max-runs", "1"]):
        _stalled_push_fails_the_run(server, proxy, cast_via)


def _stalled_push_fails_the_run(server, proxy, cast_via) -> None:
    proxy.stall_uploads(STALL_AFTER)
    result = cast_via(server.url, server.admin_token).run("run", "head -c 64M /dev/zero > big.bin")
    reason = "pushing for longer than 3.00s, the server's bound (CAST_STAGE_TIMEOUT_SECONDS)"
    assert result.returncode == 1, result
    assert result.stdout.splitlines()[-1] == f"Run 1 failed: {reason}"
    with server.api() as api:
        run = api.get("/runs/1").json()
        assert (run["status"], run["reason"]) == ("failed", reason)
        assert f"Pushing… failed: {reason}" in log_texts(api, 1, "cast")
        # Its one slot is free again while the push is still stalled: the
        # worker let go of the run the server ended.
        after = submit(api, "echo fine > after.txt")
        assert wait_final(api, after, timeout=60)["status"] == "complete"
        proxy.resume()
        assert wait_final(api, 1)["status"] == "failed"


# The reports that bring a leased run to the stage, and the user's call that
# moves it on from there; the status the reaper ends it with.
STAGES = {
    "building": ((), None, "failed"),
    "saving": (("mounting", "running", "saving"), None, "failed"),
    "pushing": (("mounting", "running", "saving", "pushing"), None, "failed"),
    "stopping": (("mounting", "running"), "stop", "failed"),
    "killing": (("mounting", "running"), "kill", "killed"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_no_run_stays_in_a_stage_past_its_bound_while_its_worker_heartbeats(start_server, stage):
    reports, action, final = STAGES[stage]
    server = start_server(env=BOUNDS)
    bound, setting = (("2.00s", "CAST_HALT_TIMEOUT_SECONDS") if stage in ("stopping", "killing")
                      else ("3.00s", "CAST_STAGE_TIMEOUT_SECONDS"))
    worker = httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {server.worker_token}"})
    with server.api() as api, worker:
        stuck = Api(user=api, worker=worker)  # a live worker that is stuck elsewhere
        run_id = submit(api, "true")
        lease = stuck.lease(stuck.register(name="stuck"), wait=5)
        assert lease["run_id"] == run_id
        with stuck.heartbeats(lease):
            stuck.advance(lease, *reports)
            if action:
                assert api.post(f"/runs/{run_id}/{action}").is_success
            run = wait_final(api, run_id, timeout=60)
        reason = f"{stage} for longer than {bound}, the server's bound ({setting})"
        assert (run["status"], run["reason"]) == (final, reason)
        assert statuses(run)[-2:] == [stage, final]
        # The worker's late report is refused: the run's end stands.
        late = worker.post(f"/runs/{run_id}/status", json={"lease_token": lease["lease_token"], "status": "complete"})
        assert late.status_code == 409
