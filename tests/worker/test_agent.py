"""The worker end to end against the real server: a run's stages, its logs and
outputs, failures, stop, kill, timeouts, mounts, code bundles and GPUs."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tarfile
from types import SimpleNamespace

import httpx
import pytest

from tests.factories import (get_run, log_entries, log_texts, output_paths, statuses,
                             submit, wait_final, wait_for_line)
from tests.conftest import WorkerProcess, wait_until
from tests.realservers.relay import Relay, Request
from .test_source import commit, git

# Far longer than any bound below: only a command that was ended lets its run finish in time.
FOREVER = "sleep 3600"


@pytest.fixture
def api(server):
    with server.api() as client:
        yield client


def test_a_run_goes_through_every_stage_and_saves_only_what_it_wrote(api, worker, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"train.py": "import os\nprint('hello from', os.environ['CAST_RUN_ID'])\n"
                              "open('model.txt', 'w').write('weights')\n"}, "train")

    run_id = submit(api, "python train.py && echo oops >&2", git_url=f"file://{repo}")
    run = wait_final(api, run_id)

    assert run["status"] == "complete" and run["exit_code"] == 0
    assert statuses(run) == ["machine_requested", "building", "mounting", "running", "saving", "pushing",
                             "complete"]
    notes = {t["status"]: t["note"] for t in run["transitions"]}
    assert notes["building"] == "local, cpu" and notes["mounting"] == "cached"
    texts = log_texts(api, run_id)
    assert texts.index("Run is running") < texts.index(f"hello from {run_id}") < texts.index("Saving… done")
    assert log_texts(api, run_id, "stderr") == ["oops"]
    assert output_paths(api, run_id) == ["model.txt"]
    assert api.get(f"/runs/{run_id}/outputs/model.txt").content == b"weights"


def test_a_non_zero_exit_fails_the_run_and_still_saves_its_outputs(api, worker):
    run_id = submit(api, "echo partial > partial.txt; exit 3")
    run = wait_final(api, run_id)
    assert run["status"] == "failed" and run["exit_code"] == 3
    assert statuses(run)[-3:] == ["saving", "pushing", "failed"]
    assert output_paths(api, run_id) == ["partial.txt"]


def test_a_later_run_mounts_an_earlier_runs_output_read_only(api, worker):
    first = submit(api, "mkdir -p out && echo hello > out/greeting.txt")
    assert wait_final(api, first)["status"] == "complete"

    second = submit(api, "cat greeting.txt && cat prev/out/greeting.txt && "
                         "(echo changed > greeting.txt || echo refused) && echo mine > own.txt",
                    mounts=[{"resource": f"runs/{first}/out/greeting.txt"},
                            {"resource": f"runs/{first}", "path": "prev"}])
    run = wait_final(api, second)

    assert run["status"] == "complete", log_texts(api, second)
    assert log_texts(api, second, "stdout") == ["hello", "hello", "refused"]
    assert output_paths(api, second) == ["own.txt"]
    assert api.get(f"/runs/{first}/outputs/out/greeting.txt").content == b"hello\n"


def test_stop_terminates_the_command_and_keeps_its_outputs(api, worker):
    run_id = submit(api, f"echo partial > partial.txt; echo started; {FOREVER}")
    wait_for_line(api, run_id, "started", timeout=120)
    assert api.post(f"/runs/{run_id}/stop").status_code == 202
    run = wait_final(api, run_id, timeout=300)
    assert run["status"] == "stopped"
    assert statuses(run)[-4:] == ["stopping", "saving", "pushing", "stopped"]
    assert output_paths(api, run_id) == ["partial.txt"]


def test_kill_ends_the_command_at_once_and_drops_its_outputs(api, worker):
    # Ignored TERM is inherited by the sleep: only SIGKILL ends it.
    run_id = submit(api, f"trap '' TERM; echo partial > partial.txt; echo started; {FOREVER}")
    wait_for_line(api, run_id, "started", timeout=120)
    assert api.post(f"/runs/{run_id}/kill").status_code == 202
    run = wait_final(api, run_id, timeout=300)
    assert run["status"] == "killed" and statuses(run)[-2:] == ["killing", "killed"]
    assert output_paths(api, run_id) == []


def test_a_timeout_stops_the_run_with_its_reason(api, worker):
    run_id = submit(api, "echo x > before.txt; echo started; sleep 30", timeout=1)
    run = wait_final(api, run_id)
    assert run["status"] == "stopped" and run["reason"] == "timed out after 1s"
    assert "Stopping… (timed out after 1s)" in log_texts(api, run_id)
    assert output_paths(api, run_id) == ["before.txt"]


def test_a_failing_build_reports_why(api, worker):
    run_id = submit(api, "true", pip=["cast-no-such-package-zz"])
    run = wait_final(api, run_id)
    assert run["status"] == "build_failed"
    # uv's own error and its cause, not its whole output (which is in the log).
    assert run["reason"].startswith("uv failed (exit 1): error: No solution found when resolving dependencies | cause: ")
    assert "cast-no-such-package-zz was not found" in run["reason"]
    texts = log_texts(api, run_id)
    building = next(i for i, text in enumerate(texts) if text.startswith("Building environment virtualenv"))
    assert texts[building].endswith("(pip: 1 package, with uv)")
    assert building < next(i for i, text in enumerate(texts) if "cast-no-such-package-zz" in text)
    assert any(text.startswith("Building… failed: uv failed (exit 1): error: ") for text in texts)


def test_apt_packages_are_refused_by_the_local_executor(api, worker):
    run = wait_final(api, submit(api, "true", apt=["jq"]))
    assert run["status"] == "build_failed"
    assert run["reason"] == "the local executor cannot install apt packages; use the docker executor"


def test_a_repeat_run_reuses_the_built_environment(api, worker):
    first = wait_final(api, submit(api, "python -c 'import termcolor'", pip=["termcolor"]), timeout=120)
    second = wait_final(api, submit(api, "python -c 'import termcolor'", pip=["termcolor"]))
    assert first["status"] == second["status"] == "complete"
    notes = [{t["status"]: t["note"] for t in run["transitions"]}["mounting"] for run in (first, second)]
    assert notes == [None, "cached"]
    assert "Building… done (cached)" in log_texts(api, second["id"])


def test_code_bundles_are_fetched_and_extracted(api, worker):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"print('from the bundle')\n"
        info = tarfile.TarInfo("pkg/main.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    key = hashlib.sha256(buffer.getvalue()).hexdigest()
    assert api.put(f"/code/{key}", content=buffer.getvalue()).status_code in (200, 201)

    run_id = submit(api, "python pkg/main.py", code_bundle=key)
    assert wait_final(api, run_id)["status"] == "complete"
    assert log_texts(api, run_id, "stdout") == ["from the bundle"]
    assert output_paths(api, run_id) == []


def test_printed_lines_reach_a_follower_while_the_run_goes_on(api, worker):
    """Each line while the command still runs (it would run for an hour), in
    the order printed. How fast is for a benchmark to say, not a test."""
    run_id = submit(api, f"echo first; sleep 1; echo second; {FOREVER}")
    seen = []
    with api.stream("GET", f"/runs/{run_id}/logs/follow", params={"offset": 0}, timeout=300) as stream:
        for line in stream.iter_lines():
            chunk = json.loads(line)
            assert not chunk["finished"], f"the run ended before its lines arrived: {seen}"
            seen += [line for run in chunk["chunks"] if run["stream"] == "stdout" for line in run["lines"]]
            if "second" in seen:
                break
    assert seen == ["first", "second"]
    assert get_run(api, run_id)["status"] == "running"
    assert api.post(f"/runs/{run_id}/kill").status_code == 202
    assert wait_final(api, run_id, timeout=300)["status"] == "killed"


def test_gpu_runs_get_their_own_devices(server, start_worker, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    start_worker(server, extra_args=["--max-runs", "3"], env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    with server.api() as api:
        command = 'echo "gpus=[$CUDA_VISIBLE_DEVICES]"; sleep 1'
        gpu_runs = [submit(api, command, machine_type="gpu") for _ in range(2)]
        cpu_run = submit(api, command)
        for run_id in gpu_runs + [cpu_run]:
            assert wait_final(api, run_id)["status"] == "complete"
        seen = [log_texts(api, run_id, "stdout") for run_id in gpu_runs]
        assert sorted(seen) == [["gpus=[0]"], ["gpus=[1]"]]
        assert log_texts(api, cpu_run, "stdout") == ["gpus=[]"]
        notes = {t["status"]: t["note"] for t in get_run(api, gpu_runs[0])["transitions"]}
        assert notes["building"] == "local, gpu"


def test_the_worker_does_not_leak_its_token_into_runs(api, server, start_worker):
    start_worker(server, env={"CAST_WORKER_TOKEN": server.worker_token})
    run_id = submit(api, 'env | grep -c "^CAST_WORKER_TOKEN=" || true')
    wait_final(api, run_id)
    assert log_texts(api, run_id, "stdout") == ["0"]
    assert all(server.worker_token not in e["text"] for e in log_entries(api, run_id))


def test_the_mount_cache_downloads_once_and_makes_it_read_only(api, server, worker, tmp_path):
    from cast.protocol.messages import RunSpec
    from cast.protocol.worker_messages import Lease, LeaseMount
    from cast.worker.client import ServerClient
    from cast.worker.mounts import MountCache, MountError

    def lease(*mounts: LeaseMount) -> Lease:
        # No storage id: as on a host that does not share the server's files.
        return Lease(run_id=99, lease_token="token", lease_seconds=2, attempt=1, spec=RunSpec(command="true"),
                     mounts=list(mounts), storage_root="", storage_id="")

    producer = submit(api, "mkdir -p d/e && echo one > d/a.txt && echo two > d/e/b.txt && echo f > f.txt")
    assert wait_final(api, producer)["status"] == "complete"
    both = lease(LeaseMount(resource=f"runs/{producer}/d", path="d", kind="dir", local_path="/nonexistent"),
                 LeaseMount(resource=f"runs/{producer}/f.txt", path="f.txt", kind="file", local_path="/nonexistent"))
    client = ServerClient(server.url, server.worker_token)
    cache = MountCache(tmp_path / "mounts")
    folder, single = cache.prepare(both, client)

    assert (folder.source / "a.txt").read_text() == "one\n" and (folder.source / "e" / "b.txt").read_text() == "two\n"
    assert single.source.read_text() == "f\n" and single.source.name == "f.txt"
    assert oct(single.source.stat().st_mode & 0o777) == "0o444"
    assert oct((folder.source / "e").stat().st_mode & 0o777) == "0o555"
    assert cache.prepare(both, client) == [folder, single]
    with pytest.raises(MountError, match=f"cannot fetch runs/{producer}/missing: 404"):
        cache.prepare(lease(LeaseMount(resource=f"runs/{producer}/missing", path="m", kind="file",
                                       local_path="/x")), client)


def _relayed_run(api, server, base_env, work_dir, command: str) -> tuple[dict, list[tuple[str, dict]]]:
    """`command` run to its end by a worker whose requests pass a Relay: the
    run, and (path, JSON body) of what the worker sent about it."""
    relay = Relay(server.url)
    worker = WorkerProcess(server=SimpleNamespace(url=relay.url, data_dir=server.data_dir),
                           work_dir=work_dir, name="relayed", executor="local", env=base_env).start()
    try:
        run_id = submit(api, command)
        run = wait_final(api, run_id)
    finally:
        worker.stop()
        relay.close()
    return run, [(request.path, request.json()) for request in relay.requests if f"/runs/{run_id}/" in request.path]


def test_saving_and_pushing_reach_the_server_in_one_request(api, server, base_env, tmp_path):
    # Enough files that walking them takes a while (which a report queued
    # before the walk would not wait for).
    run, requests = _relayed_run(api, server, base_env, tmp_path / "relayed",
                                 "mkdir made && cd made && touch $(seq 2000)")
    run_id = run["id"]
    assert run["status"] == "complete" and len(output_paths(api, run_id)) == 2000
    sent = [(path.rsplit("/", 1)[-1], body) for path, body in requests]
    reports = [[report["status"] for report in body["reports"]] if kind == "statuses" else kind
               for kind, body in sent if kind in ("statuses", "staged")]
    # After the command: its outputs walked, `saving` and `pushing` in one
    # request (reports still queued before them go with them: on a fast
    # machine the command ends before `running` is sent), then the push,
    # then the outcome its answer decided.
    from_saving = list(itertools.dropwhile(lambda item: "saving" not in item, reports))
    assert from_saving[0][-2:] == ["saving", "pushing"] and from_saving[1:] == ["staged", ["complete"]], reports


def test_a_run_that_writes_nothing_pushes_nothing_and_reports_in_one_or_two_requests(api, server, base_env,
                                                                                      tmp_path):
    run, requests = _relayed_run(api, server, base_env, tmp_path / "relayed", "true")
    assert run["status"] == "complete" and run["exit_code"] == 0 and output_paths(api, run["id"]) == []
    assert statuses(run) == ["machine_requested", "building", "mounting", "running", "saving", "pushing",
                             "complete"]
    sent = [path.rsplit("/", 1)[-1] for path, _ in requests]
    assert not {"outputs", "staged", "plan", "commit"} & set(sent), sent
    bodies = [body for path, body in requests if path.endswith("/statuses")]
    reports = [[report["status"] for report in body["reports"]] for body in bodies]
    # `mounting` waited for `running` (nothing to place), and `running` for the
    # outcome when the command ended within its linger (a busy machine may
    # take longer); with no push to answer, the outcome went with `saving`
    # and `pushing`.
    assert reports in ([["mounting", "running", "saving", "pushing", "complete"]],
                       [["mounting", "running"], ["saving", "pushing", "complete"]]), reports
    if len(reports) == 1:  # the sandbox's line, printed while it ran, went with them
        [carried] = [report["logs"] for report in bodies[0]["reports"] if "logs" in report]
        assert carried["runs"][0]["lines"][0].startswith("Sandbox: ")
        assert "logs" not in sent


@pytest.mark.short_lease
def test_a_retried_run_that_writes_nothing_replaces_what_an_earlier_attempt_pushed(api, server, start_worker):
    run_id = submit(api, "true", retries=1)
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {server.worker_token}"}) as lost:
        worker_id = lost.post("/workers", json={"name": "lost", "executor": "local", "gpus": []}).json()["id"]
        lease = lost.post(f"/workers/{worker_id}/lease", json={"free_gpus": 0, "wait": 0}).json()
        assert lease["run_id"] == run_id and lease["attempt"] == 1
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w") as archive:
            info = tarfile.TarInfo("stale.txt")
            info.size = 5
            archive.addfile(info, io.BytesIO(b"stale"))
        pushed = lost.put(f"/runs/{run_id}/outputs", content=tar.getvalue(),
                          headers={"X-Lease-Token": lease["lease_token"]})
        assert pushed.status_code == 200, pushed.text
    # That worker is heard of no more: once its lease ran out, attempt 2 is queued.
    wait_until(lambda: get_run(api, run_id)["attempt"] == 2, timeout=120, what="the run to be queued again")
    assert output_paths(api, run_id) == ["stale.txt"]
    start_worker(server)
    run = wait_final(api, run_id, timeout=120)
    assert run["status"] == "complete" and run["attempt"] == 2
    assert output_paths(api, run_id) == []


# A stop or a kill reaches the worker with a heartbeat's answer, every third of
# the lease: a 1.5 s lease makes that half a second.
WALK_LEASE = {"CAST_LEASE_SECONDS": "1.5"}


def _leftovers(server, worker, run_id: int) -> list[str]:
    """What a run left behind: a staging folder on the server, its dirs in the worker's work dir."""
    return ([p.name for p in (server.data_dir / "tmp").glob(f"staged-{run_id}-*")]
            + [p.name for p in (worker.work_dir / "runs").glob(f"{run_id}-*")])


