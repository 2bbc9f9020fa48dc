// A run's log on its page: follows /logs/follow live (resuming from
// next_offset when the connection drops), adds lines to the page in batches
// (at most ten times a second, on an animation frame), keeps a bounded
// window of lines in the page, filters by a search string, and can stop
// following to let the reader scroll.

import { apiFetch, downloadWithToken, AuthError } from "./api.js";
import { renderAnsi, plainText } from "./ansi.js";
import { h, sleep } from "./util.js";

// Lines kept in memory (what the search box looks through) and lines in the
// DOM (what the page scrolls through). The whole log is always downloadable.
const KEPT_LINES = 20_000;
const DOM_LINES = 5_000;
// New lines go into the page at most every FLUSH_GAP_MS (a flood is
// unreadable anyway; fewer, larger updates cost far less layout and paint),
// in batches sized so one update takes about FLUSH_BUDGET_MS: the batch
// shrinks when updates run slow (a busy machine) and grows when they are
// quick. So a flood of lines never blocks input.
const FLUSH_GAP_MS = 100;
const FLUSH_BUDGET_MS = 25;
const MIN_BATCH = 50;
const MAX_BATCH = 3_000;
// When the page falls this far behind a flood, it skips to the newest lines
// (they are still in memory for the search, and in the downloadable log).
const CATCH_UP_LINES = 1_000;
const LINES_PER_BLOCK = 200;
// Past this many lines the log box stops growing with its content.
const TALL_LINES = 40;

export class LogView {
  constructor(runId, notify) {
    this.runId = runId;
    this.notify = notify;
    this.lines = [];
    this.pending = [];
    this.streamEnded = false;
    this.skippedAhead = false;
    this.clearDom = false;
    this.domCount = 0;
    this.nextOffset = -KEPT_LINES;
    this.lastOffset = -1;
    this.following = true;
    this.unseen = 0;
    this.query = "";
    this.frame = 0;
    this.batch = 1_000;
    this.lastFlushAt = 0;
    this.flushTimer = 0;
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
    clearTimeout(this.flushTimer);
    clearTimeout(this.searchTimer);
  }

  // The stream has ended. If a flood made the page skip ahead, the window now
  // holds only the newest catch-up lines: refill it from memory so the reader
  // can scroll back through the last DOM_LINES.
  endStream() {
    this.streamEnded = true;
    if (this.skippedAhead && this.following) this.rerender();
    this.skippedAhead = false;
    this.showFinishedOnceDrawn();
  }

  // "finished" waits until every received line is on the page: the stream
  // can end while the last batch still waits for its frame.
  showFinishedOnceDrawn() {
    if (this.streamEnded && !this.pending.length && !this.clearDom) this.setState("finished", "done");
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
          this.endStream();
          return;
        }
        this.setState("reconnecting…", "warn");
      } catch (err) {
        if (signal.aborted || err instanceof AuthError) return;
        // No such run, or its archived log is gone from the store: asking again cannot help.
        if (err.status === 404 || err.status === 410) {
          this.setState(err.message, "error");
          return;
        }
        this.setState(`reconnecting… (${err.message})`, "warn");
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 5_000);
    }
  }

  // Reads NDJSON pages ({chunks: [{offset, stream, time, lines}], next_offset,
  // finished}) until the server says the log is finished (true) or the
  // connection ends early (false: the caller resumes from nextOffset).
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
          const page = JSON.parse(line);
          this.receive(page.chunks || []);
          this.nextOffset = page.next_offset;
          if (page.finished) return true;
        }
      }
    } catch (err) {
      if (signal.aborted) throw err;
      throw new Error(err.message || "stream interrupted");
    } finally {
      reader.releaseLock();
    }
  }

  // A chunk's lines become the entries the page draws, each with its own offset.
  receive(chunks) {
    for (const chunk of chunks) {
      chunk.lines.forEach((text, i) => {
        const entry = { offset: chunk.offset + i, stream: chunk.stream, time: chunk.time, text };
        // A resumed stream never repeats lines, but a retry must not either.
        if (entry.offset <= this.lastOffset) return;
        this.lastOffset = entry.offset;
        this.lines.push(entry);
        if (!this.following) this.unseen += 1;
        else if (this.matches(entry)) this.pending.push(entry);
      });
    }
    if (this.lines.length > KEPT_LINES * 1.25) this.lines.splice(0, this.lines.length - KEPT_LINES);
    if (this.pending.length > DOM_LINES) {
      // More than a window's worth is waiting: the page cannot keep up, so
      // it jumps ahead to the newest lines.
      this.pending.splice(0, this.pending.length - CATCH_UP_LINES);
      this.clearDom = true;
      this.skippedAhead = true;
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
    if (this.frame || this.flushTimer || !(this.pending.length || this.clearDom)) return;
    const wait = this.lastFlushAt + FLUSH_GAP_MS - performance.now();
    if (wait <= 0) {
      this.frame = requestAnimationFrame(() => this.flush());
      return;
    }
    this.flushTimer = setTimeout(() => {
      this.flushTimer = 0;
      this.frame = requestAnimationFrame(() => this.flush());
    }, wait);
  }

  // Lines go into blocks of LINES_PER_BLOCK: adding a line lays out only its
  // block, and the oldest lines leave a whole block at a time, so the cost of
  // a frame does not grow with the number of lines on the page.
  flush() {
    this.frame = 0;
    const started = performance.now();
    this.lastFlushAt = started;
    if (this.clearDom) {
      this.body.replaceChildren();
      this.domCount = 0;
      this.clearDom = false;
    }
    const count = Math.min(this.batch, this.pending.length);
    let added = 0;
    let block = this.body.lastElementChild;
    while (added < count) {
      if (!block || block.childElementCount >= LINES_PER_BLOCK) {
        block = document.createElement("div");
        block.className = "log-block";
        this.body.append(block);
      }
      const fragment = document.createDocumentFragment();
      const take = Math.min(LINES_PER_BLOCK - block.childElementCount, count - added);
      for (let i = 0; i < take; i++) fragment.append(this.lineElement(this.pending[added + i]));
      block.append(fragment);
      added += take;
    }
    this.pending.splice(0, added);
    this.domCount += added;
    while (this.domCount > DOM_LINES) {
      const oldest = this.body.firstElementChild;
      this.domCount -= oldest.childElementCount;
      oldest.remove();
    }
    const tall = this.domCount > TALL_LINES;
    if (tall !== this.body.classList.contains("tall")) this.body.classList.toggle("tall", tall);
    const digits = Math.max(3, String(this.lastOffset + 1).length);
    if (digits !== this.digits) {
      this.digits = digits;
      this.body.style.setProperty("--digits", String(digits));
    }
    // Reading scrollHeight lays the lines out now, so the time taken below
    // includes the layout of this batch.
    const height = this.body.scrollHeight;
    if (this.following) this.body.scrollTop = height;
    const took = performance.now() - started;
    if (took > FLUSH_BUDGET_MS * 1.5) this.batch = Math.max(MIN_BATCH, Math.round(this.batch * 0.6));
    else if (count === this.batch && took < FLUSH_BUDGET_MS * 0.6) {
      this.batch = Math.min(MAX_BATCH, Math.round(this.batch * 1.25));
    }
    this.updateCounts();
    this.showFinishedOnceDrawn();
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
