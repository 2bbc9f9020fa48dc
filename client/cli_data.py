"""The verbs about files: ls, cp, upload, rm, prune and du.

Owns: listing run outputs and uploads as a tree of folders with their sizes
(saying why when there is nothing), copying a file or folder out of them
(`cp -r` semantics, nothing left half-copied), uploading or replacing a file
or folder with a progress bar, deleting stored data while keeping its record,
pruning old runs' outputs, and showing what each user's data holds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli_common import CONTEXT, UsageProblem, print_json
from .config import client as _client
from .sdk import ApiError, CastError


class _Empty(CastError):
    """The run or upload holds nothing: `ls` says so, `cp` refuses with it."""


def _why_empty(client, resource) -> str:
    """The sentence for a run or upload that holds nothing."""
    if resource.kind == "uploads":
        return f"uploads/{resource.name} is empty"
    from cast.protocol.status import FINAL_STATUSES, RunStatus

    run = client.get_run(resource.run_id)
    status = RunStatus(run["status"])
    if status not in FINAL_STATUSES:
        return f"run {resource.run_id} has no outputs yet (it is {status.value})"
    if status is RunStatus.COMPLETE:
        return f"run {resource.run_id} saved no outputs (it wrote no files)"
    if status in (RunStatus.KILLED, RunStatus.STOPPED, RunStatus.INTERRUPTED):
        why = f"it was {status.value}"
    else:
        why = f"it {status.value.replace('_', ' ')}" + (f": {run['reason']}" if run.get("reason") else "")
    return f"run {resource.run_id} saved no outputs ({why})"


def _entries(client, resource) -> tuple[list[dict], bool]:
    """What `resource` holds (its children, or itself when it is a file) and
    whether it is a file; `_Empty` when a run or upload holds nothing."""
    shown = str(resource)
    if resource.kind == "runs":
        listing = client.list_outputs(resource.run_id)
        # An empty folder is an entry of its own, its path ending in '/'.
        files = listing["files"] + [{"path": folder + "/", "size": 0} for folder in listing.get("folders", [])]
        if not files and not resource.subpath:
            raise _Empty(_why_empty(client, resource))
        return _children(files, resource.subpath, shown)
    listing = client.list_upload(resource.name)
    files = listing["files"] + [{"path": folder + "/", "size": 0} for folder in listing.get("folders", [])]
    if not files and not resource.subpath:
        raise _Empty(_why_empty(client, resource))
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
    found = False
    for entry in files:
        if not entry["path"].startswith(prefix):
            continue
        found = True
        head, slash, _ = entry["path"][len(prefix):].partition("/")
        if not head:  # `subpath` is an empty folder
            continue
        if slash:
            child = children.setdefault(head, {"name": head + "/", "type": "dir", "size": 0})
            child["size"] += entry["size"]
        else:
            children[head] = {"name": head, "type": "file", "size": entry["size"]}
    if subpath and not found:
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
    empty = ""
    if not top:
        entries = [{"name": "runs/", "type": "dir", "size": None}, {"name": "uploads/", "type": "dir", "size": None}]
    elif top == "runs":
        runs = _client().list_runs(limit=500)["runs"]
        entries = [{"name": f"{r['id']}/", "type": "dir", "size": None, "status": r["status"],
                    "deleted_at": r.get("deleted_at")} for r in runs]
        empty = "No runs."
    elif top == "uploads":
        uploads = _client().list_uploads()["uploads"]
        entries = [{"name": u["name"], "type": "upload", "size": u["size"], "files": u.get("files"),
                    "deleted_at": u.get("deleted_at")} for u in sorted(uploads, key=lambda u: u["name"])]
        empty = "No uploads."
    else:
        parsed = parse_resource(resource.rstrip("/"))
        try:
            entries, _ = _entries(_client(), parsed)
        except _Empty as nothing:
            entries, empty = [], f"{nothing}."
    if as_json:
        print_json(entries)
        return 0

    def shown(entry: dict) -> str:
        text = entry.get("status") or ("" if entry["size"] is None else human_size(entry["size"]))
        if entry.get("deleted_at"):
            return f"{text}, deleted" if entry.get("status") else "deleted"
        return text

    rows = [[e["name"], shown(e)] for e in entries]
    sys.stdout.write((table(None, rows, right={1}, gap=4) if rows else empty) + "\n")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("resource", metavar="RESOURCE")
@click.argument("destination", required=False, metavar="[DEST]")
def cp(resource, destination) -> int:
    """Copy a file or folder of a run's outputs or an upload to DEST (default: here).

    A folder is copied into DEST/NAME when DEST is an existing folder (or not
    given), else into DEST itself, as `cp -r` does.
    """
    from cast.protocol.validate import parse_resource

    parsed = parse_resource(resource)
    client = _client()
    entries, is_file = _entries(client, parsed)
    name = str(parsed).rsplit("/", 1)[-1]
    dest = Path(destination) if destination else Path(".")
    if is_file:
        target = dest / name if dest.is_dir() else dest
    else:
        target = dest / name if (destination is None or dest.is_dir()) else dest
    sys.stdout.write(download(client, parsed, target, entries=entries, is_file=is_file) + "\n")
    return 0


def download(client, parsed, target: Path, *, entries: list[dict] | None = None, is_file: bool | None = None) -> str:
    """Copy the file or folder `parsed` names (a `Resource`) to `target` itself,
    with a progress bar, leaving nothing half-copied; the line saying what was copied.
    `entries` and `is_file` as `_entries` answers them, when the caller has them."""
    import tarfile

    from cast.protocol.units import human_size

    from .render import Progress
    from .tarstream import extract_stream

    if entries is None or is_file is None:
        entries, is_file = _entries(client, parsed)
    name = str(parsed).rsplit("/", 1)[-1]
    open_download = (lambda: client.download_output(parsed.run_id, parsed.subpath)) if parsed.kind == "runs" \
        else (lambda: client.download_upload(parsed.name, parsed.subpath))
    if is_file:
        size = entries[0]["size"]
        progress = Progress(f"{name}", size)
        partial = target.with_name(f".{target.name}.cast-partial")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open_download() as stream, open(partial, "wb") as out:
                for data in stream.chunks():
                    out.write(data)
                    progress.advance(len(data))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        progress.finish()
        return f"Copied {parsed} to {target} ({human_size(size)})"
    total = sum(e["size"] for e in entries)
    progress = Progress(f"{name}/", total)
    created = not target.exists()
    try:
        with open_download() as stream:  # the bar counts files' bytes, as its total does, not the tar's
            count = extract_stream(stream, target, on_bytes=progress.advance)
    except BaseException as exc:
        if created:  # leave nothing half-copied behind
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, tarfile.TarError):
            raise CastError(f"refused to extract {parsed}: {exc}") from None
        raise
    progress.finish()
    return f"Copied {parsed} to {target}/ ({count} entries, {human_size(total)})"


@click.command(context_settings=CONTEXT)
@click.argument("path", metavar="PATH")
@click.option("-n", "--name", help="Name of the upload (default: the file or folder's name).")
@click.option("--replace", is_flag=True, help="Replace uploads/NAME, if no run has mounted it.")
def upload(path, name, replace) -> int:
    """Upload a file or folder as uploads/NAME, for runs to mount."""
    from cast.protocol.objects import UploadManifest
    from cast.protocol.units import human_size
    from cast.protocol.validate import validate_upload_name

    source = Path(path)
    if not source.exists():
        raise UsageProblem(f"{path}: no such file or folder")
    name = validate_upload_name(name or source.absolute().name)
    client = _client()
    try:  # refuse before streaming what could be gigabytes
        client.list_upload(name)
    except ApiError as exc:
        if exc.status not in (404, 410):  # 410: deleted; its name is free if no run mounted it
            raise
    else:
        if not replace:
            raise CastError(f"uploads/{name} already exists; choose another name with -n NAME, "
                            "or replace it with --replace")
    if source.is_dir():
        from .tarstream import walk_folder

        members, total, skipped = walk_folder(source)
        for item in skipped:
            sys.stderr.write(f"cast: skipping {item} (a link to a folder, or unreadable)\n")
        kind = "dir"
    else:
        members, total, kind = [(str(source), name)], source.stat().st_size, "file"
    try:  # an S3 object store takes the bytes itself; the filesystem store answers 409
        client.plan_upload(name, UploadManifest(kind="dir", replace=replace))
    except ApiError as exc:
        if exc.status != 409:
            raise
        result = _relay_upload(client, name, kind, source, members, total, replace)
    else:
        result = _upload_to_store(client, name, kind, members, total, replace)
    files = result.get("files")
    sys.stdout.write(f"Uploaded uploads/{result.get('name', name)} ({human_size(result.get('size', total))}"
                     + (f", {files} files" if kind == "dir" and files is not None else "") + ")\n")
    return 0


def _relay_upload(client, name: str, kind: str, source: Path, members, total: int, replace: bool) -> dict:
    """The upload as one stream through the server (its filesystem store)."""
    from .render import Progress

    if kind == "dir":
        from .tarstream import tar_chunks

        progress = Progress(name + "/", total)
        chunks = tar_chunks(members, follow_symlinks=True, on_bytes=progress.advance)
    else:
        progress = Progress(name, total)
        chunks = _file_chunks(source, progress)
    result = client.upload(name, kind, chunks, replace=replace)
    progress.finish()
    return result


def _upload_to_store(client, name: str, kind: str, members, total: int, replace: bool) -> dict:
    """The upload straight to the server's object store: hashed, planned, sent, committed."""
    from cast.protocol.objects import UploadManifest
    from cast.protocol.units import human_size

    from . import objectupload
    from .render import Progress

    files = [(local, arcname) for local, arcname in members if not os.path.isdir(local)]
    label = name + ("/" if kind == "dir" else "")
    hashing = Progress(f"{label} (hashing)", total)
    entries = objectupload.hash_files(files, hashing.advance)
    hashing.finish()
    manifest = UploadManifest(kind=kind, files=entries, replace=replace,
                              folders=[arcname for local, arcname in members if os.path.isdir(local)])
    plan = client.plan_upload(name, manifest)
    sending = objectupload.planned_bytes(plan, entries)
    stored = sum({entry.sha256: entry.size for entry in entries}.values()) - sending  # each content once
    if stored:
        sys.stderr.write(f"cast: {human_size(stored)} already in the object store; sending {human_size(sending)}\n")
    progress = Progress(label, sending)
    objectupload.send(plan, entries, dict((arcname, local) for local, arcname in files), progress.advance)
    progress.finish()
    return client.commit_upload(name, manifest)


