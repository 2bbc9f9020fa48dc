// A run's page: status with stop and kill, its spec (code, packages,
// environment with secret-looking values masked, mounts and the runs that
// mounted it), a stage timeline, its metrics' charts (metrics.js), the live
// log and the outputs tree.

import { apiJson, downloadWithToken, encodePath, AuthError } from "./api.js";
import { LogView } from "./logview.js";
import { MetricsView } from "./metrics.js";
import { deletedBadge, isFinal, statusBadge, statusLabel, statusTone } from "./status.js";
import { fileTree } from "./tree.js";
import { formatDuration, formatTime, h, looksSecret, secondsBetween, sleep } from "./util.js";

const POLL_MS = 1_000;
const FINAL_POLL_MS = 5_000; // an interrupted run may still be requeued

function definitionList(pairs) {
  const items = pairs.filter(([, value]) => value !== null && value !== undefined && value !== ""
    && !(Array.isArray(value) && value.length === 0));
  if (!items.length) return h("p", { className: "muted" }, "—");
  return h("dl", { className: "facts" }, items.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

// Links only to http(s) addresses; anything else (file://, ssh, a local
// path, a javascript: URL) is shown as text.
function gitUrl(url) {
  try {
    const parsed = new URL(url);
    if (parsed.protocol === "https:" || parsed.protocol === "http:") {
      return h("a", { href: parsed.href, target: "_blank", rel: "noopener noreferrer" }, url);
    }
  } catch {
    // Not a URL (scp-like ssh address or a path).
  }
  return h("code", {}, url);
}

// runs/N[/path] -> #/runs/N; uploads/NAME[/path] -> #/uploads/NAME
function resourceLink(resource) {
  const [kind, name] = resource.split("/");
  const href = kind === "runs" ? `#/runs/${name}` : `#/uploads/${encodeURIComponent(name)}`;
  return h("a", { href, className: "resource-link", dataset: { resource } }, resource);
}

function codeList(values) {
  return values?.length ? h("span", { className: "code-list" }, values.map((v) => h("code", {}, v))) : null;
}

function envTable(env) {
  const names = Object.keys(env || {}).sort();
  if (!names.length) return null;
  return h("table", { className: "env" }, h("tbody", {}, names.map((name) => {
    const secret = looksSecret(name);
    return h("tr", {},
      h("th", { scope: "row" }, h("code", {}, name)),
      h("td", { className: secret ? "masked" : "" },
        secret ? h("span", { title: "hidden: the name looks like a secret" }, "••••••••") : h("code", {}, env[name])));
  })));
}

function specSection(run) {
  const spec = run.spec;
  return h("section", { className: "card spec" },
    h("h2", {}, "Spec"),
    h("pre", { className: "command" }, spec.command),
    h("div", { className: "spec-grid" },
      h("div", {}, h("h3", {}, "Code"), definitionList([
        ["Git URL", spec.git_url ? gitUrl(spec.git_url) : null],
        ["Ref", spec.commit_ref],
        ["Commit", spec.commit_sha ? h("code", { className: "sha", title: spec.commit_sha }, spec.commit_sha) : null],
        ["Branch", spec.branch],
        ["Uncommitted changes", spec.dirty === true ? "yes (the bundle holds them)" : spec.dirty === false ? "none" : null],
        ["Code bundle", spec.code_bundle ? h("code", { className: "sha" }, spec.code_bundle) : null],
        ["Starts in", spec.workdir ? h("code", {}, `${spec.workdir}/`) : null],
        ["Source", spec.git_url || spec.code_bundle ? null : "none (empty working directory)"],
      ])),
      h("div", {}, h("h3", {}, "Environment"), definitionList([
        ["pip", codeList(spec.pip)],
        ["requirements", spec.pip_req ? h("pre", { className: "small-pre" }, spec.pip_req) : null],
        ["apt", codeList(spec.apt)],
        ["Docker image", spec.docker_image ? h("code", {}, spec.docker_image) : null],
        ["Variables", envTable(spec.env)],
      ])),
      h("div", {}, h("h3", {}, "Machine"), definitionList([
        ["Type", spec.gpus ? `${spec.machine_type} (${spec.gpus} GPU)` : spec.machine_type],
        ["Executor", run.executor],
        ["Worker", run.worker],
        ["Limits", run.limits],
        ["Timeout", spec.timeout ? formatDuration(spec.timeout) : null],
        ["Retries", spec.retries ? `${spec.retries} (attempt ${run.attempt})` : null],
        ["Owner", run.owner],
      ])),
      h("div", {}, h("h3", {}, "Lineage"), definitionList([
        ["Mounts", spec.mounts?.length ? h("ul", { className: "mounts" }, spec.mounts.map((m) =>
          h("li", {}, resourceLink(m.resource), h("span", { className: "muted" }, " → "), h("code", {}, m.path || m.resource.split("/").pop())))) : null],
        ["Mounted by", run.mounted_by?.length ? h("span", { className: "mounted-by" }, run.mounted_by.map((id) =>
          h("a", { href: `#/runs/${id}`, className: "chip" }, `#${id}`))) : null],
      ]))));
}

// A transition's note qualifies the stage that just ended when the run moved
// forward ("Building… done (cached)" is the note on the move to mounting);
// otherwise it is about the new status ("Run interrupted: worker lost").
const NOTE_ON_ENDED_STAGE = new Set([
  "building", "mounting", "running", "saving", "pushing", "complete", "failed", "stopped",
]);

// Each stage from `transitions`, with its duration (the gap to the next
// transition; the current stage's duration grows until the run is final).
function timeline(run) {
  const transitions = run.transitions || [];
  const final = isFinal(run.status);
  const stages = transitions.map((t, i) => {
    const next = transitions[i + 1];
    const last = !next;
    const seconds = last ? (final ? null : secondsBetween(t.at, null)) : secondsBetween(t.at, next.at);
    const notes = [];
    if (t.note && !NOTE_ON_ENDED_STAGE.has(t.status)) notes.push(t.note);
    if (next?.note && NOTE_ON_ENDED_STAGE.has(next.status)) notes.push(next.note);
    return { ...t, seconds, current: last && !final, note: notes.join("; ") };
  });
  const total = stages.reduce((sum, s) => sum + (s.seconds || 0), 0);
  const bar = h("div", { className: "timeline-bar", "aria-hidden": "true" },
    stages.filter((s) => s.seconds).map((s) => {
      const segment = h("span", { className: `segment tone-${statusTone(s.status)}`, title: `${statusLabel(s.status)} ${formatDuration(s.seconds)}` });
      segment.style.flexGrow = String(Math.max(s.seconds / (total || 1), 0.01));
      return segment;
    }));
  const rows = stages.map((s) => h("li", { className: s.current ? "current" : "", dataset: { status: s.status } },
    statusBadge(s.status, s.current),
    h("time", { datetime: s.at, title: s.at }, formatTime(s.at)),
    h("span", { className: "stage-duration" },
      s.seconds === null ? "" : `${formatDuration(s.seconds)}${s.current ? " so far" : ""}`),
    s.note ? h("span", { className: "muted stage-note" }, s.note) : null));
  return h("section", { className: "card timeline" },
    h("h2", {}, "Stages"),
    total ? bar : null,
    h("ol", { className: "stages" }, rows));
}

export function runPage(main, runId, { notify }) {
  const controller = new AbortController();
  const { signal } = controller;
  const logView = new LogView(runId, notify);
  const metrics = new MetricsView(runId);
  let run = null;
  let outputsLoaded = false;

  const heading = h("div", { className: "page-head run-head" });
  const error = h("p", { className: "page-error", role: "alert", hidden: true });
  const specSlot = h("div");
  const timelineSlot = h("div");
  const outputs = h("section", { className: "card outputs" }, h("h2", {}, "Outputs"),
    h("p", { className: "muted" }, "Outputs appear here once the run has saved them."));

  document.title = `cast · run ${runId}`;
  main.append(
    h("p", { className: "crumbs" }, h("a", { href: "#/runs" }, "← Runs")),
    heading, error, specSlot, timelineSlot, metrics.element, logView.element, outputs);

  const act = async (action, button) => {
    button.disabled = true;
    try {
      run = await apiJson(`/runs/${runId}/${action}`, { method: "POST", signal });
      showRun();
    } catch (err) {
      if (!signal.aborted && !(err instanceof AuthError)) notify(`Could not ${action} run ${runId}: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  };

  let killArmed = null;
  function headingContent() {
    const final = isFinal(run.status);
    const ending = run.status === "stopping" || run.status === "killing";
    const stop = h("button", {
      type: "button", className: "button", id: "stop-run", disabled: final || ending,
      title: "Stop: the command is ended and its outputs are saved",
      onclick: (e) => act("stop", e.currentTarget),
    }, "Stop");
    const kill = h("button", {
      type: "button", className: "button danger", id: "kill-run", disabled: final || run.status === "killing",
      title: "Kill: the command is ended and its outputs are dropped",
      onclick: (e) => {
        // Killing drops the outputs: ask once more, in the page.
        if (!killArmed) {
          kill.textContent = "Really kill? Outputs are dropped";
          kill.classList.add("armed");
          killArmed = setTimeout(() => { killArmed = null; showRun(); }, 4_000);
          return;
        }
        clearTimeout(killArmed);
        killArmed = null;
        act("kill", e.currentTarget);
      },
    }, "Kill");
    const exit = run.exit_code !== null && run.exit_code !== undefined ? `exit code ${run.exit_code}` : null;
    return [
      h("h1", {}, `Run #${run.id}`),
      h("span", { id: "run-status" }, statusBadge(run.status), run.deleted_at ? deletedBadge(run.deleted_at) : null),
      h("span", { className: "run-meta muted" },
        [`created ${formatTime(run.created_at)}`,
          `total ${formatDuration(secondsBetween(run.created_at, run.finished_at))}`,
          exit, run.reason].filter(Boolean).join(" · ")),
      h("span", { className: "labels" }, (run.labels || []).map((l) =>
        h("a", { className: "chip", href: `#/runs?label=${encodeURIComponent(l)}` }, l))),
      h("span", { className: "actions" }, stop, kill),
    ];
  }

  function showRun() {
    if (!killArmed) heading.replaceChildren(...headingContent());
    const specKey = JSON.stringify([run.spec, run.mounted_by, run.executor, run.worker, run.limits, run.attempt, run.owner]);
    if (specSlot.dataset.key !== specKey) {
      specSlot.dataset.key = specKey;
      specSlot.replaceChildren(specSection(run));
    }
    timelineSlot.replaceChildren(timeline(run));
    if (isFinal(run.status) && !outputsLoaded) {
      outputsLoaded = true;
      loadOutputs();
    }
  }

  async function loadOutputs() {
    const body = [];
    try {
      const manifest = await apiJson(`/runs/${runId}/outputs`, { signal });
      body.push(manifest.files.length || manifest.folders.length
        ? fileTree(manifest.files, download, manifest.folders)
        : h("p", { className: "muted" }, run.status === "killed"
          ? "None: a killed run's outputs are dropped."
          : "This run wrote no files."));
    } catch (err) {
      if (signal.aborted || err instanceof AuthError) return;
      body.push(h("p", { className: "muted" }, `No outputs: ${err.message}`));
    }
    outputs.replaceChildren(h("h2", {}, "Outputs"), ...body);
  }

  async function download(path, isFolder) {
    const base = path.split("/").pop();
    try {
      await downloadWithToken(`/runs/${runId}/outputs/${encodePath(path)}?link=true`,
        isFolder ? `run-${runId}-${base}` : base);
    } catch (err) {
      if (!(err instanceof AuthError)) notify(`Download of ${path} failed: ${err.message}`, "error");
    }
  }

  (async () => {
    logView.start();
    metrics.start();
    while (!signal.aborted) {
      try {
        const wasFinal = run && isFinal(run.status);
        run = await apiJson(`/runs/${runId}`, { signal });
        error.hidden = true;
        showRun();
        // An interrupted run that was requeued starts logging again.
        if (wasFinal && !isFinal(run.status)) {
          outputsLoaded = false;
          logView.start();
          metrics.start();
        }
      } catch (err) {
        if (signal.aborted || err instanceof AuthError) return;
        error.textContent = err.status === 404 ? `There is no run ${runId}.` : err.message;
        error.hidden = false;
        if (err.status === 404) {
          logView.dispose();
          logView.element.hidden = true;
          metrics.dispose();
          metrics.element.hidden = true;
          return;
        }
      }
      await sleep(run && isFinal(run.status) ? FINAL_POLL_MS : POLL_MS, signal);
    }
  })();

  return () => {
    controller.abort();
    clearTimeout(killArmed);
    logView.dispose();
    metrics.dispose();
  };
}
