"""The web viewer in a real browser (Debian's Chromium via playwright) against
a real control plane and a real local worker: sign-in, the status table from
the API, the runs page, a run's live log, kill and stop, markup in logs, outputs downloads, lineage links, and
a job flooding its log."""

from __future__ import annotations

import io
import re
import shlex
import signal
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.sync_api import expect

from cast.protocol.status import RunStatus
from tests.conftest import REPO_ROOT
from tests.factories import create_run, get_run, page_entries, wait_status
from tests.web.helpers import load, screenshot, sign_in

STATIC = REPO_ROOT / "server" / "web" / "static"

LINE_TEXTS = "() => [...document.querySelectorAll('.log .line')].map((line) => line.textContent)"


def line_texts(page) -> list[str]:
    return page.evaluate(LINE_TEXTS)


def wait_for_line(page, text: str, timeout: float = 120_000) -> None:
    page.wait_for_function(
        "(text) => [...document.querySelectorAll('.log .line')].some((line) => line.textContent === text)",
        arg=text, timeout=timeout)


def status_badge(page):
    return page.locator("#run-status .badge")


def test_no_run_data_without_a_token_and_a_wrong_token_is_refused_clearly(server, page):
    run = create_run(server, "echo private-marker")  # no worker: it stays queued

    load(page, f"{server.url}/#/runs")
    expect(page.locator("form.login")).to_be_visible()
    assert "private-marker" not in page.inner_text("body")

    page.fill("#token", "not-a-real-token")
    page.click("form.login button[type=submit]")
    error = page.locator(".login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("refused this token (401")
    expect(page.locator("table.runs")).to_have_count(0)

    # A worker token is a real token, but not one that may read runs.
    page.fill("#token", server.worker_token)
    page.click("form.login button[type=submit]")
    expect(error).to_contain_text("403")
    expect(error).to_contain_text("worker token")
    expect(page.locator("table.runs")).to_have_count(0)

    page.fill("#token", server.admin_token)
    page.click("form.login button[type=submit]")
    row = page.locator(f'tr[data-run-id="{run["id"]}"]')
    expect(row).to_contain_text("echo private-marker")

    # The token is kept in the browser: a reload goes straight to the runs.
    load(page)
    expect(row).to_be_visible()

    # A kept token the server no longer accepts brings the form back, saying why.
    page.evaluate("localStorage.setItem('cast.token', 'revoked-token')")
    load(page)
    expect(page.locator("form.login")).to_be_visible()
    expect(page.locator(".login-error")).to_contain_text("401")
    assert "private-marker" not in page.inner_text("body")

    # "Forget token" signs out.
    sign_in(page, server)
    page.click("#logout")
    expect(page.locator("form.login")).to_be_visible()
    assert page.evaluate("localStorage.getItem('cast.token')") is None


def test_the_viewer_takes_its_statuses_from_the_api_once_per_page_load(server, page):
    table = httpx.get(f"{server.url}/api/v1/protocol/statuses", timeout=30).json()["statuses"]
    fetched = []
    page.on("request", lambda request: fetched.append(request.url) if "/protocol/statuses" in request.url else None)
    sign_in(page, server)
    options = "() => [...document.querySelectorAll('#status-filter option')].map((o) => o.value)"
    expect(page.locator("#status-filter option")).to_have_count(2 + len(table))
    assert page.evaluate(options) == ["", "active"] + [s["name"] for s in table]
    page.click('nav a[data-nav="uploads"]')
    expect(page.locator(".page-head h1")).to_have_text("Uploads")
    page.click('nav a[data-nav="runs"]')
    expect(page.locator("#status-filter")).to_be_visible()
    assert len(fetched) == 1, fetched

    # A table of the server's own making is what the page shows and filters by:
    # its order, and which statuses are final ("active" asks for the others).
    changed = [{**s, "final": s["name"] != "mounting"} for s in reversed(table)]
    page.route("**/api/v1/protocol/statuses", lambda route: route.fulfill(json={"statuses": changed}))
    load(page)
    expect(page.locator("#status-filter option")).to_have_count(2 + len(table))
    assert page.evaluate(options) == ["", "active"] + [s["name"] for s in changed]
    with page.expect_request(lambda request: "/api/v1/runs?" in request.url and "status=" in request.url) as listed:
        page.select_option("#status-filter", "active")
    assert parse_qs(urlsplit(listed.value.url).query)["status"] == ["mounting"]


def test_without_the_status_table_the_viewer_says_so_and_tries_again(server, page):
    page.route("**/api/v1/protocol/statuses", lambda route: route.abort())
    load(page, f"{server.url}/#/runs")
    expect(page.locator(".page-error")).to_contain_text("Cannot load the run statuses from the server")
    expect(page.locator("form.login")).to_have_count(0)
    page.unroute("**/api/v1/protocol/statuses")
    page.click("text=Try again")
    page.fill("#token", server.admin_token)
    page.click("form.login button[type=submit]")
    expect(page.locator("#status-filter option")).to_have_count(2 + len(RunStatus))


def test_a_viewer_file_that_cannot_be_fetched_is_said_with_a_reload_not_a_blank_page(server, page):
    page.route("**/static/util.js", lambda route: route.abort())  # a module app.js imports
    page.goto(f"{server.url}/#/runs")  # not load(), which would load it again
    expect(page.locator(".boot-error")).to_contain_text("could not load all of its files")
    expect(page.locator("form.login")).to_have_count(0)
    page.unroute("**/static/util.js")
    page.click("text=Reload")
    expect(page.locator("form.login")).to_be_visible()
    expect(page.locator(".boot-error")).to_have_count(0)


def test_runs_page_shows_new_runs_and_status_changes_live_and_filters(server, worker, page, narrow_page):
    sign_in(page, server)
    expect(page.locator(".empty")).to_contain_text("No runs yet")
    page.evaluate("window.notReloaded = true")

    done = create_run(server, "echo done", labels=["exp1"])
    done_row = page.locator(f'tr[data-run-id="{done["id"]}"]')
    expect(done_row).to_be_visible()
    expect(done_row.locator(".badge")).to_have_attribute("data-status", "complete", timeout=60_000)

    failing = create_run(server, "echo oops >&2; exit 3", labels=["exp2"])
    failing_row = page.locator(f'tr[data-run-id="{failing["id"]}"]')
    expect(failing_row.locator(".badge")).to_have_attribute("data-status", "failed", timeout=60_000)

    sleeper = create_run(server, "sleep 120", labels=["exp1", "long"], env={"SEED": "1"})
    sleeper_row = page.locator(f'tr[data-run-id="{sleeper["id"]}"]')
    expect(sleeper_row.locator(".badge")).to_have_attribute("data-status", "running", timeout=60_000)
    assert page.evaluate("window.notReloaded") is True

    # Newest first, with every column filled in.
    ids = page.eval_on_selector_all("table.runs tbody tr", "(rows) => rows.map((r) => Number(r.dataset.runId))")
    assert ids == [sleeper["id"], failing["id"], done["id"]]
    expect(sleeper_row.locator("td.command")).to_have_text("sleep 120")
    expect(sleeper_row.locator("td.labels .chip")).to_have_text(["exp1", "long"])
    expect(sleeper_row.locator("td.machine")).to_have_text("cpu")
    expect(sleeper_row.locator("td.executor")).to_contain_text("local")
    expect(sleeper_row.locator("td.executor")).to_contain_text(worker.name)
    expect(sleeper_row.locator("td.created")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))
    expect(done_row.locator("td.duration")).to_have_text(re.compile(r"^\d+\.\d\ds$"))
    # The running run's duration keeps counting.
    before = sleeper_row.locator("td.duration").inner_text()
    expect(sleeper_row.locator("td.duration")).not_to_have_text(before, timeout=60_000)

    screenshot(page, "runs-page", for_docs=True)

    def visible_ids():
        return page.eval_on_selector_all("table.runs tbody tr", "(rows) => rows.map((r) => Number(r.dataset.runId))")

    page.select_option("#status-filter", "failed")
    page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr').length === 1")
    assert visible_ids() == [failing["id"]]
    assert "status=failed" in page.url
    page.select_option("#status-filter", "active")
    page.wait_for_function(f"() => [...document.querySelectorAll('table.runs tbody tr')].map((r) => r.dataset.runId).join() === '{sleeper['id']}'")
    page.select_option("#status-filter", "")
    page.fill("#label-filter", "exp1")
    page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr').length === 2")
    assert visible_ids() == [sleeper["id"], done["id"]]
    page.fill("#label-filter", "nothing-has-this")
    expect(page.locator(".empty")).to_contain_text("No runs match")
    page.fill("#label-filter", "")
    page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr').length === 3")

    # Readable on a phone: one card per run, nothing wider than the window.
    sign_in(narrow_page, server)
    expect(narrow_page.locator(f'tr[data-run-id="{sleeper["id"]}"] .badge')).to_have_attribute("data-status", "running")
    assert narrow_page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(narrow_page, "runs-page-narrow")

    # Stop, from the run's page: the command ends and the status follows.
    sleeper_row.locator("a.run-link").click()
    expect(page.locator(".run-head h1")).to_have_text(f"Run #{sleeper['id']}")
    page.click("#stop-run")
    expect(status_badge(page)).to_have_attribute("data-status", "stopped", timeout=30_000)
    assert get_run(server, sleeper["id"])["status"] == "stopped"
    expect(page.locator("#stop-run")).to_be_disabled()
    expect(page.locator("#kill-run")).to_be_disabled()


def test_live_log_lines_appear_while_running_and_kill_ends_the_run(server, worker, page):
    run = create_run(server, 'for i in $(seq 1 600); do echo "tick $i"; sleep 0.2; done')
    sign_in(page, server, f"#/runs/{run['id']}")
    page.evaluate("window.notReloaded = true")

    wait_for_line(page, "tick 3")
    expect(status_badge(page)).to_have_attribute("data-status", "running")
    # Lines keep arriving while the page stays as it is (no reload).
    for tick in (5, 8, 12):
        wait_for_line(page, f"tick {tick}")
    assert page.evaluate("window.notReloaded") is True
    ticks = lambda: sum(text.startswith("tick ") for text in line_texts(page))  # noqa: E731
    expect(page.locator(".log-state")).to_have_text("live")
    expect(page.locator("ol.stages li.current")).to_have_attribute("data-status", "running")

    page.click("#kill-run")  # arms the button
    expect(page.locator("#kill-run")).to_contain_text("Really kill")
    page.click("#kill-run")
    expect(status_badge(page)).to_have_attribute("data-status", "killed", timeout=30_000)
    assert get_run(server, run["id"])["status"] == "killed"
    expect(page.locator(".log-state")).to_have_text("finished", timeout=30_000)
    expect(page.locator("#kill-run")).to_be_disabled()
    expect(page.locator("ol.stages li").last).to_have_attribute("data-status", "killed")
    assert ticks() < 600


def test_live_log_resumes_after_the_connection_drops_without_losing_or_repeating_lines(server, worker, page):
    run = create_run(server, 'for i in $(seq 1 40); do echo "tick $i"; sleep 0.2; done')
    sign_in(page, server, f"#/runs/{run['id']}")
    wait_for_line(page, "tick 3")

    server.stop(signal.SIGKILL)  # every connection drops at once
    expect(page.locator(".log-state")).to_contain_text("reconnecting")
    server.start()
    expect(page.locator(".log-state")).to_have_text("finished", timeout=60_000)

    with server.api() as api:
        entries = page_entries(api.get(f"/runs/{run['id']}/logs", params={"limit": 10000}).json())
    assert line_texts(page) == [entry["text"] for entry in entries]
    assert sum(text.startswith("tick ") for text in line_texts(page)) > 3


def test_log_markup_is_shown_as_text_and_runs_nothing(server, worker, page, watch):
    command = ("echo '<script>alert(1)</script>'; echo '<img src=x onerror=alert(1)>'; "
               "printf '\\033[1;31mred alert\\033[0m plain\\n'")
    run = create_run(server, command, env={"API_TOKEN": "hunter2-value", "SEED": "7"})
    wait_status(server, run["id"], "complete")

    sign_in(page, server, f"#/runs/{run['id']}")
    wait_for_line(page, "<img src=x onerror=alert(1)>")
    texts = line_texts(page)
    assert "<script>alert(1)</script>" in texts
    expect(page.get_by_text("<script>alert(1)</script>", exact=True)).to_be_visible()
    expect(page.get_by_text("<img src=x onerror=alert(1)>", exact=True)).to_be_visible()
    assert page.locator(".log img, .log script, img").count() == 0
    # The viewer's own, and nothing a line brought.
    assert page.evaluate("[...document.scripts].map((s) => new URL(s.src).pathname)") == [
        "/static/boot.js", "/static/app.js"]

    # ANSI colour codes become styled text; the codes themselves are not shown.
    red = page.locator(".log span.ansi-fg-1.ansi-bold")
    expect(red).to_have_text("red alert")
    assert "red alert plain" in texts

    # The command is shown as text too, and secret-looking values are masked.
    expect(page.locator("pre.command")).to_have_text(command)
    env = page.locator("table.env")
    expect(env).to_contain_text("SEED")
    expect(env).to_contain_text("7")
    expect(env).to_contain_text("API_TOKEN")
    assert "hunter2-value" not in page.inner_text("body")

    page.wait_for_timeout(300)  # give any injected handler its chance to fire
    assert watch.dialogs == []


def test_outputs_tree_downloads_files_and_folders_and_lineage_links_lead_to_runs(server, worker, page, narrow_page):
    payload = bytes(range(256)) * 12
    producer = create_run(
        server,
        "mkdir -p data/sub checkpoints/best && python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 12)'"
        " > data/sub/blob.bin && echo hello > result.txt")
    wait_status(server, producer["id"], "complete")
    with server.api() as api:
        response = api.put("/uploads/vocab", params={"kind": "file"}, content=b"a\nb\n")
        assert response.status_code == 201, response.text
    consumer = create_run(
        server,
        "printf '\\033[32mINFO\\033[0m reading data\\n'; ls -R data; wc -l vocab.txt; "
        "printf '\\033[33mWARN\\033[0m loss is still high\\n'; cat data/sub/blob.bin | wc -c > size.txt; echo done",
        mounts=[{"resource": f"runs/{producer['id']}/data", "path": "data"},
                {"resource": "uploads/vocab", "path": "vocab.txt"}],
        env={"SEED": "7", "HF_TOKEN": "not-for-screens"}, labels=["exp1"])
    wait_status(server, consumer["id"], "complete")

    sign_in(page, server, f"#/runs/{producer['id']}")
    result_row = page.locator(".tree-file", has=page.locator('button[data-path="result.txt"]'))
    expect(result_row.locator(".tree-size")).to_have_text("6 B")

    def download(selector: str) -> tuple[str, bytes]:
        with page.expect_download() as info:
            page.click(selector)
        return info.value.suggested_filename, Path(info.value.path()).read_bytes()

    assert download('button[data-path="result.txt"]') == ("result.txt", b"hello\n")
    # The empty folders are shown, with no archive to download.
    empty = page.locator("li.tree-empty", has=page.locator(".tree-name", has_text="checkpoints/"))
    expect(empty.locator("summary .tree-size").first).to_have_text("no files")
    expect(empty.locator("li.tree-empty .tree-name")).to_have_text("best/")
    expect(empty.locator("button")).to_have_count(0)
    page.click("summary:has(button[data-path='data/sub'])")  # open the folder
    assert download('button[data-path="data/sub/blob.bin"]') == ("blob.bin", payload)
    name, tar_bytes = download('button[data-path="data"][data-kind="folder"]')
    assert name.endswith(".tar")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}
        assert set(members) == {"sub/blob.bin"}, members
        assert archive.extractfile(members["sub/blob.bin"]).read() == payload

    # Lineage: the producer lists the run that mounted it; that run links back.
    mounted_by = page.locator(".mounted-by a", has_text=f"#{consumer['id']}")
    mounted_by.click()
    expect(page.locator(".run-head h1")).to_have_text(f"Run #{consumer['id']}")
    assert page.url.endswith(f"#/runs/{consumer['id']}")
    wait_for_line(page, "done")
    expect(page.locator(".log span.ansi-fg-2")).to_have_text("INFO")
    expect(page.locator(".tree-file button[data-path='size.txt']")).to_be_visible()
    assert "not-for-screens" not in page.inner_text("body")
    expect(page.locator("ol.stages li[data-status='building'] .stage-note")).to_have_text("cached")
    screenshot(page, "run-page", for_docs=True)

    sign_in(narrow_page, server, f"#/runs/{consumer['id']}")
    wait_for_line(narrow_page, "done")
    assert narrow_page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(narrow_page, "run-page-narrow")

    page.click(f'a.resource-link[data-resource="runs/{producer["id"]}/data"]')
    expect(page.locator(".run-head h1")).to_have_text(f"Run #{producer['id']}")
    page.go_back()
    page.click('a.resource-link[data-resource="uploads/vocab"]')
    expect(page.locator(".page-head h1")).to_have_text("uploads/vocab")
    expect(page.locator(".tree-file")).to_have_count(1)


