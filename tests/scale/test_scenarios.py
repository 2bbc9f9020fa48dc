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

import pytest

from cast.protocol.messages import RunSpec
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


def submit_all(cluster, tags: list[str], **kwargs) -> dict[str, int]:
    # A client per submit: one SDK client is one connection, for one thread.
    with ThreadPoolExecutor(8) as pool:
        ids = pool.map(lambda tag: cluster.client().create_run(spec(tag, **kwargs))["id"], tags)
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
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: check_run(cluster.client(), runs[item[1]], item[0], **kwargs), tags.items()))


def test_three_workers_run_300_runs_through_both_replicas(cluster):
    tags = submit_all(cluster, [f"a{i}" for i in range(300)])
    assert len(set(tags.values())) == 300
    runs = wait_final(cluster, tags.values(), timeout=900)
    check_all(cluster, tags, runs, lines=3)
    # Every worker took a share: the replicas hand runs to whoever long-polls them.
    assert {run["worker"] for run in runs.values()} == set(cluster.workers)


def test_a_replica_killed_mid_load_loses_nothing(cluster):
    first = submit_all(cluster, [f"b{i}" for i in range(30)], lines=20, pause=0.1)
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
    more: dict[str, int] = {}
    submitter = threading.Thread(target=lambda: more.update(submit_all(cluster, [f"f{i}" for i in range(20)],
                                                                         lines=10, pause=0.2)))
    submitter.start()
    cluster.db.restart()
    submitter.join(120)
    assert not submitter.is_alive() and len(more) == 20
    tags.update(more)
    runs = wait_final(cluster, tags.values(), timeout=600)
    check_all(cluster, tags, runs, lines=10)


def test_the_store_down_for_30s_during_a_push_resumes(cluster):
    client = cluster.client()
    # A bigger output, so the push is under way when the store goes.
    tags = submit_all(cluster, [f"g{i}" for i in range(6)], lines=5, pause=0.2)
    wait = time.monotonic() + 120
    while not any(client.get_run(i)["status"] in (RunStatus.SAVING.value, RunStatus.PUSHING.value)
                  for i in tags.values()):
        assert time.monotonic() < wait
        time.sleep(0.05)
    cluster.s3.stop()
    time.sleep(30)
    cluster.s3.start()
    runs = wait_final(cluster, tags.values(), timeout=600)
    check_all(cluster, tags, runs, lines=5)


@pytest.fixture(autouse=True)
def _no_replica_down_after(cluster):
    yield
    for role, proc in cluster.replicas.items():
        if not proc.alive:
            cluster.start_replica(role)
