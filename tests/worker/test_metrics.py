"""The worker's metrics: the metrics file read as it grows (partial lines, long
lines, a file the run replaces), Trainer lines of the log, and real runs on a
sandboxed local worker and a Docker worker that report through the file, the
helper and their log; hostile lines are refused, counted and named in the
run's log."""

from __future__ import annotations

import json
import os
import shlex
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from cast.protocol import cast_metrics
from cast.protocol.metrics import MAX_LINE_BYTES, MAX_NAMES_PER_RUN, Problem
from cast.worker.metrics import FILE_NAME, HELPER_NAME, Gate, MetricsFile, parse_line, run_env, trainer_metrics
from tests.conftest import unsandboxed
from tests.factories import log_texts, output_paths, submit, wait_final
from tests.worker.executors.test_docker import base_image, engine  # noqa: F401  (session fixtures)


def metric_points(server, run_id: int, **params) -> list[dict]:
    with server.api() as api:
        response = api.get(f"/runs/{run_id}/metrics/points", params={"limit": 100_000, **params})
    response.raise_for_status()
    return response.json()["points"]


# --- lines ------------------------------------------------------------------

def test_a_line_is_a_point_or_names_its_problem():
    point = parse_line(b'{"name": "loss", "value": 0.53, "step": 120}')
    assert (point.name, point.value, point.step) == ("loss", 0.53, 120)
    assert parse_line(b'{"name": "acc", "value": 1}').step is None
    cases = {
        b"loss 0.5": Problem.NOT_JSON, b"[1, 2]": Problem.NOT_JSON, b'{"name": "x"}': Problem.NOT_JSON,
        b"\xff\xfe": Problem.NOT_JSON, b"[" * 100_000: Problem.NOT_JSON,
        b'{"name": "x", "value": NaN}': Problem.BAD_VALUE, b'{"name": "x", "value": Infinity}': Problem.BAD_VALUE,
        b'{"name": "x", "value": "0.5"}': Problem.BAD_VALUE, b'{"name": "x", "value": true}': Problem.BAD_VALUE,
        b'{"name": "x", "value": 1e999}': Problem.BAD_VALUE,
        b'{"name": "", "value": 1}': Problem.BAD_NAME, b'{"name": "a\\nb", "value": 1}': Problem.BAD_NAME,
        b'{"name": "' + b"n" * 201 + b'", "value": 1}': Problem.BAD_NAME, b'{"name": 5, "value": 1}': Problem.BAD_NAME,
        b'{"name": "x", "value": 1, "step": -1}': Problem.BAD_STEP,
        b'{"name": "x", "value": 1, "step": 1.5}': Problem.BAD_STEP,
    }
    for raw, problem in cases.items():
        with pytest.raises(Exception) as caught:
            parse_line(raw)
        assert getattr(caught.value, "problem", None) is problem, raw[:60]


def test_trainer_lines_are_metrics_and_nothing_else_is():
    assert trainer_metrics("{'loss': 6.79, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.5}") == {
        "loss": 6.79, "grad_norm": 1.2, "learning_rate": 5e-05, "epoch": 0.5}
    assert trainer_metrics("  {'train_runtime': 12.5, 'train_loss': 3.2, 'epoch': 1.0}\r") == {
        "train_runtime": 12.5, "train_loss": 3.2, "epoch": 1.0}
    for other in ["loss: 0.5", "{'loss': 'high'}", "{'loss': nan}", "{'a': [1]}", "{'loss': 1} trailing",
                  "{\"loss\": 0.5}", "{'loss': True}", "{'x': 1, " + "'y': 2, " * 1000 + "}",
                  "{'loss': __import__('os').system('true')}", "{}"]:
        assert trainer_metrics(other) is None, other


# --- the file ---------------------------------------------------------------

class Collected:
    def __init__(self):
        self.points, self.notes = [], []

    def deliver(self, points):
        self.points += points

    def note(self, text):
        self.notes.append(text)


