"""The worker's agent: registers with the control plane, leases runs while it has
a free slot, and carries each leased run through its lifecycle.

Per run (`RunController`, in its own thread): building → mounting → running →
saving → pushing → complete / failed, with `stopped` (SIGTERM, a grace period,
outputs saved), `killed` (SIGKILL, outputs dropped), `build_failed` and
`mount_failed` on the way. A worker told to shut down stops its runs the same
way (outputs saved and pushed) and kills those still going past its bound.
One heartbeat thread holds every run's lease with one request (a third of the
lease apart, at most a second) and carries out stop and kill within about a
second; a lost lease kills the process and abandons the run. Everything the server is told goes through the run's ordered
outbox (cast.worker.outbox), so nothing is lost while the server is away.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from cast.protocol.messages import LogStream
from cast.protocol.worker_messages import HeldLease, Lease, LeaseState, heartbeat_interval
from cast.protocol.retries import Failure, RetryPolicy
from cast.protocol.status import RunStatus, is_final
from cast.protocol.validate import parse_machine_type
from cast.worker.client import FIRST_DELAY, Refused, ServerClient, ServerError, ServerUnavailable, with_retries
from cast.worker.executors.base import BuildFailed, Executor, ExitResult, Job, RunningProcess
from cast.worker.fsops import remove_tree
from cast.worker.metrics import RunMetrics
from cast.worker.mounts import MountCache, MountError
from cast.worker.objects import DEFAULT_CACHE_BYTES
from cast.worker.outbox import Outbox
from cast.worker.outputs import Outputs, snapshot
from cast.worker.resources import GpuPool, cpu_count, disk_nearly_full, memory_bytes
from cast.worker.source import SourceCache, SourceError

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL when a run is stopped
LEASE_WAIT = 10.0  # seconds a lease request waits on the server for a queued run
LEASE_RETRIES = RetryPolicy(first_delay=FIRST_DELAY, max_delay=1.0)  # a failed lease request, asked again
# How long `mounting` waits for `running` to share its request: a run with no
# code or data to fetch (or its code cached) places it in milliseconds, and
# its outcome then comes one round trip sooner; one that fetches them reports
# `mounting` this much later.
MOUNTING_LINGER = 0.1
# How long `running` waits for company: a command that ends within it sends
# its statuses, its lines and its outcome in one request (a short trial of a
# search, `true`); a longer one is reported `running` this much later.
RUNNING_LINGER = 0.1


def _last_line(text: str) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


class RunController:
    """One leased run, from lease to its final status.

    Five kinds of thread act on a run, all through this class:
    - the run's own thread (`execute`) carries it through the stages, queueing
      each status in the outbox, and cleans up after the final one;
    - the agent's heartbeat thread (`Agent._heartbeats`) holds the lease and,
      through `on_lease_state`, carries the server's `stopping` and `killing`
      out as `request_stop` and `request_kill`;
    - a timer thread calls `request_stop` when the run's timeout passes;
    - the outbox's sender asks `_lease_still_held` after a 409 (which may find
      the lease lost, or a stop or kill) and ends the run `failed` when the
      server refuses one of its reports for good;
    - the agent calls `request_stop` and then, past its bound, `request_kill`
      when the worker shuts down (`interrupt` for a run leased meanwhile).
    `_lock` guards the process handle and the flags declared with it, and makes
    "look at the flags, then queue a status" one step: once a final status was
    queued out of turn (`_abort`: kill, a stop before the command started,
    shutdown, a refused report, a lost lease), the run thread queues nothing
    more; once the run thread queued the final status, nothing else is. It is
    re-entrant because `request_stop` may abort. `_finished` is set
    once every report was delivered: the heartbeats leave the run out and every
    later request is a no-op.
    """

    def __init__(self, agent: "Agent", lease: Lease, gpus: list[int]):
        self.agent = agent
        self.lease = lease
        self.run_id = lease.run_id
        self.token = lease.lease_token
        self.spec = lease.spec
        self.gpus = gpus
        self.workdir = agent.runs_dir / f"{self.run_id}-{self.token[:8]}"
        self.outbox = Outbox(agent.client, self.run_id, self.token, on_conflict=self._lease_still_held,
                             on_refused=lambda reason: self._abort(RunStatus.FAILED, reason))
        # Beside the working dir, not in it: the metrics file is no output.
        self.metrics = RunMetrics(agent.runs_dir / f"{self.run_id}-{self.token[:8]}.metrics", self.outbox,
                                  log_metrics=self.spec.log_metrics)
        self.thread: threading.Thread | None = None  # set by the agent
        self._lock = threading.RLock()
        # Guarded by _lock:
        self._process: RunningProcess | None = None  # set by the run thread when the command starts
        self._exited = False  # the command has ended
        self._stop_requested = False
        self._stop_reason: str | None = None
        self._aborted = False  # a final status was queued out of turn; the run thread only cleans up
        self._final_queued = False  # the run thread queued the final status (its outputs were pushed)
        self._finished = threading.Event()

    # --- the heartbeat thread and the outbox's sender: what the server says ---

    def on_lease_state(self, state: LeaseState) -> None:
        """What a heartbeat heard of this run's lease."""
        if state.lost:
            self._lose_lease()
        else:
            self._on_server_status(state.status)

    def _lease_still_held(self) -> bool:
        """Asked by the outbox after a 409: lost lease, or a refused change?"""
        held = [HeldLease(run_id=self.run_id, lease_token=self.token)]
        try:
            reply = with_retries(lambda: self.agent.client.heartbeat(self.agent.worker_id, held),
                                 should_continue=lambda: not self.outbox.abandoned)
        except Refused:
            self._lose_lease()
            return False
        except ServerUnavailable:
            return False
        self.on_lease_state(reply.leases[0])
        return not reply.leases[0].lost

    def _on_server_status(self, status: RunStatus) -> None:
        if status is RunStatus.STOPPING:
            self.request_stop(None, from_server=True)
        elif status is RunStatus.KILLING:
            self.request_kill(None, from_server=True)
        elif is_final(status):
            # Ended by the server (its reaper: a stage past its bound), or by
            # this worker's own last report a moment ago: nothing more to do.
            self._lose_lease(f"the server has it {status}")

    def _lose_lease(self, why: str = "lease lost") -> None:
        with self._lock:
            if self._finished.is_set():
                return
            log.warning("run %s: %s; abandoning it", self.run_id, why)
            self._aborted = True
            if self._process is not None and not self._exited:
                self._process.kill()
        self.outbox.abandon()

    # --- any thread: stop, kill, interrupt ---------------------------------

    def request_stop(self, reason: str | None, *, from_server: bool) -> None:
        """Stop the run, saving its outputs. A stop heard after the command
        ended on its own, while its outputs are walked or pushed, has nothing
        to signal: they are saved as they would have been, and the run ends
        `stopped`, as the server (already `stopping`) and the user were told."""
        with self._lock:
            if self._stop_requested or self._aborted or self._final_queued:
                return
            self._stop_requested = True
            self._stop_reason = reason
            if self._exited:
                return
            via = None if from_server else RunStatus.STOPPING
            if self._process is None:  # nothing ran, nothing to save
                self._abort(RunStatus.STOPPED, reason, via=via)
                return
            if via is not None:
                self.outbox.status(via, note=reason, reason=reason)
            self._process.terminate(STOP_GRACE)

    def request_kill(self, reason: str | None, *, from_server: bool) -> None:
        """Kill the run, dropping its outputs; `from_server` False: the worker's
        own decision (its shutdown), which it reports as `killing` first."""
        with self._lock:
            if self._final_queued and not from_server:  # its outputs are pushed: nothing to cut short
                return
            self._abort(RunStatus.KILLED, reason, via=None if from_server else RunStatus.KILLING)

    def interrupt(self, reason: str) -> None:
        self._abort(RunStatus.INTERRUPTED, reason)

    def _abort(self, final_status: RunStatus, reason: str | None, *, via: RunStatus | None = None) -> None:
        """End the run now with `final_status` (reported after `via`, when the
        table asks for a step between), dropping what it had not yet reported
        (its outputs included)."""
        with self._lock:
            if self._aborted or self._finished.is_set():
                return
            self._aborted = True
            if self._process is not None and not self._exited:
                self._process.kill()
            self.outbox.drop_pending_results()
            if via is not None:
                self.outbox.status(via, note=reason, reason=reason)
            self.outbox.status(final_status, note=reason, reason=reason)

    @property
    def done(self) -> bool:
        """Every report of the run was delivered (or given up)."""
        return self._finished.is_set()

    # --- the run's own thread -----------------------------------------------

    def _status(self, status: RunStatus, **fields) -> None:
        with self._lock:
            if not self._aborted:
                self._final_queued = is_final(status)
                self.outbox.status(status, **fields)

    def _job_env(self) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(self.spec.env)
        env["CAST_RUN_ID"] = str(self.run_id)
        return env

    def execute(self) -> None:
        try:
            self._execute()
        except Exception as exc:  # a bug must not leave the run hanging
            log.exception("run %s: worker error", self.run_id)
            self._abort(RunStatus.INTERRUPTED, f"worker error: {exc}")
        finally:
            self.metrics.finish()  # a no-op when the command ended as it should
            self.outbox.wait_delivered()
            with self._lock:
                self._finished.set()
            self.outbox.close()
            # After the final status: the user is not kept waiting for the cleanup.
            if self._process is not None:
                self._release_process()
            try:
                self.metrics.close()
                remove_tree(self.workdir)
            except OSError:  # the next worker's prepare() tries again
                log.exception("run %s: could not remove its working dir", self.run_id)

    def _release_process(self) -> None:
        try:
            self._process.release()
        except Exception:  # a leftover is removed by the next worker's cleanup_stale
            log.exception("run %s: could not release what its command held", self.run_id)

    def _execute(self) -> None:
        agent, executor = self.agent, self.agent.executor
        # The lease itself moved the run to `building`.
        if self._aborted:
            return
        remove_tree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.metrics.prepare()
        job = Job(run_id=self.run_id, spec=self.spec, workdir=self.workdir, gpus=self.gpus, env=self._job_env(),
                  metrics_dir=self.metrics.folder)

        try:
            build = executor.build(job, self.outbox.log)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, BuildFailed) else f"{type(exc).__name__}: {exc}"
            self._status(RunStatus.BUILD_FAILED, note=_last_line(reason), reason=reason)
            return
        if self._aborted:
            return

        self._status(RunStatus.MOUNTING, note="cached" if build.cached else None, linger=MOUNTING_LINGER)
        still_running = lambda: not self.outbox.abandoned  # noqa: E731
        try:
            agent.sources.place(self.spec, self.workdir, agent.client, still_running,
                                allow_local_git=self.lease.allow_local_git)
            job.mounts = agent.mounts.prepare(self.lease, agent.client, still_running)
        except (SourceError, MountError, ServerError, OSError) as exc:
            self._status(RunStatus.MOUNT_FAILED, note=_last_line(str(exc)), reason=str(exc))
            return
        before = snapshot(self.workdir)

        with self._lock:
            if self._aborted:
                return
            self._status(RunStatus.RUNNING, limits=executor.describe_limits(job), linger=RUNNING_LINGER)
            try:
                self._process = executor.start(job, build, self.metrics.log_sink)
                self.metrics.start()
            except Exception as exc:
                log.exception("run %s: could not start", self.run_id)
                self._status(RunStatus.SAVING)
                self._status(RunStatus.FAILED, reason=f"could not start the command: {exc}")
                return
        timer = None
        if self.spec.timeout:
            timeout = float(self.spec.timeout)
            timer = threading.Timer(timeout, self.request_stop, args=(f"timed out after {timeout:g}s",),
                                    kwargs={"from_server": False})
            timer.daemon = True
            timer.start()
        result = self._process.wait()
        agent.mounts.release(self.run_id)  # its command is done with them: they may be evicted
        if timer:
            timer.cancel()
        self.metrics.finish()  # every point the run wrote is queued before `saving`
        # Checked before the outputs are read or the working dir removed: a
        # command that filled the disk fails with that, not a bare exit code.
        disk_full = result.exit_code != 0 and disk_nearly_full(self.workdir)
        with self._lock:
            self._exited = True
            if self._aborted:
                return

        # The walk reads no file (the push does), so `saving` is queued after it,
        # back to back with `pushing`: both reach the server in one request, one
        # round trip fewer between the command's end and its outcome. The server
        # still says `running` meanwhile: a kill stops the walk (and a staging)
        # at its next entry, a stop lets it finish (see request_stop).
        killed = lambda: self._aborted  # noqa: E731
        outputs = Outputs.collect(self.workdir, before, [mount.path for mount in job.mounts],
                                  report=lambda line: self.outbox.log(LogStream.CAST, line), cancelled=killed)
        if outputs is None:  # the kill queued the final status
            log.info("run %s: killed while its outputs were walked; the walk stopped", self.run_id)
            return
        # Refused here rather than by the server, which would first receive up to the whole size.
        refused = outputs.over_limit(self.lease.max_output_bytes, what=f"the output of run {self.run_id}")
        # A first attempt's run has no outputs on the server, so nothing written
        # needs no push to say so (a later attempt's push of nothing replaces
        # what an earlier one pushed).
        push = refused is None and bool(outputs.files or outputs.folders or self.lease.attempt > 1)
        with self._lock:
            self._status(RunStatus.SAVING)
            self._status(RunStatus.PUSHING)
            if not push:  # no answer to wait for: the outcome goes in the same request
                self._final(result, refused, disk_full)
                return
            if not self._aborted:
                self.outbox.push_outputs(outputs.sender(self.lease, cancelled=killed))
        self.outbox.wait_delivered()  # the push's answer decides the final status
        with self._lock:  # a stop heard until now counts (request_stop), none after
            self._final(result, self.outbox.outputs_refused, disk_full)

    def _final(self, result: ExitResult, refused: str | None, disk_full: bool) -> None:
        """Queue the run's final status once its outputs were pushed (or refused, or
        needed no push); under the lock."""
        stopped = self._stop_requested
        problems = []
        if result.exit_code != 0 and not stopped:
            problems.append(result.reason or f"exit code {result.exit_code}")
            if disk_full:
                problems.append("the worker's disk is full")
        if refused:
            problems.append(f"outputs not saved: {refused}")
        if stopped and not refused:
            self._status(RunStatus.STOPPED, exit_code=result.exit_code, reason=self._stop_reason)
        elif not problems:
            self._status(RunStatus.COMPLETE, exit_code=0)
        else:
            if stopped and self._stop_reason:
                problems.insert(0, self._stop_reason)
            self._status(RunStatus.FAILED, exit_code=result.exit_code, reason="; ".join(problems))