def _reports_saving(request: Request) -> bool:
    return request.path.endswith("/statuses") and any(report["status"] == "saving"
                                                       for report in request.json()["reports"])


def test_a_stop_heard_after_the_command_ended_saves_the_outputs_and_ends_the_run_stopped(
        start_server, base_env, tmp_path):
    server = start_server(env=WALK_LEASE)
    # Its `saving` held back, the worker has walked the outputs of a command that
    # ended on its own while the server still says `running` (or `building`,
    # where the command ended before `mounting` and `running` were sent: they
    # go in the held request): a stop is taken.
    # (Timing the stop to land in the walk instead failed once the walk got fast.)
    relay = Relay(server.url, hold=_reports_saving)
    worker = WorkerProcess(server=SimpleNamespace(url=relay.url, data_dir=server.data_dir),
                           work_dir=tmp_path / "relayed", name="relayed", executor="local", env=base_env).start()
    try:
        with server.api() as api:
            run_id = submit(api, "mkdir made && cd made && touch $(seq 2000)")
            assert relay.held.wait(300), "the worker never reported `saving`"
            stopped_at = len(relay.requests)
            assert api.post(f"/runs/{run_id}/stop").status_code == 202
            # Heartbeats go one after another: the second sent after the stop
            # left once the first one's answer, which carried it, was handled.
            wait_until(lambda: sum(1 for index, path in relay.answered
                                   if index >= stopped_at and path.endswith("/heartbeat")) >= 2,
                       timeout=60, what="two heartbeats answered after the stop")
            relay.release.set()
            run = wait_final(api, run_id, timeout=300)
            # Exit code 0: the command had ended on its own, so the stop reached no command.
            assert run["status"] == "stopped" and run["exit_code"] == 0, run
            assert statuses(run)[-5] in ("building", "running")
            assert statuses(run)[-4:] == ["stopping", "saving", "pushing", "stopped"]
            assert len(output_paths(api, run_id)) == 2000
            wait_until(lambda: _leftovers(server, worker, run_id) == [], timeout=120, what="the run's dirs removed")
    finally:
        relay.close()  # lets a held report go first
        worker.stop()


