// A run's metrics on its page: every point read from /metrics/points (from
// next_offset on, every second while the run is active), grouped by name,
// one chart per metric with its last, lowest and highest value. A metric's x
// axis is its step, or the time when its first point has no step.

import { apiJson, AuthError } from "./api.js";
import { chartsUnavailable, lineChart, loadUplot } from "./charts.js";
import { h, sleep } from "./util.js";

const POLL_MS = 1_000;
const PAGE = 100_000; // the most the API answers at once
// A run may record up to 1,000 names; past this many charts the page would
// crawl, so later metrics keep their numbers but get no chart.
const MAX_CHARTS = 60;

export function formatValue(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e6)) return value.toExponential(3);
  return String(Number(value.toPrecision(5)));
}

// One metric's points, kept sorted by x for the chart (a retried run may
// start its steps again).
export class Series {
  constructor(name, byStep) {
    this.name = name;
    this.byStep = byStep;
    this.xs = [];
    this.ys = [];
    this.sorted = true;
    this.last = null;
    this.min = Infinity;
    this.max = -Infinity;
  }

  add(point) {
    const x = this.byStep ? (point.step ?? this.xs.length) : Date.parse(point.time) / 1000;
    if (this.xs.length && x < this.xs[this.xs.length - 1]) this.sorted = false;
    this.xs.push(x);
    this.ys.push(point.value);
    this.last = point.value;
    this.min = Math.min(this.min, point.value);
    this.max = Math.max(this.max, point.value);
  }

  data() {
    if (!this.sorted) {
      const order = this.xs.map((_, i) => i).sort((a, b) => this.xs[a] - this.xs[b]);
      this.xs = order.map((i) => this.xs[i]);
      this.ys = order.map((i) => this.ys[i]);
      this.sorted = true;
    }
    return [this.xs, this.ys];
  }
}

export class MetricsView {
  constructor(runId) {
    this.runId = runId;
    this.controller = new AbortController();
    this.series = new Map(); // name -> Series
    this.figures = new Map(); // name -> {figure, summary, box, chart}
    this.offset = 0;
    this.charts = 0;
    this.running = false;
    this.uPlot = undefined; // undefined: not tried yet; null: unavailable

    this.state = h("span", { className: "metrics-state muted" });
    this.note = h("div");
    this.empty = h("p", { className: "muted metrics-empty" },
      "No metrics yet. A run records one by appending a JSON line such as ",
      h("code", {}, '{"name": "loss", "value": 0.25, "step": 3}'),
      " to the file named by ", h("code", {}, "$CAST_METRICS"), ".");
    this.grid = h("div", { className: "metric-grid" });
    this.element = h("section", { className: "card metrics" },
      h("div", { className: "card-head" }, h("h2", {}, "Metrics"), this.state),
      this.note, this.empty, this.grid);
  }

  // Follows the points until the run is final and all were read; called
  // again when an interrupted run is queued again.
  start() {
    if (this.running || this.controller.signal.aborted) return;
    this.running = true;
    this.follow().finally(() => { this.running = false; });
  }

  async follow() {
    const { signal } = this.controller;
    if (this.uPlot === undefined) {
      try {
        this.uPlot = await loadUplot();
      } catch (err) {
        this.uPlot = null;
        this.note.replaceChildren(chartsUnavailable(err));
      }
    }
    while (!signal.aborted) {
      let page;
      try {
        page = await apiJson(`/runs/${this.runId}/metrics/points?offset=${this.offset}&limit=${PAGE}`, { signal });
      } catch (err) {
        if (signal.aborted || err instanceof AuthError) return;
        this.setState(`cannot read metrics: ${err.message}`, "error");
        await sleep(POLL_MS, signal);
        continue;
      }
      this.add(page.points);
      this.offset = page.next_offset;
      if (page.points.length >= PAGE) continue;
      if (page.finished) {
        this.setState(this.series.size ? "finished" : "", "done");
        return;
      }
      this.setState("live", "live");
      await sleep(POLL_MS, signal);
    }
  }

  setState(text, tone) {
    this.state.textContent = text;
    this.state.dataset.tone = tone;
  }

  add(points) {
    const changed = new Set();
    for (const point of points) {
      let series = this.series.get(point.name);
      if (!series) {
        series = new Series(point.name, point.step !== null && point.step !== undefined);
        this.series.set(point.name, series);
      }
      series.add(point);
      changed.add(point.name);
    }
    for (const name of changed) this.draw(this.series.get(name));
    this.empty.hidden = this.series.size > 0;
  }

  draw(series) {
    let entry = this.figures.get(series.name);
    if (!entry) entry = this.addFigure(series);
    entry.summary.textContent = `${series.xs.length} points · last ${formatValue(series.last)} · `
      + `min ${formatValue(series.min)} · max ${formatValue(series.max)}`;
    entry.figure.dataset.points = String(series.xs.length);
    if (!this.uPlot) return;
    if (!entry.chart && this.charts >= MAX_CHARTS) {
      this.note.replaceChildren(h("p", { className: "muted" },
        `Charts are drawn for the first ${MAX_CHARTS} metrics; the others show their numbers only.`));
      return;
    }
    if (entry.chart) {
      entry.chart.setData(series.data());
    } else {
      this.charts += 1;
      entry.chart = lineChart(this.uPlot, entry.box, {
        // The caption names the metric; a long name would not fit beside the axis.
        xLabel: series.byStep ? "step" : "time", yLabel: null, series: [series.name],
        data: series.data(), time: !series.byStep,
      });
    }
  }

  addFigure(series) {
    const summary = h("span", { className: "metric-summary muted" });
    const box = h("div", { className: "metric-chart" });
    const figure = h("figure", { className: "metric", dataset: { metric: series.name } },
      h("figcaption", {}, h("span", { className: "metric-name" }, series.name), summary), box);
    const entry = { figure, summary, box, chart: null };
    this.figures.set(series.name, entry);
    // Sorted by name, as the API lists metrics.
    const after = [...this.figures.keys()].sort().find((name) => name > series.name);
    this.grid.insertBefore(figure, after ? this.figures.get(after).figure : null);
    return entry;
  }

  dispose() {
    this.controller.abort();
    for (const entry of this.figures.values()) entry.chart?.destroy();
  }
}
