// The runs page: every run, newest first, refreshed every second so new runs
// and status changes appear without reloading; filters by status and label;
// runs chosen with their checkboxes are compared (compare.js).

import { apiJson, AuthError } from "./api.js";
import { RunPicker } from "./compare.js";
import { activeStatuses, deletedBadge, isFinal, statusBadge, statusLabel, statusNames } from "./status.js";
import { formatDuration, formatTime, h, secondsBetween, sleep } from "./util.js";

const POLL_MS = 1_000;
const PAGE = 50;

function runDuration(run) {
  return formatDuration(secondsBetween(run.created_at, run.finished_at));
}

function labelChips(labels) {
  return (labels || []).map((label) =>
    h("a", { className: "chip", href: `#/runs?label=${encodeURIComponent(label)}`, title: `Runs labelled ${label}` }, label));
}

function cell(label, className, ...content) {
  return h("td", { className, dataset: { label } }, ...content);
}

function runRow(run, picker) {
  const href = `#/runs/${run.id}`;
  const machine = run.spec.gpus ? `${run.spec.machine_type} (${run.spec.gpus} GPU)` : run.spec.machine_type;
  return h("tr", { dataset: { runId: run.id, status: run.status } },
    cell("Select", "select", picker.box(run.id)),
    cell("Run", "num", h("a", { href, className: "run-link" }, `#${run.id}`)),
    cell("Status", "status", statusBadge(run.status), run.deleted_at ? deletedBadge(run.deleted_at) : null),
    cell("Command", "command", h("a", { href, className: "command-link", title: run.spec.command }, run.spec.command)),
    cell("Labels", "labels", labelChips(run.labels)),
    cell("Machine", "machine", machine),
    cell("Executor", "executor", run.executor || "—",
      run.worker ? h("span", { className: "muted" }, ` on ${run.worker}`) : null),
    cell("Created", "created", h("time", { datetime: run.created_at, title: run.created_at }, formatTime(run.created_at))),
    cell("Duration", "duration", runDuration(run)));
}

export function runsPage(main, query) {
  const controller = new AbortController();
  const { signal } = controller;
  const state = { status: query.get("status") || "", label: query.get("label") || "", limit: PAGE };
  const rows = new Map(); // run id -> {row, key, run}
  const picker = new RunPicker();

  const statusSelect = h("select", { id: "status-filter", "aria-label": "Filter by status" },
    h("option", { value: "" }, "all statuses"),
    h("option", { value: "active" }, "active"),
    statusNames().map((s) => h("option", { value: s }, statusLabel(s))));
  statusSelect.value = state.status;
  const labelInput = h("input", {
    id: "label-filter", type: "search", placeholder: "label", value: state.label,
    "aria-label": "Filter by label", autocomplete: "off",
  });
  const tbody = h("tbody");
  const empty = h("p", { className: "empty", hidden: true });
  const error = h("p", { className: "page-error", role: "alert", hidden: true });
  const more = h("button", { type: "button", className: "button subtle", hidden: true,
    onclick: () => { state.limit = Math.min(state.limit + PAGE, 500); refresh(); } }, "Show older runs");

  const applyFilters = () => {
    state.status = statusSelect.value;
    state.label = labelInput.value.trim();
    const params = new URLSearchParams();
    if (state.status) params.set("status", state.status);
    if (state.label) params.set("label", state.label);
    const search = params.toString();
    const hash = `#/runs${search ? `?${search}` : ""}`;
    // Keep the address in step without re-running the router (which would
    // take the focus from the label box).
    history.replaceState(null, "", hash);
    refresh();
  };
  statusSelect.addEventListener("change", applyFilters);
  let labelTimer;
  labelInput.addEventListener("input", () => { clearTimeout(labelTimer); labelTimer = setTimeout(applyFilters, 250); });

  document.title = "cast · runs";
  main.append(
    h("div", { className: "page-head" },
      h("h1", {}, "Runs"),
      h("div", { className: "filters" },
        h("label", {}, "Status ", statusSelect),
        h("label", {}, "Label ", labelInput)),
      h("div", { className: "compare-bar" }, picker.button)),
    error,
    h("div", { className: "table-wrap" },
      h("table", { className: "runs" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", className: "select" }, h("span", { className: "visually-hidden" }, "Select")),
          ["Run", "Status", "Command", "Labels", "Machine", "Executor", "Created", "Duration"].map((t) => h("th", { scope: "col" }, t)))),
        tbody)),
    empty,
    more);

  function render(runs, hasMore) {
    const seen = new Set();
    let previous = null;
    for (const run of runs) {
      seen.add(run.id);
      const key = JSON.stringify(run);
      let entry = rows.get(run.id);
      if (!entry || entry.key !== key) {
        const row = runRow(run, picker);
        if (entry) entry.row.replaceWith(row);
        entry = { row, key, run };
        rows.set(run.id, entry);
      } else if (!isFinal(run.status)) {
        entry.row.querySelector("td.duration").textContent = runDuration(run);
      }
      // Newest first: put each row right after the previous one.
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== entry.row) tbody.insertBefore(entry.row, expected);
      previous = entry.row;
    }
    for (const [id, entry] of rows) {
      if (!seen.has(id)) {
        entry.row.remove();
        rows.delete(id);
      }
    }
    const filtered = state.status || state.label;
    empty.hidden = runs.length > 0;
    empty.textContent = filtered
      ? "No runs match these filters."
      : "No runs yet. Start one with: cast run \"echo hello\"";
    more.hidden = !hasMore || state.limit >= 500;
  }

  let inFlight = null;
  async function refresh() {
    inFlight?.abort();
    const request = new AbortController();
    inFlight = request;
    const params = new URLSearchParams({ limit: String(state.limit) });
    const statuses = state.status === "active" ? activeStatuses() : state.status ? [state.status] : [];
    for (const s of statuses) params.append("status", s);
    if (state.label) params.set("label", state.label);
    try {
      const page = await apiJson(`/runs?${params}`, { signal: request.signal });
      error.hidden = true;
      render(page.runs, page.next_before !== null && page.next_before !== undefined);
    } catch (err) {
      if (request.signal.aborted || err instanceof AuthError) return;
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  (async () => {
    while (!signal.aborted) {
      await refresh();
      await sleep(POLL_MS, signal);
    }
  })();

  // A click anywhere on a row opens the run (unless it selected text).
  tbody.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-run-id]");
    if (!row || event.target.closest("a, td.select") || String(getSelection())) return;
    location.hash = `#/runs/${row.dataset.runId}`;
  });

  return () => {
    clearTimeout(labelTimer);
    controller.abort();
    inFlight?.abort();
  };
}
