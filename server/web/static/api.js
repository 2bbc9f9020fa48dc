// Talking to the control plane: the user's token (kept in localStorage),
// authenticated requests, error messages, and downloads that need the token.

const TOKEN_KEY = "cast.token";
const API_ROOT = "/api/v1";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// 401/403: the token is missing, wrong, or not a user token.
export class AuthError extends ApiError {}

let onAuthError = () => {};

// The app shows the login form again whenever a request is refused.
export function setAuthErrorHandler(handler) {
  onAuthError = handler;
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
}

// A one-time sign-in link (`cast web`): spend it for a user token of our own,
// kept like a pasted one. Throws ApiError with the server's reason (used,
// expired) when the link is refused.
export async function redeemSignIn(secret) {
  let response;
  try {
    response = await fetch(`${API_ROOT}/sign-in`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: secret }),
    });
  } catch (err) {
    throw new ApiError(0, `Cannot reach the cast server (${err.message}).`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: reported below with the status.
  }
  if (!response.ok || !body || typeof body.token !== "string") {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    throw new ApiError(response.status, `This sign-in link does not work: ${detail}.`);
  }
  setToken(body.token);
  return body.user;
}

function authMessage(status, detail) {
  if (status === 401) {
    return `The server refused this token (401 Unauthorized: ${detail}). `
      + "Enter a user token, for example the contents of CAST_HOME/admin-token.";
  }
  return `This token may not read runs (403 Forbidden: ${detail}). `
    + "A worker token does not work here: enter a user token.";
}

async function errorFrom(response) {
  let detail = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.detail) {
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // Not JSON: keep the status text.
  }
  if (response.status === 401 || response.status === 403) {
    return new AuthError(response.status, authMessage(response.status, detail));
  }
  return new ApiError(response.status, detail);
}

// fetch() against /api/v1 with the bearer token; resolves to the Response
// when it is 2xx, throws ApiError/AuthError otherwise.
export async function apiFetch(path, { method = "GET", body, signal, token } = {}) {
  const headers = { Authorization: `Bearer ${token ?? getToken() ?? ""}` };
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API_ROOT + path, { method, headers, body: payload, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `Cannot reach the cast server (${err.message}).`);
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    // A token given explicitly is being tried out by the login form, which
    // reports the refusal itself.
    if (error instanceof AuthError && token === undefined) onAuthError(error);
    throw error;
  }
  return response;
}

export async function apiJson(path, options) {
  const response = await apiFetch(path, options);
  return response.status === 204 ? null : response.json();
}

// "runs/3/outputs/a b/c.txt": each segment percent-encoded, slashes kept.
export function encodePath(path) {
  return path.split("/").filter(Boolean).map(encodeURIComponent).join("/");
}

// Downloads need the bearer token, which a plain link cannot send: fetch the
// bytes, then hand them to the browser as a blob URL with a file name (".tar"
// added when the server sent a folder as a tar archive).
export async function downloadWithToken(path, filename) {
  const response = await apiFetch(path);
  // A server with an object store answers a file asked for with ?link=true
  // by its presigned URL (a stored file itself is never sent as JSON): the
  // browser downloads it straight from the store, which names it.
  if ((response.headers.get("Content-Type") || "").startsWith("application/json")) {
    const { url } = await response.json();
    const link = document.createElement("a");
    link.href = url;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    return;
  }
  const isTar = (response.headers.get("Content-Type") || "").startsWith("application/x-tar");
  if (isTar && !filename.endsWith(".tar")) filename += ".tar";
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The browser has started reading the blob by now; free it a little later.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
