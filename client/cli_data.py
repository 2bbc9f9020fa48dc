"""The verbs about files: ls, cp and upload.

Owns: listing run outputs and uploads as a tree of folders with their sizes,
copying a file or folder out of them (`cp -r` semantics, nothing left
half-copied), and uploading a file or folder with a progress bar.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli_common import CONTEXT, UsageProblem, print_json
from .config import client as _client
from .sdk import ApiError, CastError


def _entries(client, resource) -> tuple[list[dict], bool]:
    """What `resource` holds (its children, or itself when it is a file) and
    whether it is a file."""
    shown = str(resource)
    if resource.kind == "runs":
        return _children(client.list_outputs(resource.run_id)["files"], resource.subpath, shown)
    files = client.list_upload(resource.name)["files"]
    kinds = {upload["name"]: upload.get("kind") for upload in client.list_uploads()["uploads"]}
    if kinds.get(resource.name) == "file":  # the upload is one file, listed under its own name
        if resource.subpath:
            raise CastError(f"{shown}: uploads/{resource.name} is a file, not a folder")
        return [{"name": resource.name, "type": "file", "size": files[0]["size"]}], True
    return _children(files, resource.subpath, shown)


def _children(files: list[dict], subpath: str, shown: str) -> tuple[list[dict], bool]:
    """The entries directly under `subpath` (files and folders with their total
    sizes), and whether `subpath` is itself a file."""
    for entry in files:
        if entry["path"] == subpath and subpath:
            return [{"name": subpath.rsplit("/", 1)[-1], "type": "file", "size": entry["size"]}], True
    prefix = f"{subpath}/" if subpath else ""
    children: dict[str, dict] = {}
    for entry in files:
        if not entry["path"].startswith(prefix):
            continue
        head, slash, _ = entry["path"][len(prefix):].partition("/")
        if slash:
            child = children.setdefault(head, {"name": head + "/", "type": "dir", "size": 0})
            child["size"] += entry["size"]
        else:
            children[head] = {"name": head, "type": "file", "size": entry["size"]}
    if subpath and not children:
        raise CastError(f"{shown}: no such file or folder")
    return [children[name] for name in sorted(children)], False


@click.command(context_settings=CONTEXT)
@click.argument("resource", required=False, default="", metavar="[runs/N[/PATH] | uploads[/NAME[/PATH]]]")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def ls(resource, as_json) -> int:
    """List run outputs and uploads with their sizes."""
    from cast.protocol.units import human_size
    from cast.protocol.validate import parse_resource

    from .render import table

    top = resource.strip("/")
    if not top:
        entries = [{"name": "runs/", "type": "dir", "size": None}, {"name": "uploads/", "type": "dir", "size": None}]
    elif top == "runs":
        runs = _client().list_runs(limit=500)["runs"]
        entries = [{"name": f"{r['id']}/", "type": "dir", "size": None, "status": r["status"]} for r in runs]
    elif top == "uploads":
        uploads = _client().list_uploads()["uploads"]
        entries = [{"name": u["name"], "type": "upload", "size": u["size"], "files": u.get("files")}
                   for u in sorted(uploads, key=lambda u: u["name"])]
    else:
        parsed = parse_resource(resource.rstrip("/"))
        entries, _ = _entries(_client(), parsed)
    if as_json:
        print_json(entries)
        return 0
    rows = [[e["name"], e.get("status") or ("" if e["size"] is None else human_size(e["size"]))] for e in entries]
    if rows:
        sys.stdout.write(table(None, rows, right={1}, gap=4) + "\n")
    return 0


class _Counting:
    """A file-like reader that advances a progress bar as it is read."""

    def __init__(self, download, progress):
        self._download = download
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._download.read(size)
        self._progress.advance(len(data))
        return data


@click.command(context_settings=CONTEXT)
@click.argument("resource", metavar="RESOURCE")
@click.argument("destination", required=False, metavar="[DEST]")
def cp(resource, destination) -> int:
    """Copy a file or folder of a run's outputs or an upload to DEST (default: here).

    A folder is copied into DEST/NAME when DEST is an existing folder (or not
    given), else into DEST itself, as `cp -r` does.
    """
    import tarfile

    from cast.protocol.units import human_size
    from cast.protocol.validate import parse_resource

    from .render import Progress
    from .tarstream import extract_stream

    parsed = parse_resource(resource)
    client = _client()
    entries, is_file = _entries(client, parsed)
    name = str(parsed).rsplit("/", 1)[-1]
    dest = Path(destination) if destination else Path(".")
    open_download = (lambda: client.download_output(parsed.run_id, parsed.subpath)) if parsed.kind == "runs" \
        else (lambda: client.download_upload(parsed.name, parsed.subpath))
    if is_file:
        target = dest / name if dest.is_dir() else dest
        size = entries[0]["size"]
        progress = Progress(f"{name}", size)
        partial = target.with_name(f".{target.name}.cast-partial")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open_download() as download, open(partial, "wb") as out:
                for data in download.chunks():
                    out.write(data)
                    progress.advance(len(data))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        progress.finish()
        sys.stdout.write(f"Copied {parsed} to {target} ({human_size(size)})\n")
        return 0
    target = dest / name if (destination is None or dest.is_dir()) else dest
    total = sum(e["size"] for e in entries)
    progress = Progress(f"{name}/", total)
    created = not target.exists()
    try:
        with open_download() as download:
            count = extract_stream(_Counting(download, progress), target)
    except BaseException as exc:
        if created:  # leave nothing half-copied behind
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, tarfile.TarError):
            raise CastError(f"refused to extract {parsed}: {exc}") from None
        raise
    progress.finish()
    sys.stdout.write(f"Copied {parsed} to {target}/ ({count} entries, {human_size(total)})\n")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("path", metavar="PATH")
@click.option("-n", "--name", help="Name of the upload (default: the file or folder's name).")
def upload(path, name) -> int:
    """Upload a file or folder as uploads/NAME, for runs to mount."""
    from cast.protocol.units import human_size
    from cast.protocol.validate import validate_upload_name

    from .render import Progress

    source = Path(path)
    if not source.exists():
        raise UsageProblem(f"{path}: no such file or folder")
    name = validate_upload_name(name or source.absolute().name)
    client = _client()
    try:  # refuse before streaming what could be gigabytes
        client.list_upload(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
    else:
        raise CastError(f"uploads/{name} already exists; choose another name with -n NAME")
    if source.is_dir():
        from .tarstream import tar_chunks, walk_folder

        members, total, skipped = walk_folder(source)
        for item in skipped:
            sys.stderr.write(f"cast: skipping {item} (a link to a folder, or unreadable)\n")
        progress = Progress(name + "/", total)
        kind, chunks = "dir", tar_chunks(members, follow_symlinks=True, on_bytes=progress.advance)
    else:
        total = source.stat().st_size
        progress = Progress(name, total)
        kind, chunks = "file", _file_chunks(source, progress)
    result = client.upload(name, kind, chunks)
    progress.finish()
    files = result.get("files")
    sys.stdout.write(f"Uploaded uploads/{result.get('name', name)} ({human_size(result.get('size', total))}"
                     + (f", {files} files" if kind == "dir" and files is not None else "") + ")\n")
    return 0


def _file_chunks(path: Path, progress):
    with open(path, "rb") as handle:
        while True:
            data = handle.read(1 << 20)
            if not data:
                return
            progress.advance(len(data))
            yield data


COMMANDS = (ls, cp, upload)
