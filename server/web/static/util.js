// Small helpers shared by the viewer's modules: building DOM nodes (text is
// always set as text, never parsed as HTML) and formatting numbers and times
// the way the CLI does.

// h("a", {href: "#/runs/1", className: "x", onclick: fn}, "text", child, ...)
// Strings become text nodes; attributes are set as properties or attributes,
// so nothing passed here is ever interpreted as markup.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "className" || name === "textContent" || name === "value"
      || name === "checked" || name === "disabled" || name === "title") el[name] = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Same rule as cast.protocol.validate.looks_secret: names whose values are masked.
const SECRET_NAME = /(SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH)/i;
export function looksSecret(envName) {
  return SECRET_NAME.test(envName);
}

// Same style as cast.protocol.units.format_duration: 0.41s, 12.3s, 1m7s, 2h3m4s.
export function formatDuration(seconds) {
  if (!(seconds >= 0)) return "";
  if (seconds < 10) return `${seconds.toFixed(2)}s`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const whole = Math.round(seconds);
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const secs = whole % 60;
  return hours ? `${hours}h${minutes}m${secs}s` : `${minutes}m${secs}s`;
}

// 6 B, 1.2 KB, 3.4 MB: decimal units, as `cast ls` prints them.
export function formatBytes(size) {
  if (size < 1000) return `${size} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = size;
  for (const unit of units) {
    value /= 1000;
    if (value < 1000 || unit === "TB") return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
  }
  return `${size} B`;
}

export function parseTime(iso) {
  return iso ? new Date(iso).getTime() : NaN;
}

// Local time, to the second: 2026-11-28 15:00:03.
export function formatTime(iso) {
  const t = parseTime(iso);
  if (Number.isNaN(t)) return "";
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function secondsBetween(startIso, endIso) {
  const start = parseTime(startIso);
  const end = endIso ? parseTime(endIso) : Date.now();
  if (Number.isNaN(start) || Number.isNaN(end)) return NaN;
  return Math.max(0, (end - start) / 1000);
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
