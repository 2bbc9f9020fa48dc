"""Scale-out scenarios across hosts (network namespaces): PostgreSQL, an S3
store, two replicas behind nginx, three workers (tests/scale/cluster.py).

Each scenario checks every run it made: it ran exactly once (its own `START`
line and its `running` transitions counted), every line it printed is in its
log exactly once and in order, and its output's sha256 (as the store's
manifest says and as downloaded) is what the run printed for what it wrote.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import pytest

from cast.client.sdk import ApiError, Client, ConnectionCut
from cast.protocol.messages import RunSpec
from cast.protocol.retries import Failure
from cast.protocol.status import FINAL_STATUSES, RunStatus

# The run: a START line, numbered lines (a pause between them, if asked), a
# random file and its sha256.
SCRIPT = (
    "import hashlib, os, sys, time\n"
    "tag, lines, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])\n"
    "print('START', tag, flush=True)\n"
    "for i in range(lines):\n"
    "    print('L', tag, i, flush=True)\n"
    "    time.sleep(pause)\n"
    "data = os.urandom(4096) + tag.encode()\n"
    "open('out.bin', 'wb').write(data)\n"
    "print('SHA', tag, hashlib.sha256(data).hexdigest(), flush=True)\n"
)
FINAL = {status.value for status in FINAL_STATUSES}
# A guard against a hang only: 300 runs take a few minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(1500)


def spec(tag: str, *, lines: int = 3, pause: float = 0.0, retries: int = 0) -> RunSpec:
    return RunSpec(command=f"python3 -c {shlex.quote(SCRIPT)} {tag} {lines} {pause}", retries=retries)


class TracedClient(Client):
    """An SDK client that notes in `retried` each try its retry loop repeats:
    an answer of an outage (cast.protocol.retries) or a connection cut mid-request."""

    def __init__(self, cluster, retried: list[str]):
        super().__init__(cluster.url, cluster.admin_token)
        self.retried = retried

    def _call_once(self, method: str, path: str, **kwargs):
        try:
            return super()._call_once(method, path, **kwargs)
        except ApiError as exc:
            if exc.failure is Failure.OUTAGE:
                self.retried.append(f"{method} {path}: {exc.status} {exc.detail}")
            raise
        except ConnectionCut:
            self.retried.append(f"{method} {path}: connection cut")
            raise


def submit_all(cluster, tags: list[str], *, client=None, **kwargs) -> dict[str, int]:
    # A client per submit: one SDK client is one connection, for one thread.
    client = client or cluster.client
    with ThreadPoolExecutor(8) as pool:
        ids = pool.map(lambda tag: client().create_run(spec(tag, **kwargs))["id"], tags)
    return dict(zip(tags, ids))


def wait_final(cluster, ids, timeout: float) -> dict[int, dict]:
    client, runs, pending = cluster.client(), {}, set(ids)
    deadline = time.monotonic() + timeout
    while pending:
        for run_id in sorted(pending):
            run = client.get_run(run_id)
            if run["status"] in FINAL:
                runs[run_id] = run
                pending.discard(run_id)
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"runs {sorted(pending)[:20]} not final after {timeout}s\n{cluster.logs()}")
        time.sleep(0.5)
    return runs


def log_text(client, run_id: int) -> str:
    with client.download_logs(run_id) as download:
        return b"".join(download.chunks()).decode()


def check_run(client, run: dict, tag: str, *, lines: int, starts: int = 1) -> None:
    """The run completed, ran `starts` times, logged each line once, and its output is what it wrote."""
    assert run["status"] == RunStatus.COMPLETE.value, (tag, run["status"], run.get("reason"))
    running = [t for t in run["transitions"] if t["status"] == RunStatus.RUNNING.value]
    assert len(running) == starts, (tag, run["transitions"])
    text = log_text(client, run["id"])
    assert len(re.findall(rf"^START {tag}$", text, re.M)) == starts, (tag, text)
    numbered = re.findall(rf"^L {tag} (\d+)$", text, re.M)
    assert numbered[-lines:] == [str(i) for i in range(lines)], (tag, text)
    if starts == 1:
        assert len(numbered) == lines, (tag, text)
    printed = re.findall(rf"^SHA {tag} ([0-9a-f]{{64}})$", text, re.M)
    assert len(printed) == 1, (tag, text)
    manifest = {f["path"]: f["sha256"] for f in client.list_outputs(run["id"])["files"]}
    assert manifest == {"out.bin": printed[0]}, (tag, manifest)
    with client.download_output(run["id"], "out.bin") as download:
        assert hashlib.sha256(b"".join(download.chunks())).hexdigest() == printed[0]


def check_all(cluster, tags: dict[str, int], runs: dict[int, dict], **kwargs) -> None:
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: check_run(cluster.client(), runs[item[1]], item[0], **kwargs), tags.items()))
    except AssertionError as error:  # a run lost or wrong: what the replicas and workers logged tells why
        raise AssertionError(f"{error}\n{cluster.logs()}") from error


def test_three_workers_run_300_runs_through_both_replicas(cluster):
    tags = submit_all(cluster, [f"a{i}" for i in range(300)])
    assert len(set(tags.values())) == 300
    runs = wait_final(cluster, tags.values(), timeout=900)
    check_all(cluster, tags, runs, lines=3)
    # Every worker took a share: the replicas hand runs to whoever long-polls them.
    assert {run["worker"] for run in runs.values()} == set(cluster.workers)


def test_a_replica_killed_mid_load_loses_nothing(cluster):
    # The six followed runs print for at least 10 s, so they are not final when
    # the replica dies 3.5 s in (runs of 2 s could all end first: then no
    # follower would have anything to resume).
    first = {**submit_all(cluster, [f"b{i}" for i in range(6)], lines=20, pause=0.5),
             **submit_all(cluster, [f"b{i}" for i in range(6, 30)], lines=20, pause=0.1)}
    followed: dict[str, list[str]] = {}
    reconnects: list[str] = []

    def follow(tag: str, run_id: int) -> None:
        lines = []
        for page in cluster.client().follow_logs(run_id, on_reconnect=reconnects.append):
            for chunk in page.chunks:
                lines.extend(chunk.lines)
        followed[tag] = lines

    followers = [threading.Thread(target=follow, args=item) for item in list(first.items())[:6]]
    for thread in followers:
        thread.start()
    time.sleep(3)
    # Submits go on while the replica dies: each answers one run, made once.
    more: dict[str, int] = {}
    submitter = threading.Thread(target=lambda: more.update(submit_all(cluster, [f"c{i}" for i in range(30)],
                                                                         lines=20, pause=0.1)))
    submitter.start()
    time.sleep(0.5)
    cluster.kill_replica("r2")
    submitter.join(120)
    assert not submitter.is_alive()
    tags = {**first, **more}
    assert len(set(tags.values())) == 60
    runs = wait_final(cluster, tags.values(), timeout=600)
    for thread in followers:
        thread.join(120)
        assert not thread.is_alive()
    check_all(cluster, tags, runs, lines=20)
    for tag, lines in followed.items():
        mine = [line for line in lines if line.split(" ")[1:2] == [tag]]
        assert mine[0] == f"START {tag}" and mine[-1].startswith(f"SHA {tag} ")
        assert mine[1:-1] == [f"L {tag} {i}" for i in range(20)], (tag, mine)
    # The balancer spreads the six followers over both replicas: those on the
    # killed one resumed on the other, or nothing above was tested.
    assert reconnects, "no follower reconnected after its replica was killed"
    cluster.start_replica("r2")


def test_a_worker_cut_off_mid_run_is_interrupted_and_retried_elsewhere(cluster):
    client = cluster.client()
    run_id = client.create_run(spec("d0", lines=30, pause=0.3, retries=1))["id"]
    deadline = time.monotonic() + 120
    while (run := client.get_run(run_id))["status"] != RunStatus.RUNNING.value:
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    # Cut once attempt 1's first lines are in: lines still in the cut worker's
    # outbox can never arrive (its lease is gone when the link is back).
    while "\nL d0 1\n" not in log_text(client, run_id):
        assert time.monotonic() < deadline, log_text(client, run_id)
        time.sleep(0.2)
    cut = cluster.host(run["worker"])
    cut.link(up=False)
    try:
        final = wait_final(cluster, [run_id], timeout=300)[run_id]
    finally:
        cut.link(up=True)
    statuses = [t["status"] for t in final["transitions"]]
    assert RunStatus.INTERRUPTED.value in statuses, statuses
    assert final["attempt"] == 2 and final["worker"] != run["worker"], final
    check_run(client, final, "d0", lines=30, starts=2)


def test_postgres_restarted_mid_load_loses_nothing(cluster):
    tags = submit_all(cluster, [f"e{i}" for i in range(30)], lines=10, pause=0.2)
    time.sleep(2)
    # What the workers log from here on: a request refused for good, a lease
    # lost or an exception would be an error a worker saw, not a retry.
    worker_logs = {role: proc.log_path.stat().st_size for role, proc in cluster.workers.items()}
    retried: list[str] = []
    errors: list[str] = []
    probing = threading.Event()

    def probe() -> None:
        # A client reading and submitting all through the restart: each call
        # answers (after retries), none raises.
        client, n = TracedClient(cluster, retried), 0
        while not probing.is_set():
            try:
                client.get_run(tags["e0"])
                n += 1
                if n % 10 == 0:
                    client.create_run(spec(f"p{n}", lines=1))
            except Exception as exc:
                errors.append(f"{exc.__class__.__name__}: {exc}")
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    more: dict[str, int] = {}
    submitter = threading.Thread(target=lambda: more.update(submit_all(
        cluster, [f"f{i}" for i in range(20)], client=lambda: TracedClient(cluster, retried), lines=10, pause=0.2)))
    submitter.start()
    cluster.db.restart()
    time.sleep(3)
    probing.set()
    prober.join(120)
    submitter.join(120)
    assert not prober.is_alive() and not submitter.is_alive() and len(more) == 20
    assert not errors, errors
    # The replicas answered 503 (the database unavailable) while it was down,
    # and the clients' tries after it succeeded: retries, not errors.
    assert any(": 503 " in line for line in retried), retried
    for role, start in worker_logs.items():
        with open(cluster.workers[role].log_path, "rb") as log:
            log.seek(start)
            said = log.read().decode(errors="replace")
        assert not re.search(r"refused|lease lost|Traceback|could not deliver", said), (role, said[-3000:])
    tags.update(more)
    runs = wait_final(cluster, tags.values(), timeout=600)
    check_all(cluster, tags, runs, lines=10)


def _at(run: dict, status: RunStatus) -> float:
    """When the run last entered `status`, as a Unix time (the server writes UTC)."""
    return max(datetime.fromisoformat(t["at"]).replace(tzinfo=timezone.utc).timestamp()
               for t in run["transitions"] if t["status"] == status.value)


def test_the_store_down_for_30s_during_a_push_resumes(cluster):
    client = cluster.client()
    # Three runs that end at once and three that end seconds later: the first
    # push takes the store down, the later runs reach their push while it is down.
    tags = submit_all(cluster, [f"g{i}" for i in range(3)], lines=5, pause=0.2)
    late = submit_all(cluster, [f"h{i}" for i in range(3)], lines=5, pause=1.5)
    wait = time.monotonic() + 120
    while not any(client.get_run(i)["status"] in (RunStatus.SAVING.value, RunStatus.PUSHING.value)
                  for i in tags.values()):
        assert time.monotonic() < wait
        time.sleep(0.05)
    cluster.s3.stop()
    with pytest.raises(httpx.TransportError):  # the store is down, not merely slow
        httpx.get(cluster.s3.endpoint, timeout=5)
    time.sleep(30)
    back = time.time()
    cluster.s3.start()
    runs = wait_final(cluster, [*tags.values(), *late.values()], timeout=600)
    # A push that began at least 5 s before the store came back and ended after
    # it: a 4 KiB push takes milliseconds, so its requests to the store failed
    # while it was down and the outbox's retry completed it once it was up.
    resumed = [run["id"] for run in runs.values() if run["status"] == RunStatus.COMPLETE.value
               and _at(run, RunStatus.PUSHING) < back - 5 and _at(run, RunStatus.COMPLETE) > back]
    assert resumed, {run["id"]: run["transitions"] for run in runs.values()}
    check_all(cluster, tags, runs, lines=5)
    check_all(cluster, late, runs, lines=5)


@pytest.fixture(autouse=True)
def _no_replica_down_after(cluster):
    yield
    for role, proc in cluster.replicas.items():
        if not proc.alive:
            cluster.start_replica(role)