# 100,000 lines over about 30 s: logs travel in chunks now, so a shorter flood
# is read and drawn whole before a page opened on a busy machine can be tried.
FLOOD = """
import sys, time
for block in range(100):
    sys.stdout.write(''.join(f'line {block * 1000 + i} ' + 'x' * 40 + chr(10) for i in range(1000)))
    sys.stdout.flush()
    time.sleep(0.3)
"""


def test_page_stays_responsive_while_a_job_prints_100000_lines(server, worker, page):
    run = create_run(server, f"python3 -c {shlex.quote(FLOOD)}")
    sign_in(page, server, f"#/runs/{run['id']}")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.log .line')].some((l) => l.textContent.startsWith('line '))",
        timeout=60_000)

    # Toggle following over and over while the lines pour in: every click is
    # answered (its handler runs) while the flood goes on. The bound only
    # guards against a page that froze; how fast it answers is not a test's
    # question on a shared machine.
    toggle = page.locator(".follow-toggle")
    answered = "(paused) => document.querySelector('.log-card').classList.contains('paused') === paused"
    clicks, paused = 0, False
    while page.inner_text(".log-state") != "finished" and clicks < 80:
        paused = not paused
        toggle.click()
        page.wait_for_function(answered, arg=paused, timeout=120_000)
        clicks += 1
        page.wait_for_timeout(150)
    if paused:
        toggle.click()
    assert clicks >= 5, "the log finished before the page could be tried under load"

    expect(page.locator(".log-state")).to_have_text("finished", timeout=120_000)
    wait_for_line(page, "line 99999 " + "x" * 40)
    lines_in_page = page.locator(".log .line").count()
    assert 1000 < lines_in_page <= 5000  # a bounded window, not the whole log
    expect(page.locator(".log-count")).to_contain_text(re.compile(r"100,0\d\d lines"))
    expect(page.locator(".log-notice")).to_contain_text("download the whole log")
    # Following keeps the newest line in view.
    assert page.evaluate("(() => { const log = document.querySelector('.log');"
                         " return log.scrollHeight - log.scrollTop - log.clientHeight < 5; })()")

    # The search box filters the lines.
    page.fill(".log-search", "line 9999")
    page.wait_for_function("() => document.querySelectorAll('.log .line').length < 20")
    shown = line_texts(page)
    assert len(shown) == 10 and all(text.startswith("line 9999") for text in shown), shown
    page.fill(".log-search", "")
    page.wait_for_function("() => document.querySelectorAll('.log .line').length > 1000")

    # The whole log, every line, is one click away (100,000 lines to fetch: a
    # busy machine may take a while).
    with page.expect_download(timeout=180_000) as info:
        page.click("text=Download whole log")
    whole = Path(info.value.path()).read_text().splitlines()
    job_lines = [line for line in whole if line.startswith("line ")]
    assert len(job_lines) == 100_000
    assert job_lines[0] == "line 0 " + "x" * 40 and job_lines[-1] == "line 99999 " + "x" * 40


