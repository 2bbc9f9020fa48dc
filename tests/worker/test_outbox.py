"""The run's outbox against a scripted HTTP server: which answers it retries,
which end the run, and that a kill never waits behind a blocked push.

The server here is a real HTTP server on loopback whose answers each test
scripts (the control plane cannot be made to answer a given 5xx on demand);
the outbox and its ServerClient are the worker's own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cast.protocol.logs import MAX_LINE_CHARS
from cast.protocol.messages import PERMANENT_HEADER, LogStream
from cast.protocol.worker_messages import MAX_REASON_LENGTH, MAX_STATUS_BATCH
from cast.worker.client import ServerClient
from cast.worker import outbox as outbox_module
from cast.worker.outbox import FLOOD_LINES, GAP, Outbox
from tests.conftest import wait_until

OK = (200, {}, {"next_offset": 0, "truncated": False, "files": 0, "size": 0, "status": "running", "refused": []})


class ScriptedServer:
    """Answers each request with the next answer scripted for its kind
    ("logs", "statuses" or "outputs"), repeating the last one; records every
    request as (kind, JSON body or None)."""

    def __init__(self):
        self.script: dict[str, list[tuple[int, dict, object]]] = {}
        self.requests: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                kind = self.path.rstrip("/").rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if kind != "outputs" else b""
                if kind == "outputs":  # a chunked tar: read it to its end
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        self.rfile.read(size + 2)
                    self.rfile.readline()
                with outer._lock:
                    outer.requests.append((kind, json.loads(body) if body else None))
                    answers = outer.script.get(kind) or [OK]
                    status, headers, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.handle_error = lambda *_: None  # the blocked push is cut at shutdown
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def of_kind(self, kind: str) -> list:
        with self._lock:
            return [body for k, body in self.requests if k == kind]

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


class Run:
    """An outbox for run 7 with its callbacks recorded."""

    def __init__(self, server: ScriptedServer, *, max_same_errors: int = 3):
        self.client = ServerClient(server.url, "token", max_same_errors=max_same_errors)
        self.refused: list[str] = []
        self.conflicts = 0
        self.outbox = Outbox(self.client, 7, "lease", on_conflict=self._conflict, on_refused=self.refused.append)

    def _conflict(self) -> bool:
        self.conflicts += 1
        return True

    def finish(self) -> None:
        assert self.outbox.wait_delivered(timeout=120)
        self.outbox.close()
        self.client.close()


@pytest.fixture
def run(server):
    runs: list[Run] = []

    def make(**options) -> Run:
        runs.append(Run(server, **options))
        return runs[-1]

    yield make
    for made in runs:
        made.outbox.abandon()
        made.outbox.close()
        made.client.close()


def _tar() -> Iterator[bytes]:
    yield b"\0" * 1024


def _over_http(tar_chunks):
    """An output push as a worker that does not share the server's storage sends it."""
    return lambda client, run_id, token: client.push_outputs(run_id, token, tar_chunks())


def _held_push(released: threading.Event):
    """A push over HTTP whose body waits for `released`: the sender stays busy meanwhile."""

    def held_tar() -> Iterator[bytes]:
        released.wait(60)
        yield b"\0" * 1024

    return _over_http(held_tar)


def _statuses(server: ScriptedServer) -> list[str]:
    """The statuses reported, in order, whichever requests carried them."""
    return [report["status"] for body in server.of_kind("statuses") for report in body["reports"]]


def test_a_4xx_ends_the_run_at_once_and_the_log_names_the_request(server, run):
    server.script["statuses"] = [(400, {}, {"detail": "no such stage"}), OK]
    made = run()
    made.outbox.status("running")
    made.finish()
    assert made.refused == ["the server refused the 'running' status report: no such stage"]
    assert _statuses(server) == ["running"]  # never retried
    lines = [line for batch in server.of_kind("logs") for run in batch["runs"] for line in run["lines"]]
    assert lines == ["The server refused the 'running' status report (HTTP 400): no such stage"]


