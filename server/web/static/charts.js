// The viewer's charts: loading uPlot (installed by `npm ci` from
// server/web/package-lock.json and served at /static/vendor/uplot/), the
// note shown when it is not installed, and the three kinds of chart the pages
// draw: a metric's line, several runs' lines over one axis, and a scatter of
// points. Every chart follows its box's width and the page's colours; every
// name on it is text (uPlot sets labels with textContent).

import { h } from "./util.js";

const UPLOT_JS = "/static/vendor/uplot/uPlot.esm.js";
const UPLOT_CSS = "/static/vendor/uplot/uPlot.min.css";
const HEIGHT = 240;
// Distinguishable on light and dark backgrounds; runs past the tenth reuse them.
const PALETTE = ["#4f7df3", "#e8743b", "#19a979", "#ed4a7b", "#945ecf",
  "#13a4b4", "#d4a20b", "#6c8893", "#ee6868", "#2f6497"];

let loading = null;

// Resolves to the uPlot class; rejects (once per page load) when the server
// does not serve it.
export function loadUplot() {
  loading ??= (async () => {
    const link = h("link", { rel: "stylesheet", href: UPLOT_CSS });
    document.head.append(link);
    const module = await import(UPLOT_JS);
    return module.default;
  })();
  return loading;
}

export function chartsUnavailable(err) {
  return h("p", { className: "charts-unavailable muted", role: "note" },
    "Charts unavailable: run scripts/setup.sh on the server's host to install them (uPlot, with npm)",
    err?.message ? ` (${err.message}).` : ".");
}

export function seriesColor(index) {
  return PALETTE[index % PALETTE.length];
}

function cssColor(name, fallback) {
  return getComputedStyle(document.body).getPropertyValue(name).trim() || fallback;
}

// `xTicks`: {splits, values} for an axis of named positions.
function axes(xLabel, yLabel, xTicks = {}) {
  const text = cssColor("--muted", "#888");
  const grid = cssColor("--line", "#ddd");
  const axis = (label) => ({ label, stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } });
  return [{ ...axis(xLabel), ...xTicks }, axis(yLabel)];
}

// A uPlot in `box`, as wide as the box, redrawn at the box's new width when
// it changes. Returns the chart; chart.destroy() also stops the observer.
function mount(uPlot, box, options, data) {
  const width = () => Math.max(box.clientWidth, 200);
  const chart = new uPlot({ width: width(), height: HEIGHT, ...options }, data, box);
  const observer = new ResizeObserver(() => {
    if (Math.abs(chart.width - width()) > 1) chart.setSize({ width: width(), height: HEIGHT });
  });
  observer.observe(box);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => {
    observer.disconnect();
    destroy();
  };
  return chart;
}

// x is a step, or seconds since the epoch (uPlot's time axis) when `time`;
// `colors` gives each series its colour (else the palette in order). Point
// marks are left to uPlot, which draws them only where they are sparse, so a
// metric of one point is still seen.
export function lineChart(uPlot, box, { xLabel, yLabel, series, data, time = false, colors = null }) {
  return mount(uPlot, box, {
    scales: { x: { time } },
    axes: axes(xLabel, yLabel),
    cursor: { drag: { x: true, y: false } },
    series: [{ label: xLabel }, ...series.map((label, i) => ({
      label, stroke: colors?.[i] ?? seriesColor(i), width: 1.5, spanGaps: true,
    }))],
  }, data);
}

// Points only, no lines: data = [xs ascending, ys]. `categories` names the x
// positions 0, 1, ... when the x values are not numbers.
export function scatterChart(uPlot, box, { xLabel, yLabel, data, log = false, categories = null }) {
  // Room around the outermost points, so none sits on the frame.
  const padded = (_u, min, max) => uPlot.rangeNum(min, max, 0.1, true);
  let x = { time: false, range: padded };
  if (log) x = { time: false, distr: 3 };
  if (categories) x = { time: false, range: [-0.5, categories.length - 0.5] };
  const xTicks = categories
    ? { splits: () => categories.map((_, i) => i), values: (_u, ticks) => ticks.map((t) => categories[t] ?? "") }
    : {};
  return mount(uPlot, box, {
    mode: 1,
    scales: { x, y: { range: padded } },
    axes: axes(xLabel, yLabel, xTicks),
    cursor: { drag: { x: false, y: false } },
    series: [{ label: xLabel }, {
      label: yLabel, stroke: seriesColor(0), fill: seriesColor(0), paths: () => null,
      points: { show: true, size: 8, fill: seriesColor(0) },
    }],
  }, data);
}
