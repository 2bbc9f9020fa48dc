"""Metric charts in the viewer, in Chromium against a real control plane: a
run's page charts each metric with every point it has and follows a running
run live; a 100,000-point series still leaves the page answering a click
within a second; metric names with markup are shown as text; the compare view
overlays the runs chosen on the runs list. Points come from a real run writing
$CAST_METRICS (shipped by a real worker) or through the worker route under a
lease the test holds."""

from __future__ import annotations

import itertools
import math

from playwright.sync_api import expect

from tests.factories import create_run, get_run, wait_final
from tests.web.helpers import screenshot, sign_in

MARKUP = "<img src=x onerror=alert(1)>"
BATCH = 5000  # the most points one worker request carries (cast.protocol.metrics.MAX_BATCH)

FIGURES = "() => [...document.querySelectorAll('figure.metric')].map((f) => [f.dataset.metric, f.dataset.points])"


def points(name: str, count: int, *, start: int = 0, value=float) -> list[dict]:
    return [{"name": name, "value": value(step), "step": step} for step in range(start, start + count)]


class HeldRun:
    """A run this test carries as its worker would (no worker process): leased,
    running, its points sent through POST /runs/N/metrics in batches."""

    def __init__(self, server, name: str):
        self.user = server.api()
        self.worker = server.api(server.worker_token)
        created = self.user.post("/runs", json={"command": "true"})
        assert created.status_code == 201, created.text
        self.run_id = created.json()["id"]
        registered = self.worker.post("/workers", json={"name": name, "executor": "local", "gpus": []})
        assert registered.status_code == 200, registered.text
        leased = self.worker.post(f"/workers/{registered.json()['id']}/lease", json={"free_gpus": 0, "wait": 0})
        assert leased.status_code == 200, leased.text
        self.lease = leased.json()
        assert self.lease["run_id"] == self.run_id
        self.seq = 0
        self.report("mounting", "running")

    def report(self, *statuses: str, **extra) -> None:
        for status in statuses:
            response = self.worker.post(f"/runs/{self.run_id}/status",
                                        json={"lease_token": self.lease["lease_token"], "status": status, **extra})
            assert response.status_code == 200, response.text

    def send(self, batch: list[dict]) -> None:
        for start in range(0, len(batch), BATCH):
            part = batch[start:start + BATCH]
            response = self.worker.post(f"/runs/{self.run_id}/metrics", json={
                "lease_token": self.lease["lease_token"], "seq": self.seq, "points": part})
            assert response.status_code == 200, response.text
            self.seq += len(part)
            self.worker.post(f"/runs/{self.run_id}/heartbeat", json={"lease_token": self.lease["lease_token"]})

    def complete(self) -> int:
        self.report("saving", "pushing")
        self.report("complete", exit_code=0)
        self.user.close()
        self.worker.close()
        return self.run_id


FEEDERS = itertools.count(1)


def run_with_points(server, *batches: list[dict]) -> int:
    held = HeldRun(server, name=f"feeder-{next(FEEDERS)}")
    for batch in batches:
        held.send(batch)
    return held.complete()


def test_a_run_page_charts_each_metric_with_all_its_points_and_markup_names_as_text(server, page):
    run_id = run_with_points(server, points("loss", 40), points("acc", 10, value=lambda s: s / 10),
                             points(MARKUP, 5))

    sign_in(page, server, f"#/runs/{run_id}")
    expect(page.locator("figure.metric")).to_have_count(3)
    expect(page.locator(".metrics-state")).to_have_text("finished")
    # One chart per metric, in the API's order (by name), each with every point.
    assert page.evaluate(FIGURES) == [[MARKUP, "5"], ["acc", "10"], ["loss", "40"]]
    with server.api() as api:
        summary = api.get(f"/runs/{run_id}/metrics").json()["metrics"]
    assert [(m["name"], m["count"]) for m in summary] == [(MARKUP, 5), ("acc", 10), ("loss", 40)]
    loss = page.locator('figure.metric[data-metric="loss"]')
    expect(loss.locator(".metric-summary")).to_have_text("40 points · last 39 · min 0 · max 39")
    assert loss.locator("canvas").bounding_box()["width"] > 300

    # The name with markup is text: in the caption and the chart's legend,
    # and no image element was made (the page watch sees no dialog or error).
    markup = page.locator("figure.metric").first
    expect(markup.locator(".metric-name")).to_have_text(MARKUP)
    expect(markup.locator(".u-legend")).to_contain_text(MARKUP)
    assert page.locator("main img").count() == 0
    screenshot(page, "run-metrics", for_docs=True)


