// A run's log on its page: follows /logs/follow live (resuming from
// next_offset when the connection drops), renders in batches once per
// animation frame, keeps a bounded window of lines in the page, filters by a
// search string, and can stop following to let the reader scroll.

import { apiFetch, downloadWithToken, AuthError } from "./api.js";
import { renderAnsi, plainText } from "./ansi.js";
import { h, sleep } from "./util.js";

// Lines kept in memory (what the search box looks through) and lines in the
// DOM (what the page scrolls through). The whole log is always downloadable.
const KEPT_LINES = 20_000;
const DOM_LINES = 5_000;
// Work per animation frame, so a flood of lines never blocks input.
const LINES_PER_FRAME = 1_000;

export class LogView {
  constructor(runId, notify) {
    this.runId = runId;
    this.notify = notify;
    this.lines = [];
    this.pending = [];
    this.clearDom = false;
    this.domCount = 0;
    this.nextOffset = -KEPT_LINES;
    this.lastOffset = -1;
    this.following = true;
    this.unseen = 0;
    this.query = "";
    this.frame = 0;
    this.streaming = false;
    this.controller = new AbortController();

    this.searchBox = h("input", {
      type: "search", placeholder: "Filter lines…", className: "log-search",
      "aria-label": "Filter log lines", oninput: () => this.onSearchInput(),
    });
    this.followToggle = h("input", {
      type: "checkbox", checked: true, className: "follow-toggle",
      onchange: () => this.setFollowing(this.followToggle.checked),
    });
    this.stateText = h("span", { className: "log-state", "aria-live": "polite" });
    this.countText = h("span", { className: "log-count" });
    this.notice = h("div", { className: "log-notice", hidden: true });
    this.body = h("div", { className: "log", role: "log", tabindex: "0", "aria-label": "Run log" });
    this.element = h("section", { className: "card log-card" },
      h("div", { className: "card-head" },
        h("h2", {}, "Log"),
        h("div", { className: "log-tools" },
          this.searchBox,
          h("label", { className: "toggle" }, this.followToggle, h("span", {}, "Follow")),
          h("button", { type: "button", className: "button", onclick: (e) => this.download(e.currentTarget) },
            "Download whole log"))),
      h("div", { className: "log-status" }, this.stateText, this.countText),
      this.notice,
      this.body);
  }

  start() {
    if (this.streaming) return;
    this.streaming = true;
    this.follow().finally(() => { this.streaming = false; });
  }

  dispose() {
    this.controller.abort();
    if (this.frame) cancelAnimationFrame(this.frame);
    clearTimeout(this.searchTimer);
  }

  setState(text, tone = "") {
    this.stateText.textContent = text;
    this.stateText.dataset.tone = tone;
  }

  async follow() {
    const { signal } = this.controller;
    let delay = 250;
    while (!signal.aborted) {
      try {
        const response = await apiFetch(
          `/runs/${this.runId}/logs/follow?offset=${this.nextOffset}`, { signal });
        this.setState("live", "live");
        delay = 250;
        if (await this.readStream(response.body, signal)) {
          this.setState("finished", "done");
          return;
        }
        this.setState("reconnecting…", "warn");
      } catch (err) {
        if (signal.aborted || err instanceof AuthError) return;
        if (err.status === 404) {
          this.setState(err.message, "error");
          return;
        }
        this.setState(`reconnecting… (${err.message})`, "warn");
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 5_000);
    }
  }

