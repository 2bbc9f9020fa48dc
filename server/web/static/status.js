// What the viewer knows about run statuses: the server's own table
// (GET /api/v1/protocol/statuses, from cast.protocol.status), fetched once per
// page load by loadStatuses() before any page is drawn, so the viewer keeps
// no list of its own. Only the colours are the viewer's choice.

import { apiJson } from "./api.js";

let loading = null;
let table = null; // {names: [...] in the protocol's order, byName: Map name -> entry}

// Resolves once the table is here; a failed load is tried again on the next call.
export function loadStatuses() {
  loading ??= apiJson("/protocol/statuses").then((answer) => {
    table = {
      names: answer.statuses.map((s) => s.name),
      byName: new Map(answer.statuses.map((s) => [s.name, s])),
    };
  }, (err) => {
    loading = null;
    throw err;
  });
  return loading;
}

export function statusNames() {
  return table.names;
}

export function activeStatuses() {
  return table.names.filter((s) => !isFinal(s));
}

export function isFinal(status) {
  return table.byName.get(status)?.final === true;
}

// Which colour family a status is drawn in; a status this palette does not
// know yet is drawn as a stage while active and as a warning once final.
const TONE = {
  machine_requested: "queued",
  building: "stage", mounting: "stage", saving: "stage", pushing: "stage",
  running: "running",
  complete: "ok",
  failed: "bad", build_failed: "bad", mount_failed: "bad",
  stopping: "stop", stopped: "stop",
  killing: "kill", killed: "kill",
  interrupted: "warn",
};

export function statusTone(status) {
  return TONE[status] || (isFinal(status) ? "warn" : "stage");
}

export function statusLabel(status) {
  return status.replaceAll("_", " ");
}

// The badge: the status word, with a pulsing dot while the run is in it
// (an active run's status is the stage it is in). `current` is false for
// stages a run has left, as listed in its timeline.
// A run whose stored outputs were freed (`cast rm`, prune): its record stays.
export function deletedBadge(deletedAt) {
  const badge = document.createElement("span");
  badge.className = "badge deleted";
  badge.textContent = "deleted";
  badge.title = `outputs deleted at ${deletedAt}`;
  return badge;
}

export function statusBadge(status, current = true) {
  const badge = document.createElement("span");
  badge.className = `badge tone-${statusTone(status)}${current && !isFinal(status) ? " active" : ""}`;
  badge.dataset.status = status;
  badge.textContent = statusLabel(status);
  badge.title = status;
  return badge;
}
