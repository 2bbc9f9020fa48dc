// Hyperparameter searches: the list (#/searches) and a search's page
// (#/searches/N) with its trials in a table sorted by a clicked column (best
// first until one is clicked) and, per parameter, a scatter chart of the
// metric against that parameter's values. The list refreshes all the time, a
// search's page while the search runs or any of its trials is active.

import { apiJson, AuthError } from "./api.js";
import { chartsUnavailable, loadUplot, scatterChart } from "./charts.js";
import { formatValue } from "./metrics.js";
import { isFinal, statusBadge } from "./status.js";
import { formatTime, h, sleep } from "./util.js";

const POLL_MS = 2_000;

function isRunning(search) {
  return search.status === "running";
}

// A stopped search's trials may still be running: the page follows them.
function isLive(search) {
  return isRunning(search) || (search.trials || []).some((t) => t.status && !isFinal(t.status));
}

function metricText(search) {
  if (!search.metric) return "—";
  return `${search.metric} (${search.metric_agg}, ${search.goal})`;
}

function bestText(search) {
  if (!search.best) return "—";
  return `${formatValue(search.best.value)} (trial ${search.best.number})`;
}

export function searchesPage(main) {
  const controller = new AbortController();
  const { signal } = controller;
  const tbody = h("tbody");
  const empty = h("p", { className: "empty", hidden: true },
    "No searches yet. Start one with: cast hyper grid -p lr=0.1,0.01 --metric loss \"python train.py --lr :lr:\"");
  const error = h("p", { className: "page-error", role: "alert", hidden: true });
  document.title = "cast · searches";
  main.append(
    h("div", { className: "page-head" }, h("h1", {}, "Searches")),
    error,
    h("div", { className: "table-wrap" }, h("table", { className: "runs searches" },
      h("thead", {}, h("tr", {}, ["Search", "Status", "Kind", "Command", "Metric", "Best", "Created"]
        .map((t) => h("th", { scope: "col" }, t)))),
      tbody)),
    empty);

  function row(search) {
    const href = `#/searches/${search.id}`;
    return h("tr", { dataset: { searchId: search.id, status: search.status } },
      h("td", { className: "num", dataset: { label: "Search" } }, h("a", { href }, `#${search.id}`)),
      h("td", { className: "status", dataset: { label: "Status" } }, statusBadge(search.status)),
      h("td", { className: "machine", dataset: { label: "Kind" } }, search.kind),
      h("td", { className: "command", dataset: { label: "Command" } },
        h("a", { href, className: "command-link", title: search.command }, search.command)),
      h("td", { className: "executor", dataset: { label: "Metric" } }, metricText(search)),
      h("td", { className: "duration", dataset: { label: "Best" } }, bestText(search)),
      h("td", { className: "created", dataset: { label: "Created" } },
        h("time", { datetime: search.created_at, title: search.created_at }, formatTime(search.created_at))));
  }

  tbody.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-search-id]");
    if (!tr || event.target.closest("a") || String(getSelection())) return;
    location.hash = `#/searches/${tr.dataset.searchId}`;
  });

  (async () => {
    let shown = "";
    while (!signal.aborted) {
      try {
        const answer = await apiJson("/searches", { signal });
        error.hidden = true;
        const key = JSON.stringify(answer.searches);
        if (key !== shown) {
          shown = key;
          const searches = [...answer.searches].sort((a, b) => b.id - a.id);
          tbody.replaceChildren(...searches.map(row));
          empty.hidden = searches.length > 0;
        }
      } catch (err) {
        if (signal.aborted || err instanceof AuthError) return;
        error.textContent = err.message;
        error.hidden = false;
      }
      await sleep(POLL_MS, signal);
    }
  })();
  return () => controller.abort();
}

// Numbers before strings, each in their own order; a missing value is
// always last, whichever way the column is sorted.
function compareValues(a, b) {
  const aNum = typeof a === "number";
  const bNum = typeof b === "number";
  if (aNum && bNum) return a - b;
  if (aNum !== bNum) return aNum ? -1 : 1;
  return String(a).localeCompare(String(b));
}

function missing(value) {
  return value === null || value === undefined || (typeof value === "number" && Number.isNaN(value));
}