def test_the_same_server_error_n_times_refuses_the_push_for_good(server, run):
    server.script["outputs"] = [(500, {"Content-Type": "text/plain"}, "Internal Server Error")]
    made = run(max_same_errors=4)
    made.outbox.push_outputs(_over_http(_tar))
    made.finish()
    assert len(server.of_kind("outputs")) == 4
    assert made.outbox.outputs_refused == "Internal Server Error (the same answer 4 times in a row)"
    assert made.refused == []  # a refused push is the run owner's to report, with the exit code


def test_a_5xx_marked_permanent_is_not_retried(server, run):
    server.script["outputs"] = [(507, {PERMANENT_HEADER: "1"}, {"detail": "server storage full"})]
    made = run()
    made.outbox.push_outputs(_over_http(_tar))
    made.finish()
    assert len(server.of_kind("outputs")) == 1
    assert made.outbox.outputs_refused == "server storage full"


@pytest.mark.parametrize("answers", [
    [(503, {}, {"detail": "the server is shutting down; try again"})] * 6,
    [(502, {}, "bad gateway")] * 6,
    [(429, {}, {"detail": "slow down"})] * 6,
    [(408, {}, {"detail": "request timeout"})] * 6,
    # Different errors are not the same error repeated.
    [(500, {}, {"detail": f"error {i}"}) for i in range(6)],
], ids=["503", "502", "429", "408", "changing-500s"])
def test_outages_and_busy_answers_are_retried_past_the_bound(server, run, answers):
    server.script["statuses"] = [*answers, OK]
    made = run(max_same_errors=3)
    made.outbox.status("running")
    made.finish()
    assert made.refused == []
    assert _statuses(server) == ["running"] * 7


def test_a_conflict_still_asks_whether_the_lease_is_held(server, run):
    server.script["statuses"] = [(409, {}, {"detail": "run 7 is complete; it cannot become running"}), OK]
    made = run()
    made.outbox.status("running")
    made.outbox.status("saving")
    made.finish()
    assert made.conflicts == 1 and made.refused == []
    assert _statuses(server) == ["running", "saving"]


def test_a_kill_does_not_wait_behind_a_push_that_blocks(server, run):
    released = threading.Event()

    def blocked_tar() -> Iterator[bytes]:
        yield b"\0" * 512
        released.wait(300)  # a file that never opens, a server that never reads
        yield b"\0" * 1024

    made = run()
    made.outbox.log(LogStream.STDOUT, "last words")
    made.outbox.push_outputs(_over_http(blocked_tar))
    made.outbox.status("complete")
    wait_until(lambda: server.of_kind("logs"), timeout=60, what="the log line")
    made.outbox.drop_pending_results()  # what the worker does on a kill
    made.outbox.status("killed")
    try:
        made.finish()
        assert _statuses(server) == ["killed"]
        assert [line for b in server.of_kind("logs") for run in b["runs"] for line in run["lines"]] == ["last words"]
    finally:
        released.set()


def test_a_long_reason_is_cut_to_what_the_server_keeps_from_its_end(server, run):
    made = run()
    made.outbox.status("build_failed", reason="x" * 10_000 + "the last line")
    made.finish()
    [batch] = server.of_kind("statuses")
    [report] = batch["reports"]
    assert len(report["reason"]) == MAX_REASON_LENGTH and report["reason"].endswith("xthe last line")
    assert report["reason"].startswith("…")


def test_statuses_queued_while_the_sender_is_busy_go_in_one_request_in_order(server, run):
    released = threading.Event()
    made = run()
    made.outbox.push_outputs(_held_push(released))
    for status in ("saving", "pushing", "complete"):
        made.outbox.status(status)
    made.outbox.status("failed", reason="why")  # the table's business, not the outbox's
    released.set()
    made.finish()
    assert len(server.of_kind("outputs")) == 1
    [batch] = server.of_kind("statuses")
    assert batch["lease_token"] == "lease"
    assert batch["reports"] == [{"status": "saving"}, {"status": "pushing"}, {"status": "complete"},
                                {"status": "failed", "reason": "why"}]


