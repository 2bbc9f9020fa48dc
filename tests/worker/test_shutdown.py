"""The worker's own shutdown (SIGTERM or SIGINT to `python -m cast.worker`)
loses no work: its runs are stopped as `cast stop` stops them (SIGTERM to the
command, outputs saved and pushed, `stopped` with the reason "worker shut
down"); a second signal, or runs still going past --shutdown-grace, kill them."""

from __future__ import annotations

import signal

import pytest

from tests.factories import get_run, output_paths, statuses, submit, wait_final, wait_for_line, wait_status

# Writes a step every 0.2 s, forever: only a stop ends it.
STEPS = "i=0; while true; do i=$((i+1)); echo $i >> steps.txt; echo step $i; sleep 0.2; done"
# The same, but deaf to SIGTERM: only a kill ends it.
DEAF_STEPS = "trap '' TERM; " + STEPS


@pytest.fixture
def api(server):
    with server.api() as client:
        yield client


def _exit_code(worker, timeout: float = 60) -> int:
    return worker.process.wait(timeout)


def test_sigterm_stops_the_runs_saves_their_outputs_then_exits(api, server, start_worker):
    worker = start_worker(server)
    run_id = submit(api, STEPS)
    wait_for_line(api, run_id, "step 5")

    worker.process.send_signal(signal.SIGTERM)

    assert _exit_code(worker) == 0
    run = get_run(api, run_id)
    assert run["status"] == "stopped" and run["reason"] == "worker shut down", run
    assert statuses(run)[-4:] == ["stopping", "saving", "pushing", "stopped"]
    assert output_paths(api, run_id) == ["steps.txt"]
    steps = api.get(f"/runs/{run_id}/outputs/steps.txt").text.split()
    assert len(steps) >= 5 and steps == [str(n) for n in range(1, len(steps) + 1)]


def test_the_shutdown_reason_is_the_workers_to_say(api, server, start_worker):
    worker = start_worker(server, extra_args=["--shutdown-reason", "server shut down"])
    run_id = submit(api, STEPS)
    wait_for_line(api, run_id, "step 2")
    worker.process.send_signal(signal.SIGINT)
    assert _exit_code(worker) == 0
    run = get_run(api, run_id)
    assert (run["status"], run["reason"]) == ("stopped", "server shut down")


def test_a_second_signal_kills_the_runs_and_drops_their_outputs(api, server, start_worker):
    worker = start_worker(server, extra_args=["--shutdown-grace", "600"])
    run_id = submit(api, DEAF_STEPS)
    wait_for_line(api, run_id, "step 3")

    worker.process.send_signal(signal.SIGTERM)
    wait_status(api, run_id, "stopping")
    worker.process.send_signal(signal.SIGTERM)

    assert _exit_code(worker, timeout=30) == 0  # far below the grace: the second signal cut it short
    run = get_run(api, run_id)
    assert (run["status"], run["reason"]) == ("killed", "worker shut down"), run
    assert statuses(run)[-3:] == ["stopping", "killing", "killed"]
    assert output_paths(api, run_id) == []


def test_runs_still_going_past_the_grace_are_killed(api, server, start_worker):
    worker = start_worker(server, extra_args=["--shutdown-grace", "1"])
    run_id = submit(api, DEAF_STEPS)
    wait_for_line(api, run_id, "step 3")

    worker.process.send_signal(signal.SIGTERM)

    assert _exit_code(worker, timeout=30) == 0
    run = wait_final(api, run_id)
    assert (run["status"], run["reason"]) == ("killed", "worker shut down"), run
    assert output_paths(api, run_id) == []


@pytest.mark.parametrize("args, message", [
    (["--shutdown-grace", "-1"], "--shutdown-grace must be between 0 and 86400 seconds"),
    (["--shutdown-reason", " "], "--shutdown-reason must be one printable line"),
])
def test_bad_shutdown_options_are_refused_in_one_line(server, start_worker, args, message):
    worker = start_worker(server, extra_args=args)
    assert _exit_code(worker) == 2
    assert message in worker.log_path.read_text()
