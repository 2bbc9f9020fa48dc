"""The viewer's search pages in Chromium against a real control plane and a
real local worker: a grid search whose runs write their metric to
$CAST_METRICS is listed, its trials fill the table best first, a clicked
column sorts them, and each parameter gets a chart of the metric against it."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.conftest import wait_until
from tests.web.helpers import screenshot, sign_in

# loss = lr * width, written as the run's one metric point.
COMMAND = ("python3 -c 'import json, os, sys; open(os.environ[\"CAST_METRICS\"], \"a\").write("
           "json.dumps({\"name\": \"loss\", \"value\": float(sys.argv[1]) * float(sys.argv[2])}) + \"\\n\")'"
           " :lr: :width:")
LR = [0.1, 0.01, 0.001]
WIDTH = [1, 3]

ROW_TRIALS = "() => [...document.querySelectorAll('table.trials tbody tr')].map((r) => Number(r.dataset.trial))"
COLUMN = "(key) => [...document.querySelectorAll(`table.trials tbody td.${key}`)].map((td) => td.textContent)"


def test_a_search_page_lists_trials_sorts_them_and_charts_the_metric_by_parameter(server, worker, page):
    sign_in(page, server, "#/searches")
    expect(page.locator(".empty")).to_contain_text("No searches yet. Start one with: cast hyper grid")
    with server.api() as api:
        created = api.post("/searches", json={
            "kind": "grid", "command": COMMAND,
            "params": {"lr": ",".join(map(str, LR)), "width": ",".join(map(str, WIDTH))},
            "parallel": 2, "metric": "loss", "goal": "minimize", "metric_agg": "last",
        })
        assert created.status_code == 201, created.text
        search_id = created.json()["id"]

        def finished():
            search = api.get(f"/searches/{search_id}").json()
            return search if search["status"] != "running" else None

        # The list refreshes by itself: the new search appears.
        row = page.locator(f'tr[data-search-id="{search_id}"]')
        expect(row).to_contain_text("grid")
        expect(row).to_contain_text("loss (last, minimize)")
        row.locator("td.command a").click()

        expect(page.locator(".run-head h1")).to_have_text(f"Search #{search_id}")
        search = wait_until(finished, timeout=240, interval=1, what=f"search {search_id} to end")
    assert search["status"] == "complete", search
    expect(page.locator("#search-status .badge")).to_have_attribute("data-status", "complete", timeout=30_000)
    rows = page.locator("table.trials tbody tr")
    expect(rows).to_have_count(len(LR) * len(WIDTH))
    expect(page.locator("table.trials tbody td.value").first).not_to_have_text("—")

    # Best first (the lowest loss, as the goal is to minimise), the best row marked.
    by_value = sorted(search["trials"], key=lambda t: (t["value"], t["number"]))
    assert page.evaluate(ROW_TRIALS) == [t["number"] for t in by_value]
    assert page.locator("table.trials tbody tr").first.get_attribute("class") == "best"
    assert by_value[0]["number"] == search["best"]["number"]
    assert by_value[0]["params"] == {"lr": 0.001, "width": 1}
    expect(page.locator('th[data-key="value"]')).to_have_attribute("aria-sort", "ascending")

    # A click on a column sorts by it; a second click reverses it.
    page.click('th[data-key="param:lr"] button')
    expect(page.locator('th[data-key="param:lr"]')).to_have_attribute("aria-sort", "ascending")
    lrs = page.evaluate(COLUMN, "param")[::2]  # lr, width, lr, width, ...
    assert lrs == ["0.001", "0.001", "0.01", "0.01", "0.1", "0.1"]
    page.click('th[data-key="param:lr"] button')
    expect(page.locator('th[data-key="param:lr"]')).to_have_attribute("aria-sort", "descending")
    assert page.evaluate(COLUMN, "param")[::2] == ["0.1", "0.1", "0.01", "0.01", "0.001", "0.001"]
    page.click('th[data-key="number"] button')
    assert page.evaluate(ROW_TRIALS) == sorted(t["number"] for t in search["trials"])

    # One chart per parameter, a point per finished trial.
    charts = page.locator("figure.param-chart")
    expect(charts).to_have_count(2)
    for name in ("lr", "width"):
        chart = page.locator(f'figure.param-chart[data-param="{name}"]')
        expect(chart).to_have_attribute("data-points", str(len(LR) * len(WIDTH)))
        expect(chart.locator("canvas")).to_be_visible()
    screenshot(page, "search-page", for_docs=True)

    # A trial's run is a link to its page.
    first_run = by_value[0]["run_id"]
    page.click(f'table.trials a[href="#/runs/{first_run}"]')
    expect(page.locator(".run-head h1")).to_have_text(f"Run #{first_run}")
    expect(page.locator('figure.metric[data-metric="loss"]')).to_have_attribute("data-points", "1")


def test_a_search_is_stopped_then_killed_from_its_page(server, worker, page):
    with server.api() as api:
        created = api.post("/searches", json={
            "kind": "grid", "command": "sleep :seconds:", "params": {"seconds": "120,121"}, "parallel": 1,
        })
        assert created.status_code == 201, created.text
        search_id = created.json()["id"]

    sign_in(page, server, f"#/searches/{search_id}")
    first = page.locator('table.trials tr[data-trial="0"]')
    expect(first.locator(".badge")).to_have_attribute("data-status", "running", timeout=120_000)
    expect(page.locator("table.trials tbody tr")).to_have_count(1)  # one at a time

    # Stop: no new trials, the running one goes on (and the page follows it).
    page.click("#stop-search")
    expect(page.locator("#search-status .badge")).to_have_attribute("data-status", "stopped")
    expect(page.locator("#stop-search")).to_be_disabled()
    expect(first.locator(".badge")).to_have_attribute("data-status", "running")

    # Kill: the running trial is killed too.
    page.click("#kill-search")
    expect(page.locator("#search-status .badge")).to_have_attribute("data-status", "killed")
    expect(page.locator("#kill-search")).to_be_disabled()
    expect(first.locator(".badge")).to_have_attribute("data-status", "killed", timeout=60_000)
    expect(page.locator("table.trials tbody tr")).to_have_count(1)  # and no other began
    expect(page.locator(".run-meta")).to_contain_text("killed by")
