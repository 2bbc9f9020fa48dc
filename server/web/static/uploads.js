// Uploads (`cast upload`): the list, and one upload's files with downloads.
// Runs that mount `uploads/NAME` link here.

import { apiJson, downloadWithToken, encodePath, AuthError } from "./api.js";
import { fileTree } from "./tree.js";
import { formatBytes, formatTime, h } from "./util.js";

export function uploadsPage(main) {
  const controller = new AbortController();
  const body = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  document.title = "cast · uploads";
  main.append(h("div", { className: "page-head" }, h("h1", {}, "Uploads")), body);

  apiJson("/uploads", { signal: controller.signal }).then(({ uploads }) => {
    if (!uploads.length) {
      body.replaceChildren(h("p", { className: "empty" }, "No uploads yet. Add one with: cast upload PATH"));
      return;
    }
    body.replaceChildren(h("div", { className: "table-wrap" }, h("table", { className: "uploads" },
      h("thead", {}, h("tr", {}, ["Name", "Files", "Size", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, uploads.map((u) => h("tr", {},
        h("td", { dataset: { label: "Name" } }, h("a", { href: `#/uploads/${encodeURIComponent(u.name)}` }, u.name)),
        h("td", { dataset: { label: "Files" } }, String(u.files)),
        h("td", { dataset: { label: "Size" } }, formatBytes(u.size)),
        h("td", { dataset: { label: "Created" } }, formatTime(u.created_at))))))));
  }).catch((err) => {
    if (controller.signal.aborted || err instanceof AuthError) return;
    body.replaceChildren(h("p", { className: "page-error", role: "alert" }, err.message));
  });
  return () => controller.abort();
}

export function uploadPage(main, name, { notify }) {
  const controller = new AbortController();
  const body = h("div", { className: "card outputs" }, h("p", { className: "muted" }, "Loading…"));
  const base = `/uploads/${encodeURIComponent(name)}`;
  document.title = `cast · uploads/${name}`;

  const download = async (path) => {
    const leaf = path.split("/").pop() || name;
    try {
      await downloadWithToken(path ? `${base}/${encodePath(path)}` : base, leaf);
    } catch (err) {
      if (!(err instanceof AuthError)) notify(`Download of ${path || name} failed: ${err.message}`, "error");
    }
  };

  main.append(
    h("p", { className: "crumbs" }, h("a", { href: "#/uploads" }, "← Uploads")),
    h("div", { className: "page-head" }, h("h1", {}, `uploads/${name}`),
      h("span", { className: "actions" }, h("button", {
        type: "button", className: "button", onclick: () => download(""),
      }, "Download all"))),
    body);

  apiJson(`${base}?list=1`, { signal: controller.signal }).then(({ files }) => {
    body.replaceChildren(h("h2", {}, "Files"), files.length
      ? fileTree(files, download)
      : h("p", { className: "muted" }, "This upload is empty."));
  }).catch((err) => {
    if (controller.signal.aborted || err instanceof AuthError) return;
    body.replaceChildren(h("p", { className: "page-error", role: "alert" },
      err.status === 404 ? `There is no upload named ${name}.` : err.message));
  });
  return () => controller.abort();
}