def test_a_batch_stops_at_what_is_not_a_status_and_at_its_bound(server, run):
    released = threading.Event()
    made = run()
    made.outbox.status("mounting")
    wait_until(lambda: server.of_kind("statuses"), timeout=60, what="the first report")
    made.outbox.push_outputs(_held_push(released))
    made.outbox.status("running")
    made.outbox.log(LogStream.CAST, "between")
    made.outbox.status("saving")
    for _ in range(MAX_STATUS_BATCH + 1):
        made.outbox.status("pushing")
    released.set()
    made.finish()
    sizes = [len(body["reports"]) for body in server.of_kind("statuses")]
    assert sizes == [1, MAX_STATUS_BATCH, 3]
    assert _statuses(server) == ["mounting", "running", "saving"] + ["pushing"] * (MAX_STATUS_BATCH + 1)
    # The line rides between the statuses queued around it, on the one after it.
    assert [kind for kind, _ in server.requests] == ["statuses", "outputs", "statuses", "statuses"]
    running, saving = server.of_kind("statuses")[1]["reports"][:2]
    assert "logs" not in running
    assert saving["logs"] == {"seq": 0, "runs": [
        {"stream": "cast", "lines": ["between"], "time": saving["logs"]["runs"][0]["time"]}]}


def test_lines_stored_with_statuses_the_server_refused_still_count_for_seq(server, run):
    # Answered with the status refused (a stop overtook it): the lines ahead of it were stored.
    server.script["statuses"] = [(200, {}, {"status": "stopping", "refused": [0]})]
    released = threading.Event()
    made = run()
    made.outbox.push_outputs(_held_push(released))
    made.outbox.log(LogStream.STDOUT, "a")
    made.outbox.status("running")
    released.set()
    wait_until(lambda: server.of_kind("statuses"), timeout=60, what="the report")
    made.outbox.log(LogStream.STDOUT, "b")
    made.finish()
    assert made.conflicts == 1 and made.refused == []
    assert [kind for kind, _ in server.requests] == ["outputs", "statuses", "logs"]
    assert server.of_kind("logs")[0]["seq"] == 1


def test_a_short_runs_statuses_lines_and_outcome_go_in_one_request_each_line_counted_once(server, run):
    released = threading.Event()
    made = run()
    made.outbox.push_outputs(_held_push(released))  # all is queued before the sender looks
    made.outbox.status("mounting", linger=30)
    made.outbox.status("running", linger=30)
    made.outbox.log(LogStream.CAST, "Sandbox: here")
    made.outbox.log(LogStream.STDOUT, "out")
    made.outbox.status("saving")
    made.outbox.log(LogStream.STDOUT, "late")
    made.outbox.status("complete")
    made.outbox.log(LogStream.STDOUT, "after")
    released.set()
    made.finish()
    assert [kind for kind, _ in server.requests] == ["outputs", "statuses", "logs"]
    [batch] = server.of_kind("statuses")
    carried = [(report["status"], report.get("logs")) for report in batch["reports"]]
    assert [(status, logs and (logs["seq"], [run["lines"] for run in logs["runs"]])) for status, logs in carried] == [
        ("mounting", None), ("running", None), ("saving", (0, [["Sandbox: here"], ["out"]])),
        ("complete", (2, [["late"]]))]
    assert server.of_kind("logs")[0]["seq"] == 3


def test_lines_behind_a_lingering_status_wait_with_it_and_go_after_it(server, run):
    made = run()
    made.outbox.status("running", linger=2)
    made.outbox.log(LogStream.STDOUT, "first output")
    time.sleep(0.3)
    assert server.requests == []  # the status waits for company, the line behind it too
    made.finish()
    assert [kind for kind, _ in server.requests] == ["statuses", "logs"]
    assert "logs" not in server.of_kind("statuses")[0]["reports"][0]