class Agent:
    """The worker. Its lease loop (`serve`, on a thread of its own) leases a run
    whenever a slot is free and starts its RunController on a new thread;
    `_slots` guards `_active` and wakes the loop when a run ends or the worker
    stops. `shutdown` (the main thread, on SIGTERM or SIGINT) stops every active
    run as `cast stop` would, and kills what is still going past its bound.
    """

    def __init__(self, *, client: ServerClient, executor: Executor, work_dir: Path, name: str,
                 max_runs: int, gpus: list[int], object_cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.client = client
        self.executor = executor
        self.work_dir = work_dir
        self.name = name
        self.max_runs = max_runs
        self.gpu_pool = GpuPool(gpus)
        self.runs_dir = work_dir / "runs"
        self.sources = SourceCache(work_dir / "source")
        self.mounts = MountCache(work_dir / "mounts", object_cache_bytes=object_cache_bytes)
        self.worker_id: str | None = None
        self.heartbeat_every = heartbeat_interval(15.0)  # until the server says its lease period
        self.stopping = threading.Event()
        self._active: dict[int, RunController] = {}
        self._slots = threading.Condition()

    def _register(self) -> None:
        answer = with_retries(lambda: self.client.register(
            name=self.name, executor=self.executor.name, cpus=cpu_count(), memory=memory_bytes(),
            gpus=self.gpu_pool.all, max_runs=self.max_runs, sandboxed=self.executor.sandboxed,
        ), should_continue=lambda: not self.stopping.is_set())
        self.worker_id = answer["id"]
        self.heartbeat_every = heartbeat_interval(float(answer["lease_seconds"]))
        log.info("worker %s registered as %s (executor %s, %d slots, GPUs %s)", self.name, self.worker_id,
                 self.executor.name, self.max_runs, self.gpu_pool.all or "none")

    def prepare(self) -> None:
        """Clear what an earlier worker on this work dir left behind."""
        remove_tree(self.runs_dir)
        self.runs_dir.mkdir(parents=True)
        self.executor.cleanup_stale()

    def serve(self) -> None:
        """Lease and start runs until `stopping` is set."""
        self._register()
        threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True).start()
        attempts = None  # of the lease request, since it last got an answer
        while not self.stopping.is_set():
            with self._slots:
                self._slots.wait_for(lambda: len(self._active) < self.max_runs or self.stopping.is_set())
            if self.stopping.is_set():
                break
            try:
                lease = self.client.lease(self.worker_id, free_gpus=self.gpu_pool.free_count, wait=LEASE_WAIT)
                attempts = None
            except ServerUnavailable as exc:  # however it failed, the worker asks again until it stops
                attempts = attempts or LEASE_RETRIES.attempts()
                self.stopping.wait(attempts.pause(Failure.OUTAGE, retry_after=exc.retry_after))
                continue
            except Refused as exc:
                if exc.status_code == 404:  # the server forgot us (a new database): register again
                    self._register()
                else:
                    log.error("lease refused: %s", exc)
                    self.stopping.wait(1.0)
                continue
            if lease is not None:
                controller = self._start(lease)
                if self.stopping.is_set():  # leased while shutting down: hand it back at once
                    controller.interrupt("the worker shut down")

    def _heartbeats(self) -> None:
        """Hold every active run's lease with one request each `heartbeat_every`
        seconds, until the worker stopped and holds no run; each run hears what
        the server says of its own lease."""
        while True:
            time.sleep(self.heartbeat_every)
            with self._slots:
                if self.stopping.is_set() and not self._active:
                    return
                held = [controller for controller in self._active.values() if not controller.done]
            if not held:
                continue
            try:
                reply = self.client.heartbeat(self.worker_id, [HeldLease(run_id=controller.run_id,
                                                                         lease_token=controller.token)
                                                               for controller in held])
            except ServerUnavailable:
                continue  # the server may be restarting; the outboxes keep everything
            except Refused as exc:  # the worker's token was revoked, say: no lease is held any more
                log.error("heartbeat refused: %s", exc)
                states = [LeaseState(run_id=controller.run_id, lost=True) for controller in held]
            else:
                states = reply.leases
            for controller, state in zip(held, states):
                controller.on_lease_state(state)

    def _start(self, lease: Lease) -> RunController:
        spec = lease.spec
        # A run queued before the server counted its GPUs has only its machine type.
        wanted = spec.gpus or parse_machine_type(spec.machine_type or "cpu")
        controller = RunController(self, lease, self.gpu_pool.acquire(wanted))
        with self._slots:
            self._active[controller.run_id] = controller
        log.info("run %s leased (%s)", controller.run_id, spec.command[:80])
        # Daemon threads: a worker told to stop exits after SHUTDOWN_WAIT even when
        # the server is away and some report could not be delivered.
        controller.thread = threading.Thread(target=self._run, args=(controller,),
                                             name=f"run-{controller.run_id}", daemon=True)
        controller.thread.start()
        return controller

    def _run(self, controller: RunController) -> None:
        try:
            controller.execute()
        finally:
            self.mounts.release(controller.run_id)
            self.gpu_pool.release(controller.gpus)
            with self._slots:
                self._active.pop(controller.run_id, None)
                self._slots.notify_all()
            log.info("run %s done", controller.run_id)

    def shutdown(self, *, reason: str, grace: float, wait: float, kill_now: threading.Event) -> None:
        """Stop leasing and stop every active run with `reason`: its command gets
        SIGTERM, its outputs are saved and pushed. Runs still going after `grace`
        seconds, or once `kill_now` is set, are killed (outputs dropped); then
        wait at most `wait` seconds more for their reports to be delivered."""
        self.stopping.set()
        with self._slots:
            self._slots.notify_all()
            active = list(self._active.values())
        for controller in active:
            log.info("run %s: stopping it (%s)", controller.run_id, reason)
            controller.request_stop(reason, from_server=False)
        deadline = time.monotonic() + grace
        while any(not c.done for c in active) and time.monotonic() < deadline:
            if kill_now.wait(0.1):
                break
        for controller in active:
            if not controller.done:
                log.warning("run %s: killing it (%s; outputs not saved)", controller.run_id,
                            "asked again" if kill_now.is_set() else f"still going after {grace:g}s")
                controller.request_kill(reason, from_server=False)
        deadline = time.monotonic() + wait
        for controller in active:
            controller.thread.join(max(0.0, deadline - time.monotonic()))


def default_work_dir() -> Path:
    home = Path(os.environ.get("CAST_HOME") or Path.home() / ".cast")
    return home / "worker"