def test_a_running_runs_charts_grow_live_without_a_reload(server, worker, page):
    def write(steps: str) -> str:
        return (f"for i in {steps}; do printf '{{\"name\": \"loss\", \"value\": %s, \"step\": %s}}\\n' $i $i"
                ' >> "$CAST_METRICS"; done')

    run = create_run(server, f"{write('0 1 2 3 4')}; sleep 12; {write('5 6 7 8 9')}; sleep 1")

    sign_in(page, server, f"#/runs/{run['id']}")
    page.evaluate("window.notReloaded = true")
    loss = page.locator('figure.metric[data-metric="loss"]')
    expect(loss).to_have_attribute("data-points", "5", timeout=120_000)
    assert get_run(server, run["id"])["status"] == "running"
    expect(page.locator(".metrics-state")).to_have_text("live")
    expect(loss).to_have_attribute("data-points", "10", timeout=60_000)
    expect(page.locator(".metrics-state")).to_have_text("finished", timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    assert wait_final(server, run["id"])["status"] == "complete"
    expect(loss.locator(".metric-summary")).to_contain_text("10 points · last 9")


# The time from a real click's input event to the frame after its handlers
# ran, measured in the page on the clock the event was stamped with.
CLICK_LATENCY = """(selector) => {
  window.clickLatency = new Promise((resolve) => {
    document.querySelector(selector).addEventListener("click", (event) => {
      const start = event.timeStamp;
      requestAnimationFrame(() => setTimeout(() => resolve(performance.now() - start)));
    }, { once: true });
  });
}"""


def test_a_100000_point_series_is_drawn_and_the_page_still_answers_clicks(server, page):
    held = HeldRun(server, name="feeder-large")
    held.send(points("loss", 100_000, value=lambda s: math.sin(s / 500) + s / 100_000))

    sign_in(page, server, f"#/runs/{held.run_id}")
    loss = page.locator('figure.metric[data-metric="loss"]')
    expect(loss).to_have_attribute("data-points", "100000", timeout=120_000)
    expect(loss.locator("canvas")).to_be_visible()

    # While the run is still live (the page polls it every second), a click
    # on the chart and one on the log's Follow toggle are answered quickly.
    for selector in ('figure.metric[data-metric="loss"] .u-over', ".follow-toggle"):
        page.evaluate(CLICK_LATENCY, selector)
        page.click(selector)
        took = page.evaluate("window.clickLatency")
        assert took < 1000, f"a click on {selector} took {took:.0f} ms to be answered"
    expect(page.locator(".follow-toggle")).not_to_be_checked()

    held.report("saving", "pushing")
    held.report("complete", exit_code=0)
    expect(page.locator(".metrics-state")).to_have_text("finished", timeout=30_000)
    assert loss.get_attribute("data-points") == "100000"


def test_compare_overlays_a_metric_of_the_runs_chosen_on_the_runs_list(server, page):
    first = run_with_points(server, points("loss", 30), points("acc", 3))
    second = run_with_points(server, points("loss", 20, value=lambda s: 2 * s))

    sign_in(page, server)
    compare = page.locator("#compare-runs")
    expect(compare).to_be_disabled()
    page.check(f'tr[data-run-id="{first}"] input.select-run')
    expect(page.locator(".page-head h1")).to_have_text("Runs")  # choosing a run does not open it
    page.check(f'tr[data-run-id="{second}"] input.select-run')
    expect(compare).to_have_text("Compare 2 runs")
    compare.click()

    page.wait_for_url(f"**/#/compare?runs={first}%2C{second}")
    chart = page.locator("figure.compare-chart")
    expect(chart).to_have_attribute("data-series", "2")
    options = "() => [...document.querySelectorAll('#compare-metric option')].map((o) => o.textContent)"
    assert page.evaluate(options) == ["loss (2 of 2 runs)", "acc (1 of 2 runs)"]
    expect(page.locator(f'.compare-run[data-run-id="{first}"]')).to_contain_text("30 points")
    expect(page.locator(f'.compare-run[data-run-id="{second}"]')).to_contain_text("20 points · last 38")
    legend = chart.locator(".u-legend")
    expect(legend).to_contain_text(f"#{first}")
    expect(legend).to_contain_text(f"#{second}")
    screenshot(page, "compare", for_docs=True)

    # Another metric: only the run that has it is drawn; the address follows.
    page.select_option("#compare-metric", "acc")
    expect(chart).to_have_attribute("data-series", "1")
    expect(page.locator(f'.compare-run[data-run-id="{second}"]')).to_contain_text("no points")
    assert page.evaluate("location.hash").endswith("&metric=acc")
    page.click(f'.compare-run[data-run-id="{first}"]')
    expect(page.locator(".run-head h1")).to_have_text(f"Run #{first}")


def test_a_run_with_many_metrics_gets_charts_for_the_first_sixty_and_numbers_for_all(server, page):
    run_id = run_with_points(server, [point for i in range(61) for point in points(f"m{i:02d}", 2)])
    sign_in(page, server, f"#/runs/{run_id}")
    expect(page.locator("figure.metric")).to_have_count(61)
    expect(page.locator(".metrics-state")).to_have_text("finished")
    assert page.locator("figure.metric canvas").count() == 60
    expect(page.locator(".metrics")).to_contain_text("Charts are drawn for the first 60 metrics")
    expect(page.locator('figure.metric[data-metric="m60"] .metric-summary')).to_have_text(
        "2 points · last 1 · min 0 · max 1")


def test_without_uplot_the_pages_say_charts_are_unavailable(server, page):
    run_id = run_with_points(server, points("loss", 3))
    page.route("**/static/vendor/uplot/**", lambda route: route.fulfill(status=404, body="not installed"))
    sign_in(page, server, f"#/runs/{run_id}")
    expect(page.locator(".charts-unavailable")).to_contain_text("Charts unavailable: run scripts/setup.sh")
    # The numbers are still there, as text.
    expect(page.locator('figure.metric[data-metric="loss"] .metric-summary')).to_have_text(
        "3 points · last 2 · min 0 · max 2")
