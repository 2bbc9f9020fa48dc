// What the viewer knows about run statuses (mirrors cast.client.spec.RunStatus).

export const STATUSES = [
  "machine_requested", "building", "mounting", "running", "saving", "pushing",
  "complete", "failed", "build_failed", "mount_failed",
  "stopping", "stopped", "killing", "killed", "interrupted",
];

const FINAL = new Set([
  "complete", "failed", "build_failed", "mount_failed", "stopped", "killed", "interrupted",
]);

export const ACTIVE_STATUSES = STATUSES.filter((s) => !FINAL.has(s));

export function isFinal(status) {
  return FINAL.has(status);
}

// Which colour family a status is drawn in.
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
  return TONE[status] || "queued";
}

export function statusLabel(status) {
  return status.replaceAll("_", " ");
}

// The badge: the status word, with a pulsing dot while the run is in it
// (an active run's status is the stage it is in). `current` is false for
// stages a run has left, as listed in its timeline.
export function statusBadge(status, current = true) {
  const badge = document.createElement("span");
  badge.className = `badge tone-${statusTone(status)}${current && !isFinal(status) ? " active" : ""}`;
  badge.dataset.status = status;
  badge.textContent = statusLabel(status);
  badge.title = status;
  return badge;
}
