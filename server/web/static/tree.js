// A browsable tree of files (a run's outputs or an upload) with sizes and a
// download button per file and per folder (folders come as tar archives).
// Empty folders (a manifest's `folders`: a file's path already names its
// parents) are shown too, since a run may make one its next run expects.

import { h, formatBytes } from "./util.js";

function child(node, part) {
  if (!node.dirs.has(part)) {
    const path = node.path ? `${node.path}/${part}` : part;
    node.dirs.set(part, { name: part, path, dirs: new Map(), files: [], size: 0, count: 0 });
  }
  return node.dirs.get(part);
}

function buildTree(files, folders) {
  const root = { name: "", path: "", dirs: new Map(), files: [], size: 0, count: 0 };
  for (const file of files) {
    const parts = file.path.split("/").filter(Boolean);
    let node = root;
    node.size += file.size;
    node.count += 1;
    for (const part of parts.slice(0, -1)) {
      node = child(node, part);
      node.size += file.size;
      node.count += 1;
    }
    node.files.push({ ...file, name: parts[parts.length - 1] || file.path });
  }
  for (const folder of folders) {
    folder.split("/").filter(Boolean).reduce(child, root);
  }
  return root;
}

const byName = (a, b) => a.name.localeCompare(b.name);

// `download(path, isFolder)` is called when a download button is pressed.
export function fileTree(files, download, folders = []) {
  const root = buildTree(files, folders);
  const button = (path, isFolder, label) => h("button", {
    type: "button", className: "button small", title: `Download ${path}${isFolder ? " as a tar archive" : ""}`,
    dataset: { path, kind: isFolder ? "folder" : "file" },
    onclick: async (event) => {
      const target = event.currentTarget;
      target.disabled = true;
      try {
        await download(path, isFolder);
      } finally {
        target.disabled = false;
      }
    },
  }, label);

  const renderNode = (node, depth) => {
    const items = [];
    for (const dir of [...node.dirs.values()].sort(byName)) {
      const empty = dir.count === 0;
      items.push(h("li", { className: empty ? "tree-dir tree-empty" : "tree-dir" },
        h("details", { open: depth < 1 },
          h("summary", {},
            h("span", { className: "tree-name" }, `${dir.name}/`),
            h("span", { className: "tree-size" },
              empty ? "no files" : `${formatBytes(dir.size)} · ${dir.count} file${dir.count === 1 ? "" : "s"}`),
            empty ? null : button(dir.path, true, "tar")),
          renderNode(dir, depth + 1))));
    }
    for (const file of node.files.sort(byName)) {
      items.push(h("li", { className: "tree-file" },
        h("span", { className: "tree-name", title: file.sha256 ? `sha256 ${file.sha256}` : null }, file.name),
        h("span", { className: "tree-size" }, formatBytes(file.size)),
        button(file.path, false, "download")));
    }
    return h("ul", { className: "tree" }, items);
  };

  return h("div", { className: "tree-root" },
    h("div", { className: "tree-total" }, `${root.count} file${root.count === 1 ? "" : "s"}, ${formatBytes(root.size)}`),
    renderNode(root, 0));
}