def test_lines_do_not_wait_for_a_lingering_status_behind_them(server, run):
    made = run()
    made.outbox.log(LogStream.STDOUT, "now")
    made.outbox.status("mounting", linger=30)
    wait_until(lambda: server.of_kind("logs"), timeout=60, what="the line")
    assert server.of_kind("statuses") == []
    made.outbox.status("running")
    made.finish()
    assert [kind for kind, _ in server.requests] == ["logs", "statuses"]
    assert _statuses(server) == ["mounting", "running"]


def test_a_lingering_status_waits_for_the_next_and_goes_with_it(server, run):
    made = run()
    made.outbox.status("mounting", linger=30)  # far past the test's pace: only company sends it
    time.sleep(0.3)
    assert server.of_kind("statuses") == []
    made.outbox.status("running")
    made.finish()
    assert [[report["status"] for report in body["reports"]] for body in server.of_kind("statuses")] == [
        ["mounting", "running"]]


def test_a_lingering_status_goes_alone_once_its_linger_passed_or_something_else_is_queued(server, run):
    made = run()
    made.outbox.status("mounting", linger=0.2)
    wait_until(lambda: server.of_kind("statuses"), timeout=60, what="the report past its linger")
    made.outbox.status("running", linger=300)
    made.outbox.push_outputs(_over_http(_tar))  # the order is kept: the status goes first, alone, long before 300 s
    wait_until(lambda: server.of_kind("outputs"), timeout=60, what="the report and the push behind it")
    made.finish()
    assert _statuses(server) == ["mounting", "running"]
    assert [kind for kind, _ in server.requests] == ["statuses", "statuses", "outputs"]


def test_reports_the_server_refused_in_a_batch_ask_once_whether_the_lease_is_held(server, run):
    server.script["statuses"] = [(200, {}, {"status": "stopping", "refused": [0]})]
    made = run()
    made.outbox.status("running")
    made.finish()
    assert made.conflicts == 1 and made.refused == []
    assert _statuses(server) == ["running"]  # skipped, not retried


def test_lines_travel_as_runs_of_one_stream_split_when_too_long_and_seq_counts_lines(server, run):
    server.script["logs"] = [(503, {}, {"detail": "busy"}), OK]  # the first batch is retried
    made = run()
    for text in ("a", "b"):
        made.outbox.log(LogStream.STDOUT, text)
    made.outbox.log(LogStream.STDERR, "oops")
    made.outbox.log(LogStream.STDOUT, "x" * (MAX_LINE_CHARS * 2 + 1))
    made.finish()
    batches = server.of_kind("logs")
    assert batches[0] == batches[1]  # the retry sends the same batch, from the same seq
    lines = [(r["stream"], line) for b in batches[1:] for r in b["runs"] for line in r["lines"]]
    assert lines == [("stdout", "a"), ("stdout", "b"), ("stderr", "oops"), ("stdout", "x" * MAX_LINE_CHARS),
                     ("stdout", "x" * MAX_LINE_CHARS), ("stdout", "x")]
    # Lines queued together share a run: far fewer runs than lines.
    assert sum(len(b["runs"]) for b in batches[1:]) < len(lines)
    # Each batch's seq is the number of lines sent before it.
    seqs = [b["seq"] for b in batches[1:]]
    counts = [sum(len(r["lines"]) for r in b["runs"]) for b in batches[1:]]
    assert seqs == [sum(counts[:i]) for i in range(len(counts))]