def _file_chunks(path: Path, progress):
    with open(path, "rb") as handle:
        while True:
            data = handle.read(1 << 20)
            if not data:
                return
            progress.advance(len(data))
            yield data


def _whole(text: str):
    """A run's outputs or an upload, named whole (`runs/N`, `uploads/NAME`)."""
    from cast.protocol.validate import SpecError, parse_resource

    try:
        parsed = parse_resource(text.rstrip("/"))
    except SpecError as exc:
        raise UsageProblem(str(exc)) from None
    if parsed.subpath:
        raise UsageProblem(f"{text}: rm deletes a run's outputs or an upload whole (runs/N, uploads/NAME), "
                           "not a path inside it")
    return parsed


@click.command(context_settings=CONTEXT)
@click.argument("resources", nargs=-1, required=True, metavar="runs/N... | uploads/NAME...")
@click.option("--force", is_flag=True, help="Admins only: delete even what a queued or active run mounts.")
def rm(resources, force) -> int:
    """Delete runs' outputs or uploads, freeing their space; their records stay.

    Refused, naming them, while a queued or active run mounts what it would
    delete, and for a run that has not ended (stop it first).
    """
    from cast.protocol.units import human_size

    from .render import local_time

    parsed = [_whole(text) for text in resources]  # all checked before any is deleted
    client = _client()
    failures = 0
    for resource in parsed:
        try:
            result = client.delete_outputs(resource.run_id, force=force) if resource.kind == "runs" \
                else client.delete_upload(resource.name, force=force)
        except ApiError as exc:
            sys.stderr.write(f"cast: error: {resource}: {exc.detail}\n")
            failures += 1
            continue
        if result["already"]:
            sys.stdout.write(f"{resource} was already deleted at {local_time(result['deleted_at'])}; nothing to do\n")
        else:
            sys.stdout.write(f"Deleted {resource} (freed {human_size(result['freed'])}); its record stays\n")
    return 1 if failures else 0


