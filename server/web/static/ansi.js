// ANSI escape codes in log lines: SGR colour and style codes become styled
// spans; every other escape sequence is dropped. Text is only ever placed
// with text nodes / textContent, so a log line can never become markup.

// CSI sequences (ESC [ params intermediates final), OSC strings (ESC ] … BEL
// or ESC \), and two- or three-byte escapes (charset selection and the like).
const ESCAPE = /\x1b(?:\[([0-9;:?<=>]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[()#*+][0-9A-Za-z]|[@-Z\\-_=>])/g;

// xterm's 16 colours are CSS classes (so the theme picks them); 16-255 and
// 24-bit colours are computed here and set as inline rgb().
function xterm256(index) {
  if (index < 16) return index;
  if (index < 232) {
    const n = index - 16;
    const level = (v) => (v === 0 ? 0 : 55 + v * 40);
    return [level(Math.floor(n / 36)), level(Math.floor(n / 6) % 6), level(n % 6)];
  }
  const grey = 8 + (index - 232) * 10;
  return [grey, grey, grey];
}

const byte = (v) => Math.min(255, Math.max(0, Math.trunc(Number(v)) || 0));

// The colour named by an extended code's arguments (5;N or 2;R;G;B), and how
// many arguments it used.
function extendedColour(args) {
  if (args[0] === 5 && args.length >= 2) return [xterm256(byte(args[1])), 2];
  if (args[0] === 2 && args.length >= 4) return [[byte(args[1]), byte(args[2]), byte(args[3])], 4];
  return [null, args.length];
}

function applySgr(style, paramText) {
  const groups = paramText === "" ? ["0"] : paramText.split(";");
  for (let i = 0; i < groups.length; i++) {
    let code;
    let args;
    if (groups[i].includes(":")) {
      // Colon form (38:2::R:G:B): the arguments travel in the same group.
      const parts = groups[i].split(":").filter((p) => p !== "").map(Number);
      [code, ...args] = parts;
      if (args[0] === 2 && args.length === 5) args.splice(1, 1); // drop the colour-space id
    } else {
      code = groups[i] === "" ? 0 : Number(groups[i]);
      args = groups.slice(i + 1).map(Number);
    }
    if (code === 38 || code === 48) {
      const [colour, used] = extendedColour(args);
      if (!groups[i].includes(":")) i += used;
      if (code === 38) style.fg = colour;
      else style.bg = colour;
      continue;
    }
    if (code === 0) Object.assign(style, EMPTY_STYLE);
    else if (code === 1) style.bold = true;
    else if (code === 2) style.dim = true;
    else if (code === 3) style.italic = true;
    else if (code === 4) style.underline = true;
    else if (code === 7) style.inverse = true;
    else if (code === 9) style.strike = true;
    else if (code === 22) style.bold = style.dim = false;
    else if (code === 23) style.italic = false;
    else if (code === 24) style.underline = false;
    else if (code === 27) style.inverse = false;
    else if (code === 29) style.strike = false;
    else if (code >= 30 && code <= 37) style.fg = code - 30;
    else if (code === 39) style.fg = null;
    else if (code >= 40 && code <= 47) style.bg = code - 40;
    else if (code === 49) style.bg = null;
    else if (code >= 90 && code <= 97) style.fg = code - 90 + 8;
    else if (code >= 100 && code <= 107) style.bg = code - 100 + 8;
  }
}

const EMPTY_STYLE = {
  fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false, strike: false,
};

function isPlain(style) {
  return style.fg === null && style.bg === null && !style.bold && !style.dim && !style.italic
    && !style.underline && !style.inverse && !style.strike;
}

// [{text, style}] for one log line. A carriage return drops what came before
// it on the line, as a terminal overwrites a progress bar.
export function parseAnsi(line) {
  const text = line.endsWith("\r") ? line.slice(0, -1) : line;
  const segments = [];
  const style = { ...EMPTY_STYLE };
  const addText = (chunk) => {
    const cr = chunk.lastIndexOf("\r");
    if (cr >= 0) {
      segments.length = 0;
      chunk = chunk.slice(cr + 1);
    }
    if (chunk) segments.push({ text: chunk, style: { ...style } });
  };
  let last = 0;
  ESCAPE.lastIndex = 0;
  for (let match; (match = ESCAPE.exec(text)) !== null;) {
    addText(text.slice(last, match.index));
    if (match[2] === "m") applySgr(style, match[1]);
    last = ESCAPE.lastIndex;
  }
  addText(text.slice(last));
  return segments;
}

// The line as plain text, as it would read on a terminal.
export function plainText(line) {
  if (!line.includes("\x1b") && !line.includes("\r")) return line;
  return parseAnsi(line).map((s) => s.text).join("");
}

function colourValue(colour) {
  return Array.isArray(colour) ? `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})` : null;
}

function styledSpan({ text, style }) {
  const span = document.createElement("span");
  let { fg, bg } = style;
  if (style.inverse) {
    [fg, bg] = [bg ?? "default-bg", fg ?? "default-fg"];
  }
  const classes = [];
  if (typeof fg === "number") classes.push(`ansi-fg-${fg}`);
  else if (fg === "default-bg") classes.push("ansi-fg-inverse");
  if (typeof bg === "number") classes.push(`ansi-bg-${bg}`);
  else if (bg === "default-fg") classes.push("ansi-bg-inverse");
  if (style.bold) classes.push("ansi-bold");
  if (style.dim) classes.push("ansi-dim");
  if (style.italic) classes.push("ansi-italic");
  if (style.underline) classes.push("ansi-underline");
  if (style.strike) classes.push("ansi-strike");
  span.className = classes.join(" ");
  if (colourValue(fg)) span.style.color = colourValue(fg);
  if (colourValue(bg)) span.style.backgroundColor = colourValue(bg);
  span.textContent = text;
  return span;
}

// Fill `element` with the line's text, styled spans where codes asked.
export function renderAnsi(element, line) {
  if (!line.includes("\x1b") && !line.includes("\r")) {
    element.textContent = line;
    return;
  }
  for (const segment of parseAnsi(line)) {
    element.append(isPlain(segment.style) ? document.createTextNode(segment.text) : styledSpan(segment));
  }
}