function sortTrials(trials, column, direction) {
  const pick = column.get;
  return [...trials].sort((x, y) => {
    const a = pick(x);
    const b = pick(y);
    if (missing(a) || missing(b)) return missing(a) - missing(b) || x.number - y.number;
    return direction * compareValues(a, b) || x.number - y.number;
  });
}

function paramText(value) {
  if (typeof value === "number") return formatValue(value);
  return missing(value) ? "—" : String(value);
}

// A parameter's scatter data: [xs ascending, metric values]; categories when
// its values are not all numbers (x is then the category's index).
function scatterData(trials, name) {
  const done = trials.filter((t) => !missing(t.value) && !missing(t.params?.[name]));
  const numeric = done.every((t) => typeof t.params[name] === "number");
  let categories = null;
  let pairs;
  if (numeric) {
    pairs = done.map((t) => [t.params[name], t.value]);
  } else {
    categories = [...new Set(done.map((t) => String(t.params[name])))].sort();
    pairs = done.map((t) => [categories.indexOf(String(t.params[name])), t.value]);
  }
  pairs.sort((a, b) => a[0] - b[0]);
  return { data: [pairs.map((p) => p[0]), pairs.map((p) => p[1])], categories, count: pairs.length };
}

export function searchPage(main, searchId, { notify }) {
  const controller = new AbortController();
  const { signal } = controller;
  const heading = h("div", { className: "page-head run-head" });
  const error = h("p", { className: "page-error", role: "alert", hidden: true });
  const facts = h("div", { className: "search-facts" });
  const thead = h("thead");
  const tbody = h("tbody");
  const note = h("div");
  const grid = h("div", { className: "chart-grid" });
  const chartsCard = h("section", { className: "card param-charts" },
    h("h2", {}, "Metric by parameter"), note, grid);
  document.title = `cast · search ${searchId}`;
  main.append(
    h("p", { className: "crumbs" }, h("a", { href: "#/searches" }, "← Searches")),
    heading, error,
    h("section", { className: "card" }, facts,
      h("div", { className: "table-wrap" }, h("table", { className: "trials" }, thead, tbody))),
    chartsCard);

  let search = null;
  let sort = null; // {key, direction}; null: best first
  let uPlot;
  const charts = new Map(); // parameter -> {figure, caption, chart, categoriesKey}

  const act = async (action, button) => {
    button.disabled = true;
    try {
      search = await apiJson(`/searches/${searchId}/${action}`, { method: "POST", signal });
      show();
    } catch (err) {
      if (!signal.aborted && !(err instanceof AuthError)) notify(`Could not ${action} search ${searchId}: ${err.message}`, "error");
      button.disabled = false;
    }
  };

  function columns() {
    const names = Object.keys(search.params || {}).sort();
    const metric = search.metric || "value";
    return [
      { key: "number", label: "Trial", className: "number", get: (t) => t.number, cell: (t) => String(t.number) },
      ...names.map((name) => ({
        key: `param:${name}`, label: name, className: "param",
        get: (t) => t.params?.[name], cell: (t) => paramText(t.params?.[name]),
      })),
      { key: "status", label: "Status", className: "status", get: (t) => t.status,
        cell: (t) => (t.status ? statusBadge(t.status) : h("span", { className: "muted" }, "not started")) },
      { key: "value", label: metric, className: "value", get: (t) => t.value, cell: (t) => formatValue(t.value) },
      { key: "run", label: "Run", className: "run", get: (t) => t.run_id,
        cell: (t) => (t.run_id ? h("a", { href: `#/runs/${t.run_id}`, className: "run-link" }, `#${t.run_id}`) : "—") },
    ];
  }

  function currentSort() {
    if (sort) return sort;
    return { key: "value", direction: search.goal === "maximize" ? -1 : 1 };
  }

  function renderTable() {
    const cols = columns();
    const { key, direction } = currentSort();
    const column = cols.find((c) => c.key === key) || cols[0];
    thead.replaceChildren(h("tr", {}, cols.map((c) => h("th", {
      scope: "col", className: c.className, dataset: { key: c.key },
      "aria-sort": c.key === column.key ? (direction > 0 ? "ascending" : "descending") : null,
    }, h("button", {
      type: "button", title: `Sort by ${c.label}`,
      onclick: () => {
        const now = currentSort();
        sort = { key: c.key, direction: now.key === c.key ? -now.direction : 1 };
        renderTable();
      },
    }, c.label)))));
    const bestNumber = search.best?.number;
    tbody.replaceChildren(...sortTrials(search.trials || [], column, direction).map((t) =>
      h("tr", { className: t.number === bestNumber ? "best" : "", dataset: { trial: t.number } },
        cols.map((c) => h("td", { className: c.className, dataset: { label: c.label } }, c.cell(t))))));
  }

  function renderCharts() {
    if (!uPlot) return;
    const names = Object.keys(search.params || {}).sort();
    for (const name of names) {
      const { data, categories, count } = scatterData(search.trials || [], name);
      const log = String(search.params[name]).startsWith("loguniform:");
      const categoriesKey = JSON.stringify(categories);
      let entry = charts.get(name);
      if (!entry) {
        const caption = h("span", { className: "muted" });
        const box = h("div", { className: "chart-box" });
        const figure = h("figure", { className: "chart param-chart", dataset: { param: name } },
          h("figcaption", {}, h("span", { className: "chart-name" }, name), caption), box);
        grid.append(figure);
        entry = { figure, caption, box, chart: null, categoriesKey: null };
        charts.set(name, entry);
      }
      entry.caption.textContent = `${search.metric || "value"} against ${name} · ${count} trials`;
      entry.figure.dataset.points = String(count);
      if (entry.chart && entry.categoriesKey === categoriesKey) {
        entry.chart.setData(data);
      } else {
        entry.chart?.destroy();
        entry.chart = scatterChart(uPlot, entry.box, {
          xLabel: name, yLabel: search.metric || "value", data, log: log && !categories, categories,
        });
        entry.categoriesKey = categoriesKey;
      }
    }
  }

  function show() {
    const running = isRunning(search);
    heading.replaceChildren(
      h("h1", {}, `Search #${search.id}`),
      h("span", { id: "search-status" }, statusBadge(search.status)),
      h("span", { className: "run-meta muted" },
        [`${search.kind} search`, `created ${formatTime(search.created_at)}`, search.reason].filter(Boolean).join(" · ")),
      h("span", { className: "actions" },
        h("button", { type: "button", className: "button", id: "stop-search", disabled: !running,
          title: "Stop: no new trials; running trials finish", onclick: (e) => act("stop", e.currentTarget) }, "Stop"),
        h("button", { type: "button", className: "button danger", id: "kill-search",
          disabled: !running && search.status !== "stopped",
          title: "Kill: no new trials; running trials are killed", onclick: (e) => act("kill", e.currentTarget) }, "Kill")));
    facts.replaceChildren(
      h("pre", { className: "command" }, search.command),
      h("dl", { className: "facts" },
        h("dt", {}, "Metric"), h("dd", {}, metricText(search)),
        h("dt", {}, "Parameters"), h("dd", {}, Object.keys(search.params || {}).sort()
          .map((name) => h("code", {}, `${name}=${search.params[name]}`)).flatMap((c, i) => (i ? [" ", c] : [c]))),
        h("dt", {}, "Trials"), h("dd", {}, `${(search.trials || []).length}`
          + `${search.num_runs ? ` of ${search.num_runs}` : ""}, ${search.parallel} at a time`),
        h("dt", {}, "Best"), h("dd", {}, search.best
          ? [bestText(search), " · ", h("a", { href: `#/runs/${search.best.run_id}` }, `run #${search.best.run_id}`)]
          : "—")));
    renderTable();
    renderCharts();
  }

  (async () => {
    try {
      uPlot = await loadUplot();
    } catch (err) {
      note.replaceChildren(chartsUnavailable(err));
    }
    let shown = "";
    while (!signal.aborted) {
      try {
        search = await apiJson(`/searches/${searchId}`, { signal });
        error.hidden = true;
        const key = JSON.stringify(search);
        if (key !== shown) {
          shown = key;
          show();
        }
        if (!isLive(search)) return;
      } catch (err) {
        if (signal.aborted || err instanceof AuthError) return;
        error.textContent = err.status === 404 ? `There is no search ${searchId}.` : err.message;
        error.hidden = false;
        if (err.status === 404) return;
      }
      await sleep(POLL_MS, signal);
    }
  })();

  return () => {
    controller.abort();
    for (const entry of charts.values()) entry.chart?.destroy();
  };
}
