// The cast web viewer: the login form, the hash router (#/runs, #/runs/N,
// #/compare, #/searches, #/searches/N, #/uploads, #/uploads/NAME) and
// notices. Each page is a function that fills <main> and returns a function
// that stops its timers and requests. Nothing is drawn before the server's
// status table is here (status.js).

import { apiFetch, clearToken, getToken, redeemSignIn, setAuthErrorHandler, setToken, AuthError } from "./api.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { comparePage } from "./compare.js";
import { searchesPage, searchPage } from "./search.js";
import { loadStatuses } from "./status.js";
import { uploadsPage, uploadPage } from "./uploads.js";
import { h } from "./util.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const logoutButton = document.getElementById("logout");
const toasts = document.getElementById("toasts");

let disposePage = () => {};

export function notify(message, tone = "info") {
  const toast = h("div", { className: `toast tone-${tone}`, role: tone === "error" ? "alert" : "status" },
    h("span", {}, message),
    h("button", { type: "button", className: "toast-close", "aria-label": "Dismiss", onclick: () => toast.remove() }, "×"));
  toasts.append(toast);
  setTimeout(() => toast.remove(), tone === "error" ? 10_000 : 5_000);
}

const ROUTES = [
  [/^#\/runs\/(\d+)$/, (m) => runPage(main, Number(m[1]), { notify }), "runs"],
  [/^#\/runs(?:\?(.*))?$/, (m) => runsPage(main, new URLSearchParams(m[1] || "")), "runs"],
  [/^#\/compare(?:\?(.*))?$/, (m) => comparePage(main, new URLSearchParams(m[1] || "")), "runs"],
  [/^#\/searches\/(\d+)$/, (m) => searchPage(main, Number(m[1]), { notify }), "searches"],
  [/^#\/searches$/, () => searchesPage(main), "searches"],
  [/^#\/uploads\/([^/?]+)$/, (m) => uploadPage(main, decodeURIComponent(m[1]), { notify }), "uploads"],
  [/^#\/uploads$/, () => uploadsPage(main, { notify }), "uploads"],
];

function route() {
  disposePage();
  disposePage = () => {};
  if (!getToken()) {
    showLogin();
    return;
  }
  nav.hidden = false;
  logoutButton.hidden = false;
  for (const [pattern, page, section] of ROUTES) {
    const match = location.hash.match(pattern);
    if (match) {
      for (const link of nav.querySelectorAll("a")) {
        link.classList.toggle("current", link.dataset.nav === section);
      }
      main.replaceChildren();
      disposePage = page(match) || (() => {});
      window.scrollTo(0, 0);
      return;
    }
  }
  location.replace("#/runs");
}

function showLogin(message = "") {
  disposePage();
  disposePage = () => {};
  nav.hidden = true;
  logoutButton.hidden = true;
  document.title = "cast · sign in";
  const error = h("p", { className: "login-error", role: "alert", hidden: !message }, message);
  const input = h("input", {
    type: "password", name: "token", id: "token", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "paste your token",
  });
  const submit = h("button", { type: "submit", className: "button primary" }, "Open");
  const form = h("form", { className: "card login", onsubmit: async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    submit.disabled = true;
    try {
      await apiFetch("/runs?limit=1", { token });
      setToken(token);
      route();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      input.select();
    } finally {
      submit.disabled = false;
    }
  } },
  h("h1", {}, "Sign in to cast"),
  h("p", {}, "Runs are only shown to holders of a user token. The token is kept in this browser "
    + "(localStorage) until you press “Forget token”."),
  h("p", { className: "hint" }, "On the machine running the control plane it is in ",
    h("code", {}, "$CAST_HOME/admin-token"), " (", h("code", {}, "~/.cast/admin-token"), " by default)."),
  error,
  h("label", { for: "token" }, "Token"),
  h("div", { className: "login-row" }, input, submit));
  main.replaceChildren(form);
  input.focus();
}

setAuthErrorHandler((err) => {
  clearToken();
  showLogin(err instanceof AuthError ? err.message : String(err));
});

logoutButton.addEventListener("click", () => {
  clearToken();
  showLogin("Token forgotten. Enter a token to see runs again.");
});

async function start() {
  try {
    await loadStatuses();
  } catch (err) {
    main.replaceChildren(h("div", { className: "card" },
      h("p", { className: "page-error", role: "alert" }, `Cannot load the run statuses from the server: ${err.message}`),
      h("button", { type: "button", className: "button", onclick: start }, "Try again")));
    return;
  }
  const signIn = location.hash.match(/^#sign-in=([A-Za-z0-9_-]+)$/);
  if (signIn) {
    // Out of the address bar and the history at once: the link works only once anyway.
    history.replaceState(null, "", `${location.pathname}#/runs`);
    try {
      await redeemSignIn(signIn[1]);
    } catch (err) {
      window.addEventListener("hashchange", route);
      if (getToken()) {  // this browser is signed in already: keep that, say why the link failed
        route();
        notify(err.message, "error");
      } else {
        showLogin(err.message);
      }
      return;
    }
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