# The kill stops the walk itself, which must outlast the kill's way there and
# the "written" line's way to the test by far, or the kill lands after it (in
# the staging, or once all is queued): the kill's way is a poll and at most a
# heartbeat interval (0.5 s), 120,000 files walked in 0.5 s on the fast machine
# of 2026-12-04 (CI met the kill after the walk), 300,000 in about 1.3 s.
KILLED_FILES = 300_000
WRITE_MORE = (f"mkdir made && cd made && for d in $(seq {KILLED_FILES // 1000}); do mkdir $d && (cd $d && touch $(seq 1000)); done; "
              "echo written")


def test_a_kill_while_the_outputs_are_walked_stops_the_walk_and_saves_nothing(start_server, start_worker):
    server = start_server(env=WALK_LEASE)
    worker = start_worker(server)
    with server.api() as api:
        run_id = submit(api, WRITE_MORE)
        wait_for_line(api, run_id, "written", timeout=300)
        assert api.post(f"/runs/{run_id}/kill").status_code == 202
        run = wait_final(api, run_id, timeout=300)
        assert run["status"] == "killed" and statuses(run)[-3:] == ["running", "killing", "killed"], run
        assert output_paths(api, run_id) == []
        wait_until(lambda: f"run {run_id}: killed while its outputs were walked; the walk stopped"
                   in worker.log_path.read_text(), timeout=60, what="the walk to stop")
        wait_until(lambda: _leftovers(server, worker, run_id) == [], timeout=120, what="the run's dirs removed")
        after = submit(api, "echo fine > after.txt")  # the slot is free again
        assert wait_final(api, after, timeout=300)["status"] == "complete"