def test_a_chunk_of_lines_is_queued_in_one_call_cut_at_the_batch_bounds_each_line_once(server, run, monkeypatch):
    # Small bounds, so one chunk crosses both the line and the character bound of a batch.
    monkeypatch.setattr(outbox_module, "MAX_BATCH", 7)
    monkeypatch.setattr(outbox_module, "MAX_BATCH_CHARS", 100)
    server.script["logs"] = [(503, {}, {"detail": "busy"}), OK]
    made = run()
    short = [f"s{i}" for i in range(20)]
    wide = [f"{i:02d}" + "w" * 38 for i in range(6)]  # 40 characters: two fit in a batch, a third does not
    made.outbox.log_lines(LogStream.STDOUT, short)
    made.outbox.log_lines(LogStream.STDERR, ["x" * (MAX_LINE_CHARS + 1)])
    made.outbox.log_lines(LogStream.STDOUT, wide)
    made.finish()
    batches = server.of_kind("logs")
    assert batches[0] == batches[1]  # the refused first batch is sent again as it was
    stored = batches[1:]
    lines = [(r["stream"], line) for b in stored for r in b["runs"] for line in r["lines"]]
    assert lines == ([("stdout", text) for text in short] + [("stderr", "x" * MAX_LINE_CHARS), ("stderr", "x")]
                     + [("stdout", text) for text in wide])
    for batch in stored:
        assert sum(len(r["lines"]) for r in batch["runs"]) <= 7
        assert sum(len(line) for r in batch["runs"] for line in r["lines"]) <= 100 or \
            sum(len(r["lines"]) for r in batch["runs"]) == 1
    assert [b["seq"] for b in stored] == [sum(len(r["lines"]) for b in stored[:i] for r in b["runs"])
                                          for i in range(len(stored))]


def test_lines_that_flow_go_in_a_few_batches_a_second_each_line_once_in_order(server, run):
    # Two busy answers mid-stream: the retried batch is the same, so each line is stored once.
    server.script["logs"] = [OK, OK, (503, {}, {"detail": "busy"}), (503, {}, {"detail": "busy"}), OK]
    made = run()
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < 1.0:  # about a second of a few thousand lines
        for _ in range(50):
            made.outbox.log(LogStream.STDOUT, f"line {count}")
            count += 1
        time.sleep(0.001)
    elapsed = time.monotonic() - started
    made.finish()
    batches = server.of_kind("logs")
    assert batches[2] == batches[3] == batches[4]
    stored = [b for i, b in enumerate(batches) if i not in (2, 3)]
    assert [line for b in stored for r in b["runs"] for line in r["lines"]] == [f"line {i}" for i in range(count)]
    assert [b["seq"] for b in stored] == [sum(len(r["lines"]) for b in stored[:i] for r in b["runs"])
                                          for i in range(len(stored))]
    # A batch at most every GAP while lines flow (not one per round trip), plus the retries and the last.
    assert len(stored) <= elapsed / GAP + 2, len(stored)


def test_after_a_batch_of_pouring_lines_the_next_waits_the_flood_gap_and_after_a_trickle_only_the_gap(
        server, run, monkeypatch):
    # FLOOD_GAP made long, so which gap a batch waited for shows however busy the machine is, and
    # LINGER so the pour's lines all go in its first batch.
    monkeypatch.setattr(outbox_module, "FLOOD_GAP", 3.0)
    monkeypatch.setattr(outbox_module, "LINGER", 0.5)
    made = run()

    def arrived(count: int) -> float:
        wait_until(lambda: len(server.of_kind("logs")) >= count, timeout=60, interval=0.005)
        return time.monotonic()

    for i in range(FLOOD_LINES):  # one batch of FLOOD_LINES lines
        made.outbox.log(LogStream.STDOUT, f"pour {i}")
    first = arrived(1)
    made.outbox.log(LogStream.STDOUT, "after the flood")
    second = arrived(2)
    made.outbox.log(LogStream.STDOUT, "a trickle")
    third = arrived(3)
    made.finish()
    assert second - first >= 2.8  # waited the flood's gap
    assert third - second < 2.8  # a lone line after a small batch waits LINGER (GAP is less) only
    lines = [line for b in server.of_kind("logs") for r in b["runs"] for line in r["lines"]]
    assert lines == [f"pour {i}" for i in range(FLOOD_LINES)] + ["after the flood", "a trickle"]