  // Reads NDJSON chunks until the server says the log is finished (true) or
  // the connection ends early (false: the caller resumes from nextOffset).
  async readStream(stream, signal) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffered += decoder.decode(value, { stream: true });
        const end = buffered.lastIndexOf("\n");
        if (end < 0) continue;
        const complete = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        for (const line of complete.split("\n")) {
          if (!line.trim()) continue;
          const chunk = JSON.parse(line);
          this.receive(chunk.entries || []);
          this.nextOffset = chunk.next_offset;
          if (chunk.finished) return true;
        }
      }
    } catch (err) {
      if (signal.aborted) throw err;
      throw new Error(err.message || "stream interrupted");
    } finally {
      reader.releaseLock();
    }
  }

  receive(entries) {
    for (const entry of entries) {
      // A resumed stream never repeats entries, but a retry must not either.
      if (entry.offset <= this.lastOffset) continue;
      this.lastOffset = entry.offset;
      this.lines.push(entry);
      if (!this.following) this.unseen += 1;
      else if (this.matches(entry)) this.pending.push(entry);
    }
    if (this.lines.length > KEPT_LINES * 1.25) this.lines.splice(0, this.lines.length - KEPT_LINES);
    if (this.pending.length > DOM_LINES) {
      // More than a window's worth arrived since the last frame: only the
      // newest window can stay on the page anyway.
      this.pending.splice(0, this.pending.length - DOM_LINES);
      this.clearDom = true;
    }
    this.updateCounts();
    this.schedule();
  }

  matches(entry) {
    if (!this.query) return true;
    if (entry.lower === undefined) entry.lower = plainText(entry.text).toLowerCase();
    return entry.lower.includes(this.query);
  }

  schedule() {
    if (!this.frame && (this.pending.length || this.clearDom)) {
      this.frame = requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.frame = 0;
    if (this.clearDom) {
      this.body.replaceChildren();
      this.domCount = 0;
      this.clearDom = false;
    }
    const batch = this.pending.splice(0, LINES_PER_FRAME);
    const fragment = document.createDocumentFragment();
    for (const entry of batch) fragment.append(this.lineElement(entry));
    this.body.append(fragment);
    this.domCount += batch.length;
    const excess = this.domCount - DOM_LINES;
    if (excess > 0) {
      const range = document.createRange();
      range.setStartBefore(this.body.firstChild);
      range.setEndAfter(this.body.children[excess - 1]);
      range.deleteContents();
      this.domCount -= excess;
    }
    const digits = Math.max(3, String(this.lastOffset + 1).length);
    if (digits !== this.digits) {
      this.digits = digits;
      this.body.style.setProperty("--digits", String(digits));
    }
    if (this.following) this.body.scrollTop = this.body.scrollHeight;
    this.updateCounts();
    this.schedule();
  }

  lineElement(entry) {
    const line = document.createElement("div");
    line.className = `line s-${entry.stream}`;
    line.dataset.n = entry.offset + 1;
    renderAnsi(line, entry.text);
    return line;
  }

  // Rebuild the page's window from the lines in memory (after a search
  // change or when following resumes).
  rerender() {
    const picked = [];
    for (let i = this.lines.length - 1; i >= 0 && picked.length < DOM_LINES; i--) {
      if (this.matches(this.lines[i])) picked.push(this.lines[i]);
    }
    this.pending = picked.reverse();
    this.clearDom = true;
    this.unseen = 0;
    this.updateCounts();
    this.schedule();
  }

  onSearchInput() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => {
      this.query = this.searchBox.value.trim().toLowerCase();
      this.rerender();
    }, 120);
  }

  setFollowing(on) {
    this.following = on;
    this.followToggle.checked = on;
    this.element.classList.toggle("paused", !on);
    if (on) this.rerender();
    else {
      this.pending = [];
      this.updateCounts();
    }
  }

  updateCounts() {
    const total = this.lastOffset + 1;
    const parts = [`${total.toLocaleString("en-US")} lines`];
    if (this.query) parts.push(`${(this.domCount + this.pending.length).toLocaleString("en-US")} match “${this.query}”`);
    if (!this.following) parts.push(`paused${this.unseen ? `, ${this.unseen.toLocaleString("en-US")} new` : ""}`);
    this.countText.textContent = parts.join(" · ");
    this.notice.hidden = total <= DOM_LINES;
    if (total > DOM_LINES) {
      this.notice.textContent = `This page keeps the last ${DOM_LINES.toLocaleString("en-US")} lines `
        + `and the filter looks through the last ${KEPT_LINES.toLocaleString("en-US")}; `
        + "download the whole log for all of them.";
    }
  }

  async download(button) {
    button.disabled = true;
    try {
      await downloadWithToken(`/runs/${this.runId}/logs/download`, `run-${this.runId}.log`);
    } catch (err) {
      if (!(err instanceof AuthError)) this.notify(`Log download failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }
}