def reader(path: Path, gate: Gate | None = None) -> tuple[MetricsFile, Collected]:
    collected = Collected()
    metrics_file = MetricsFile(path, gate or Gate(), collected.deliver, collected.note)
    metrics_file.open()
    return metrics_file, collected


def test_the_reader_follows_the_file_waits_for_partial_lines_and_skips_long_ones(tmp_path):
    path = tmp_path / FILE_NAME
    path.touch()
    gate = Gate()
    metrics_file, got = reader(path, gate)
    metrics_file.start()
    with open(path, "ab", buffering=0) as out:
        out.write(b'{"name": "a", "value": 1, "step": 1}\n{"name": "a", "val')
        from tests.conftest import wait_until
        wait_until(lambda: len(got.points) == 1, what="the first point")
        out.write(b'ue": 2, "step": 2}\n' + b"x" * (MAX_LINE_BYTES + 10) + b"\n")
        out.write(b'{"name": "b", "value": 3}')  # no newline: read once the run has ended
    metrics_file.finish()
    assert [(p.name, p.value, p.step) for p in got.points] == [("a", 1, 1), ("a", 2, 2), ("b", 3, None)]
    assert all(p.time for p in got.points)
    assert gate.refused == {Problem.TOO_LONG: 1}


def test_a_file_the_run_replaces_with_a_link_is_never_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text('{"name": "stolen", "value": 1}\n')
    path = tmp_path / FILE_NAME
    path.write_text('{"name": "mine", "value": 1}\n')
    metrics_file, got = reader(path)
    path.unlink()
    path.symlink_to(secret)
    metrics_file.start()
    metrics_file.finish()
    assert [p.name for p in got.points] == ["mine"]
    assert any("replaced or removed its metrics file" in note for note in got.notes)