ANSI_CASES = r"""async () => {
  const { parseAnsi, plainText, renderAnsi } = await import("/static/ansi.js");
  const spans = (text) => {
    const line = document.createElement("div");
    renderAnsi(line, text);
    return [...line.childNodes].map((node) => node.nodeType === Node.TEXT_NODE
      ? { text: node.textContent }
      : { text: node.textContent, className: node.className, color: node.style.color, background: node.style.backgroundColor });
  };
  return {
    boldRed: spans("\x1b[1;31mred\x1b[0m plain"),
    xterm256: spans("\x1b[38;5;208mamber"),
    trueColour: spans("\x1b[48;2;10;20;30mbg"),
    colonForm: spans("\x1b[38:2::1:2:3mz"),
    defaultFg: spans("a\x1b[32mb\x1b[39mc"),
    inverse: spans("\x1b[7minv"),
    progress: plainText("50%\r100%"),
    crlf: plainText("done\r"),
    otherCsi: plainText("\x1b[2K\x1b[1Gcleared"),
    osc: plainText("\x1b]0;title\x07text"),
    markup: spans("\x1b[31m<b>x</b>"),
    segments: parseAnsi("\x1b[4munder\x1b[24m").map((s) => [s.text, s.style.underline]),
  };
}"""


def test_ansi_codes_become_styles_and_other_escapes_are_dropped(server, page):
    load(page, f"{server.url}/")
    result = page.evaluate(ANSI_CASES)
    assert result["boldRed"] == [
        {"text": "red", "className": "ansi-fg-1 ansi-bold", "color": "", "background": ""},
        {"text": " plain"}]
    assert result["xterm256"] == [{"text": "amber", "className": "", "color": "rgb(255, 135, 0)", "background": ""}]
    assert result["trueColour"] == [{"text": "bg", "className": "", "color": "", "background": "rgb(10, 20, 30)"}]
    assert result["colonForm"][0]["color"] == "rgb(1, 2, 3)"
    assert [s["text"] for s in result["defaultFg"]] == ["a", "b", "c"]
    assert result["defaultFg"][1]["className"] == "ansi-fg-2" and "className" not in result["defaultFg"][2]
    assert result["inverse"][0]["className"] == "ansi-fg-inverse ansi-bg-inverse"
    assert result["progress"] == "100%"
    assert result["crlf"] == "done"
    assert result["otherCsi"] == "cleared"
    assert result["osc"] == "text"
    assert result["markup"] == [{"text": "<b>x</b>", "className": "ansi-fg-1", "color": "", "background": ""}]
    assert result["segments"] == [["under", True]]


def test_viewer_code_never_parses_strings_as_html():
    sources = {path.name: path.read_text() for path in STATIC.glob("*.js")}
    assert "app.js" in sources
    for name, text in sources.items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser",
                     "createContextualFragment", "eval(", "new Function"):
            assert sink not in text, f"{name} uses {sink}"
