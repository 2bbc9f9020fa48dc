// Comparing runs: the checkboxes and the Compare button of the runs list
// (RunPicker), and the compare view (#/compare?runs=3,5&metric=loss), which
// overlays one metric of the chosen runs in one chart, a line per run, and
// follows the runs that are still active.

import { apiJson, AuthError } from "./api.js";
import { chartsUnavailable, lineChart, loadUplot, seriesColor } from "./charts.js";
import { formatValue, Series } from "./metrics.js";
import { h, sleep } from "./util.js";

const POLL_MS = 2_000;
const PAGE = 100_000;
export const MAX_COMPARED = 20;

export function compareHash(runIds, metric) {
  const params = new URLSearchParams({ runs: runIds.join(",") });
  if (metric) params.set("metric", metric);
  return `#/compare?${params}`;
}

// Which runs of the list are chosen; kept across the list's refreshes.
export class RunPicker {
  constructor() {
    this.selected = new Set();
    this.button = h("button", {
      type: "button", className: "button", id: "compare-runs",
      onclick: () => { location.hash = compareHash([...this.selected].sort((a, b) => a - b)); },
    });
    this.update();
  }

  box(runId) {
    return h("input", {
      type: "checkbox", className: "select-run", checked: this.selected.has(runId),
      "aria-label": `Select run ${runId} to compare`,
      onchange: (event) => {
        if (event.target.checked) this.selected.add(runId);
        else this.selected.delete(runId);
        this.update();
      },
    });
  }

  update() {
    const count = this.selected.size;
    this.button.disabled = count < 2 || count > MAX_COMPARED;
    this.button.textContent = count ? `Compare ${count} runs` : "Compare";
    this.button.title = count > MAX_COMPARED
      ? `Compare at most ${MAX_COMPARED} runs at once`
      : "Select two or more runs to overlay their metrics";
  }
}

function parseRunIds(text) {
  const ids = (text || "").split(",").filter(Boolean);
  if (!ids.length || ids.some((id) => !/^\d{1,12}$/.test(id))) return null;
  return [...new Set(ids.map(Number))].slice(0, MAX_COMPARED);
}

export function comparePage(main, query) {
  const controller = new AbortController();
  const runIds = parseRunIds(query.get("runs"));
  const error = h("p", { className: "page-error", role: "alert", hidden: true });
  document.title = "cast · compare runs";
  main.append(h("p", { className: "crumbs" }, h("a", { href: "#/runs" }, "← Runs")));
  if (!runIds) {
    main.append(h("p", { className: "page-error", role: "alert" },
      "Nothing to compare: choose runs on the runs page and press Compare."));
    return () => controller.abort();
  }

  const metricSelect = h("select", { id: "compare-metric", "aria-label": "Metric to compare" });
  const note = h("div");
  const legend = h("p", { className: "compare-runs" });
  const box = h("div", { className: "chart-box" });
  const caption = h("span", { className: "chart-name" });
  const figure = h("figure", { className: "chart compare-chart" }, h("figcaption", {}, caption), box);
  main.append(
    h("div", { className: "page-head" },
      h("h1", {}, "Compare runs"),
      h("div", { className: "filters" }, h("label", {}, "Metric ", metricSelect))),
    error, note,
    h("section", { className: "card" }, legend, figure));

  let loading = null; // the AbortController of the metric being drawn
  let chart = null;

  async function start() {
    const { signal } = controller;
    let uPlot = null;
    try {
      uPlot = await loadUplot();
    } catch (err) {
      note.replaceChildren(chartsUnavailable(err));
    }
    const summaries = await Promise.all(runIds.map((id) =>
      apiJson(`/runs/${id}/metrics`, { signal }).then((answer) => answer.metrics, (err) => {
        if (!signal.aborted && !(err instanceof AuthError)) {
          error.textContent = `Run ${id}: ${err.message}`;
          error.hidden = false;
        }
        return [];
      })));
    if (signal.aborted) return;
    // The metric most of the runs have comes first.
    const counts = new Map();
    for (const metrics of summaries) for (const m of metrics) counts.set(m.name, (counts.get(m.name) || 0) + 1);
    const names = [...counts.keys()].sort((a, b) => counts.get(b) - counts.get(a) || (a < b ? -1 : 1));
    if (!names.length) {
      legend.replaceChildren(h("span", { className: "muted" }, "None of these runs has recorded a metric yet."));
      figure.hidden = true;
      return;
    }
    metricSelect.replaceChildren(...names.map((name) =>
      h("option", { value: name }, `${name} (${counts.get(name)} of ${runIds.length} runs)`)));
    metricSelect.value = names.includes(query.get("metric")) ? query.get("metric") : names[0];
    metricSelect.addEventListener("change", () => {
      history.replaceState(null, "", compareHash(runIds, metricSelect.value));
      show(uPlot, metricSelect.value);
    });
    show(uPlot, metricSelect.value);
  }

  function show(uPlot, name) {
    loading?.abort();
    loading = new AbortController();
    const signal = AbortSignal.any([controller.signal, loading.signal]);
    chart?.destroy();
    chart = null;
    caption.textContent = name;
    const series = runIds.map(() => null);
    const finished = runIds.map(() => false);
    let byStep = null;

    const redraw = () => {
      const shown = runIds.map((id, i) => [id, i]).filter(([, i]) => series[i]);
      legend.replaceChildren(...runIds.map((id, i) => {
        const chip = h("a", { href: `#/runs/${id}`, className: "chip compare-run", dataset: { runId: id } },
          `#${id}`, series[i]
            ? ` · ${series[i].xs.length} points · last ${formatValue(series[i].last)}`
            : finished[i] ? " · no points" : "");
        chip.style.borderColor = seriesColor(i);
        return chip;
      }));
      if (!uPlot || !shown.length) return;
      const data = uPlot.join(shown.map(([, i]) => series[i].data()));
      if (chart && chart.series.length === shown.length + 1) {
        chart.setData(data);
      } else {
        chart?.destroy();
        chart = lineChart(uPlot, box, {
          xLabel: byStep ? "step" : "time", yLabel: null, time: !byStep,
          series: shown.map(([id]) => `#${id}`), data,
          // Each run keeps its colour whichever runs have points yet.
          colors: shown.map(([, i]) => seriesColor(i)),
        });
      }
      figure.dataset.series = String(shown.length);
    };

    const follow = async (index) => {
      let offset = 0;
      while (!signal.aborted) {
        let page;
        try {
          const params = new URLSearchParams({ offset: String(offset), name, limit: String(PAGE) });
          page = await apiJson(`/runs/${runIds[index]}/metrics/points?${params}`, { signal });
        } catch (err) {
          if (signal.aborted || err instanceof AuthError) return;
          error.textContent = `Run ${runIds[index]}: ${err.message}`;
          error.hidden = false;
          await sleep(POLL_MS, signal);
          continue;
        }
        if (page.points.length) {
          byStep ??= page.points[0].step !== null && page.points[0].step !== undefined;
          series[index] ??= new Series(name, byStep);
          for (const point of page.points) series[index].add(point);
        }
        offset = page.next_offset;
        if (page.points.length >= PAGE) continue;
        finished[index] = page.finished;
        if (!signal.aborted) redraw();
        if (page.finished) return;
        await sleep(POLL_MS, signal);
      }
    };
    runIds.forEach((_, i) => follow(i));
  }

  start();
  return () => {
    controller.abort();
    chart?.destroy();
  };
}