@click.command(context_settings=CONTEXT)
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Runs that finished longer ago than this (30d, 12h, 90m).")
@click.option("--keep-labeled", is_flag=True, help="Keep the outputs of runs that have a label.")
@click.option("--user", help="Only this user's runs (admins; default: your own, for admins everyone's).")
@click.option("--dry-run", is_flag=True, help="Say what would be freed; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune(older_than, keep_labeled, user, dry_run, as_json) -> int:
    """Free the outputs of finished runs older than AGE; their records stay.

    Never touches a run that has not ended, or one a queued or active run mounts.
    """
    from cast.protocol.units import human_size, parse_duration

    try:
        seconds = parse_duration(older_than, what="--older-than")
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    result = _client().prune(older_than=seconds, keep_labeled=keep_labeled, user=user, dry_run=dry_run)
    if as_json:
        print_json(result)
        return 0
    runs = result["runs"]
    if not runs:
        sys.stdout.write(f"No finished run older than {older_than} holds outputs to free.\n")
        return 0
    verb = "Would free" if dry_run else "Freed"
    plural = "s" if len(runs) != 1 else ""
    sys.stdout.write(f"{verb} {human_size(result['freed'])} from {len(runs)} run{plural}: "
                     + ", ".join(f"runs/{n}" for n in runs) + "\n")
    return 0


@click.command(context_settings=CONTEXT)
@click.option("--user", help="Only this user (admins; default: your own, for admins everyone's).")
@click.option("--json", "as_json", is_flag=True, help="Print the usage as JSON.")
def du(user, as_json) -> int:
    """Show what each run's outputs and each upload hold, with totals per user."""
    from cast.protocol.units import human_size

    from .render import table

    users = _client().usage(user=user)["users"]
    if as_json:
        print_json(users)
        return 0
    rows = []
    for entry in users:
        rows.append([entry["user"], f"runs {human_size(entry['runs_size'])} + uploads "
                     f"{human_size(entry['uploads_size'])}", human_size(entry["total"])])
        rows += [[f"  runs/{r['id']}", r["status"], human_size(r["size"])] for r in entry["runs"]]
        rows += [[f"  uploads/{u['name']}", "upload", human_size(u["size"])] for u in entry["uploads"]]
    sys.stdout.write(table(["USER / DATA", "", "SIZE"], rows, right={2}) + "\n")
    return 0


COMMANDS = (ls, cp, upload, rm, prune, du)