def test_a_link_or_a_fifo_at_the_path_is_not_opened(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").touch()
    with pytest.raises(OSError):
        MetricsFile(link, Gate(), print, print).open()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        MetricsFile(fifo, Gate(), print, print).open()


def test_the_gate_keeps_the_first_names_and_says_so_once_per_report(tmp_path):
    path = tmp_path / FILE_NAME
    with open(path, "w") as out:
        for i in range(MAX_NAMES_PER_RUN + 500):
            out.write(json.dumps({"name": f"n{i}", "value": i}) + "\n")
    gate = Gate()
    metrics_file, got = reader(path, gate)
    metrics_file.start()
    metrics_file.finish()
    assert len(got.points) == MAX_NAMES_PER_RUN
    lines = gate.unreported()
    assert lines == [f"Metrics: 500 lines refused, {Problem.TOO_MANY_NAMES} (the first: 'n1000'; 500 so far)"]
    assert gate.unreported() == []


def test_the_helper_appends_lines_and_does_nothing_outside_a_run(tmp_path, monkeypatch):
    monkeypatch.delenv("CAST_METRICS", raising=False)
    cast_metrics.log("loss", 1.0)  # no file: nothing happens
    path = tmp_path / FILE_NAME
    path.touch()
    monkeypatch.setenv("CAST_METRICS", str(path))
    threads = [threading.Thread(target=lambda i=i: [cast_metrics.log("t", float(i), step=j) for j in range(200)])
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 800 and all(parse_line(line).name == "t" for line in lines)


def test_the_folder_holds_an_empty_file_and_the_helper_beside_the_working_dir(tmp_path):
    from cast.worker.metrics import RunMetrics

    outbox = SimpleNamespace(metrics=lambda points: None, log=lambda stream, text: None)
    metrics = RunMetrics(tmp_path / "1-abc.metrics", outbox, log_metrics=True)
    metrics.prepare()
    assert sorted(os.listdir(metrics.folder)) == sorted([FILE_NAME, HELPER_NAME])
    assert (metrics.folder / FILE_NAME).read_bytes() == b""
    assert (metrics.folder / HELPER_NAME).read_bytes() == Path(cast_metrics.__file__).read_bytes()
    metrics.close()
    assert not metrics.folder.exists()


def test_run_env_puts_the_helper_first_on_pythonpath():
    assert run_env("/m", {}) == {"CAST_METRICS": f"/m/{FILE_NAME}", "PYTHONPATH": "/m"}
    assert run_env("/m", {"PYTHONPATH": "/src"})["PYTHONPATH"] == f"/m{os.pathsep}/src"


# --- real runs on a sandboxed local worker -------------------------------------

SCRIPT = r"""
import json, os, sys
path = os.environ["CAST_METRICS"]
with open(path, "a") as out:
    for i in range(50):
        out.write(json.dumps({"name": "file_loss", "value": 1.0 / (i + 1), "step": i}) + "\n")
        out.flush()
import cast_metrics
for i in range(30):
    cast_metrics.log("helper_acc", i / 30, step=i)
for i in range(3):
    print({"loss": 2.0 - i, "learning_rate": 5e-05, "epoch": (i + 1) / 3}, flush=True)
print({"train_runtime": 1.5, "train_loss": 1.0, "epoch": 1.0}, flush=True)
print(os.path.exists("metrics.jsonl"), os.environ["CAST_METRICS"].startswith(os.getcwd() + "/"))
"""


def test_a_run_reports_through_the_file_the_helper_and_trainer_lines_once_each_in_order(server, worker):
    run_id = submit(server, f"python3 -c {shlex.quote(SCRIPT)}")
    run = wait_final(server, run_id)
    assert run["status"] == "complete", log_texts(server, run_id)
    points = metric_points(server, run_id)
    assert [p["offset"] for p in points] == list(range(len(points)))
    file_loss = [p for p in points if p["name"] == "file_loss"]
    assert [(p["step"], p["value"]) for p in file_loss] == [(i, 1.0 / (i + 1)) for i in range(50)]
    assert [(p["step"], p["value"]) for p in points if p["name"] == "helper_acc"] == [(i, i / 30) for i in range(30)]
    assert [(p["step"], p["value"]) for p in points if p["name"] == "loss"] == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert [(p["step"], p["value"]) for p in points if p["name"] == "train_runtime"] == [(4, 1.5)]
    assert [p["step"] for p in points if p["name"] == "epoch"] == [1, 2, 3, 4]
    assert "False False" in log_texts(server, run_id, "stdout")  # the file is not in the working dir
    assert output_paths(server, run_id) == []


def test_no_log_metrics_leaves_trainer_lines_as_lines(server, worker):
    run_id = submit(server, """python3 -c "print({'loss': 1.5, 'epoch': 1.0})" """, log_metrics=False)
    assert wait_final(server, run_id)["status"] == "complete"
    assert metric_points(server, run_id) == []
    assert "{'loss': 1.5, 'epoch': 1.0}" in log_texts(server, run_id, "stdout")


HOSTILE = r"""
import json, os
path = os.environ["CAST_METRICS"]
with open(path, "a") as out:
    out.write('{"name": "good", "value": 1, "step": 0}\n')
    out.write("not json\n")
    out.write('{"name": "x", "value": NaN}\n')
    out.write('{"name": "bad\\u0007name", "value": 1}\n')
    out.write("y" * (10 << 20) + "\n")
    for i in range(1_000_000):
        out.write('{"name": "n%d", "value": 1}\n' % i)
    out.write('{"name": "good", "value": 2, "step": 1}\n')
try:
    os.remove(path)
    os.symlink("/etc/shadow", path)
    print("replaced")
except PermissionError:  # a root worker keeps the folder its own: the file cannot be replaced
    print("cannot replace")
"""


def test_hostile_lines_are_refused_and_named_and_the_run_completes(server, worker):
    run_id = submit(server, f"python3 -c {shlex.quote(HOSTILE)}")
    run = wait_final(server, run_id, timeout=180)
    cast_lines = log_texts(server, run_id, "cast")
    assert run["status"] == "complete", (run.get("reason"), cast_lines[-6:])
    points = metric_points(server, run_id, name="good")
    assert [(p["step"], p["value"]) for p in points] == [(0, 1.0), (1, 2.0)]
    with server.api() as api:
        summary = api.get(f"/runs/{run_id}/metrics").json()
    assert len(summary["metrics"]) == MAX_NAMES_PER_RUN
    said = "\n".join(cast_lines)
    for problem, count in [(Problem.NOT_JSON, 1), (Problem.BAD_VALUE, 1), (Problem.BAD_NAME, 1),
                           (Problem.TOO_LONG, 1), (Problem.TOO_MANY_NAMES, 1_000_000 - MAX_NAMES_PER_RUN + 1)]:
        assert f"refused, {problem} " in said and f"; {count} so far)" in said, (problem, said)
    replaced = log_texts(server, run_id, "stdout") == ["replaced"]
    assert replaced == (os.geteuid() != 0)
    assert ("replaced or removed its metrics file" in said) == replaced
    assert "root:" not in said


# --- a real run on a Docker worker ------------------------------------------------

@pytest.fixture
def docker_worker(server, start_worker, engine, base_image):  # noqa: F811
    repository = f"cast-env-metrics-{os.getpid()}"
    worker = start_worker(server, executor="docker", env={"CAST_WORKER_IMAGE_REPOSITORY": repository})
    yield worker
    worker.stop()
    for image in engine.images.list(name=repository):
        engine.images.remove(image.id, force=True)


def test_a_docker_run_reports_through_the_helper_and_the_file(server, docker_worker):
    script = ("import cast_metrics, os\n"
              "for i in range(20):\n    cast_metrics.log('loss', 1.0 / (i + 1), step=i)\n"
              "open(os.environ['CAST_METRICS'], 'a').write('{\"name\": \"raw\", \"value\": 7}\\nnot json\\n')\n"
              "print(os.environ['CAST_METRICS'], os.path.exists('metrics.jsonl'))\n"
              "print({'loss': 0.25, 'epoch': 1.0})")
    run_id = submit(server, f"python3 -c {shlex.quote(script)}")
    run = wait_final(server, run_id, timeout=300)
    assert run["status"] == "complete", (run.get("reason"), log_texts(server, run_id)[-8:])
    points = metric_points(server, run_id)
    # The file's points in their order, the log's in theirs; the two sources are read side by side.
    seen = [(p["name"], p["step"], p["value"]) for p in points]
    trainer_line = [("loss", 1, 0.25), ("epoch", 1, 1.0)]  # the file's loss at step 1 is 0.5
    assert [point for point in seen if point in trainer_line] == trainer_line
    from_file = [point for point in seen if point not in trainer_line]
    assert from_file == [*[("loss", i, 1.0 / (i + 1)) for i in range(20)], ("raw", None, 7.0)]
    assert log_texts(server, run_id, "stdout")[0] == "/cast/metrics/metrics.jsonl False"
    assert any(f"refused, {Problem.NOT_JSON} (the first: 'not json'" in line for line in log_texts(server, run_id, "cast"))
    assert output_paths(server, run_id) == []


def test_an_unsandboxed_local_run_reports_too(server, start_worker, tmp_path):
    start_worker(server, env=unsandboxed(tmp_path))
    script = "import cast_metrics\nfor i in range(5):\n    cast_metrics.log('loss', float(i), step=i)\n"
    run_id = submit(server, f"python3 -c {shlex.quote(script)}")
    assert wait_final(server, run_id)["status"] == "complete"
    assert [(p["step"], p["value"]) for p in metric_points(server, run_id)] == [(i, float(i)) for i in range(5)]
    assert output_paths(server, run_id) == []
