"""What a run leaves in its working dir is hostile ground (issue 10, findings 1,
4, 5, 6 and 8): links out of the run, FIFOs, names the server cannot store,
chains of folders past PATH_MAX, hardlinks and sparse files. Each is a real
run through the real CLI, server and worker; the worker never follows a link
while cleaning up, saves or names every entry, removes the tree and takes the
next run. Then a property test: hypothesis builds hostile trees and the
worker's save and cleanup (the very functions the agent calls, feeding the
server's own tar extraction) hold for each; test_hostile_trees_live.py holds
the same property through live parts, a real run per tree.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import stat
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cast.protocol.names import name_problem, printable
from cast.server.errors import BadRequest
from cast.server.services import storage
from cast.worker.client import span_bytes
from cast.worker.fsops import remove_tree
from cast.worker.outputs import Outputs, snapshot
from tests.conftest import WorkerProcess, wait_until
from tests.factories import log_texts, output_paths, run_id_of, submit, wait_final, wait_status
from tests.reliability.helpers import canary_tree, modes_and_contents

BOUND = 300  # seconds: only guards against a hang


def _cleaned_up(worker) -> None:
    """The worker removes a run's working dir after its final status."""
    wait_until(lambda: not any((worker.work_dir / "runs").iterdir()), timeout=BOUND, what="the working dir removed")


# --- finding 1: the worker follows a run's symlinks as root -------------------------

@pytest.mark.parametrize("executor", ["local", "docker"])
def test_cleanup_never_follows_a_runs_links_to_host_folders_or_stored_outputs(
        executor, server, start_worker, docker_env, tmp_path):
    worker = start_worker(server, executor=executor, env=docker_env if executor == "docker" else None)
    canary = canary_tree(tmp_path / "canary")
    with server.api() as api:
        first = submit(api, "mkdir out && echo kept > out/kept.txt")
        assert wait_final(api, first, timeout=BOUND)["status"] == "complete"
        stored = server.data_dir / "runs" / str(first)
        sealed = modes_and_contents(stored)
        before = modes_and_contents(canary)
        command = " && ".join([
            f"ln -s {shlex.quote(str(canary / 'private'))} to-private",
            f"ln -s {shlex.quote(str(canary / 'sticky'))} to-sticky",
            f"ln -s {shlex.quote(str(canary / 'file.txt'))} to-file",
            f"ln -s {shlex.quote(str(stored))} to-stored",
            "mkdir -p locked/deeper && touch locked/deeper/x && chmod 000 locked/deeper locked",
        ])
        run = submit(api, command, mounts=[{"resource": f"runs/{first}", "path": "mounted"}])
        assert wait_final(api, run, timeout=BOUND)["status"] == "complete", log_texts(api, run)
        lines = log_texts(api, run, "cast")
    _cleaned_up(worker)

    assert modes_and_contents(canary) == before
    assert modes_and_contents(stored) == sealed
    for name in ["to-private", "to-sticky", "to-file", "to-stored"]:
        assert f"not saved: {name}: a symbolic link (links are not followed)" in lines


# --- finding 4: outputs lost without a word past PATH_MAX ---------------------------

DEEP_TREE = (
    "import os\n"
    "open('top.txt', 'w').write('top')\n"
    "for _ in range(25):\n"
    "    os.mkdir('d' * 200); os.chdir('d' * 200)\n"
    "open('bottom.txt', 'w').write('bottom')\n"
    "os.chmod('.', 0o500)\n"
)


def test_a_tree_deeper_than_path_max_is_named_removed_and_the_worker_goes_on(server, start_worker):
    worker = start_worker(server)
    with server.api() as api:
        deep = submit(api, f"python3 -c {shlex.quote(DEEP_TREE)}")
        assert wait_final(api, deep, timeout=BOUND)["status"] == "complete"
        lines = log_texts(api, deep, "cast")
        assert output_paths(api, deep) == ["top.txt"]
        bottom_path = "/".join(["d" * 200] * 25 + ["bottom.txt"])
        bottom = [line for line in lines if line.endswith(f"bottom.txt: its path is {len(bottom_path)} bytes long; "
                                                           "the server stores paths of at most 1024 bytes")]
        assert len(bottom) == 1 and bottom[0].startswith("not saved: dddd"), lines
        _cleaned_up(worker)
        after = submit(api, "echo next > next.txt")
        assert wait_final(api, after, timeout=BOUND)["status"] == "complete"
        assert output_paths(api, after) == ["next.txt"]


def test_a_worker_starts_cleanly_whatever_a_dead_worker_left_behind(server, start_worker):
    worker = start_worker(server, name="same")
    with server.api() as api:
        leftover = submit(api, f"python3 -c {shlex.quote(DEEP_TREE)} && mkfifo pipe && "
                               "mkdir -p odd/inner && chmod 000 odd/inner odd && echo ready && sleep 600")
        wait_until(lambda: "ready" in log_texts(api, leftover, "stdout"), timeout=BOUND, what="the tree made")
        worker.stop(9)
        assert any((worker.work_dir / "runs").iterdir())  # left behind, deep tree and all

        again = start_worker(server, name="same")
        assert again.work_dir == worker.work_dir
        after = submit(api, "echo next > next.txt")
        assert wait_final(api, after, timeout=BOUND)["status"] == "complete", again.log_path.read_text()[-3000:]
    # The dead worker's leftovers went before the new one took a run; a run's
    # own dir goes just after its final status (no one waits for it).
    runs = worker.work_dir / "runs"
    assert not [p.name for p in runs.iterdir() if p.name.startswith(f"{leftover}-")]
    wait_until(lambda: not any(runs.iterdir()), timeout=BOUND, what="the last run's working dir removed")


# --- finding 5: a FIFO wedges the worker --------------------------------------------

def test_a_fifo_among_the_outputs_is_named_and_never_opened(server, worker):
    with server.api() as api:
        run = submit(api, "mkfifo out.bin && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")'"
                          " && echo data > real.txt")
        assert wait_final(api, run, timeout=BOUND)["status"] == "complete"
        assert output_paths(api, run) == ["real.txt"]
        lines = log_texts(api, run, "cast")
    assert "not saved: out.bin: a FIFO (never opened)" in lines
    assert "not saved: sock: a socket (never opened)" in lines


# --- findings 3 and 8: names the server cannot store --------------------------------

def test_names_the_server_cannot_store_are_named_and_the_rest_is_saved(server, worker):
    with server.api() as api:
        run = submit(api, "touch $'bad\\xffutf8' $'new\\nline' good.txt && mkdir $'dir\\xfe' && touch $'dir\\xfe/in.txt'")
        assert wait_final(api, run, timeout=BOUND)["status"] == "complete", log_texts(api, run)
        assert output_paths(api, run) == ["good.txt"]
        lines = log_texts(api, run, "cast")
    assert r"not saved: bad\xffutf8: its name is not valid UTF-8" in lines
    assert r"not saved: new\nline: its name holds a control character (a newline, a tab, ...)" in lines
    assert r"not saved: dir\xfe: a folder, and its name is not valid UTF-8" in lines
    assert r"not saved: dir\xfe/in.txt: its name is not valid UTF-8" in lines


def _tar_of(names: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name in names:
            info = tarfile.TarInfo(os.fsdecode(name))
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "why"), [
    (b"bad\xffutf8.txt", r"'bad\xffutf8.txt' cannot be stored: its name is not valid UTF-8"),
    (b"new\nline.txt", r"'new\nline.txt' cannot be stored: its name holds a control character"),
    (b"x" * 300, "cannot be stored: a part of its name is longer than 255 bytes"),
    (b"/".join([b"d" * 200] * 6), "cannot be stored: its path is 1205 bytes long"),
])
def test_an_upload_tar_holding_a_name_the_server_cannot_store_is_refused_by_name(server, name, why):
    with server.api() as api:
        response = api.put("/uploads/hostile", params={"kind": "dir"}, content=_tar_of([b"fine.txt", name]))
        assert response.status_code == 400, response.text
        assert why in response.json()["detail"]
        assert api.get("/uploads/hostile").status_code == 404  # nothing half-stored


def test_every_name_the_server_stores_can_be_listed_copied_downloaded_and_mounted(cli, worker, server, tmp_path):
    names = ["with space.txt", "ünï cödé.txt", "per%cent.txt", "hash#frag.txt", "q?uery.txt", "back\\slash.txt",
             "colon:name.txt", "-dash.txt", "star*.txt", "quote'\"s.txt", "semi;colon.txt", "tilde~.txt"]
    script = f"import json\nfor n in json.loads({json.dumps(json.dumps(names))}): open(n, 'w').write('content of ' + n)"
    made = cli("run", f"python3 -c {shlex.quote(script)}")
    assert made.returncode == 0, made.stderr
    run = run_id_of(made)

    assert output_paths(server, run) == sorted(names)
    listed = cli("ls", f"runs/{run}", "--json")
    assert sorted(entry["name"] for entry in listed.json()) == sorted(names)
    with server.api() as api:
        for name in names:
            response = api.get(f"/runs/{run}/outputs/{urllib.parse.quote(name, safe='')}")
            assert response.status_code == 200 and response.content == f"content of {name}".encode(), name
    for index, name in enumerate(names):
        copied = cli("cp", f"runs/{run}/{name}", f"copy{index}")
        assert copied.returncode == 0, copied.stderr
        assert (tmp_path / f"copy{index}").read_text() == f"content of {name}"
    mounted = cli("run", "--mount", f"runs/{run}:in", "for f in in/*; do printf '%s=' \"$f\"; cat \"$f\"; echo; done")
    assert mounted.returncode == 0, mounted.stderr
    assert sorted(line for line in mounted.stdout.splitlines() if line.startswith("in/")) == sorted(
        f"in/{name}=content of {name}" for name in names)
    # One file on its own, its name holding ':': resource and path given apart,
    # by --from-file's mapping form and by the API, where nothing is split.
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"mount": [{"resource": f"runs/{run}/colon:name.txt", "path": "one.txt"}], "command": "cat one.txt"}))
    alone = cli("run", "--from-file", "run.yaml")
    assert alone.returncode == 0, alone.stderr
    assert "content of colon:name.txt" in alone.stdout
    with server.api() as api:
        by_api = submit(api, "cat colon:name.txt", mounts=[{"resource": f"runs/{run}/colon:name.txt"}])
        assert wait_final(api, by_api)["status"] == "complete"
        assert "content of colon:name.txt" in log_texts(api, by_api, "stdout")


# --- finding 6: hardlinks and sparse files -------------------------------------------

def test_hardlinks_are_saved_as_their_content(server, worker):
    with server.api() as api:
        run = submit(api, "echo shared > a.txt && ln a.txt b.txt && mkdir sub && ln a.txt sub/c.txt")
        assert wait_final(api, run, timeout=BOUND)["status"] == "complete"
        assert output_paths(api, run) == ["a.txt", "b.txt", "sub/c.txt"]
        for path in ["a.txt", "b.txt", "sub/c.txt"]:
            assert api.get(f"/runs/{run}/outputs/{path}").content == b"shared\n"


# --- outputs staged on the server's own filesystem (a worker that shares its storage) ---

@pytest.mark.parametrize("executor", ["local", "docker"])
def test_a_shared_storage_worker_moves_outputs_in_whole_read_only_and_with_their_hash(
        executor, server, start_worker, docker_env):
    # The Docker executor's working dir is a bind mount of a host folder: moved from there the same way.
    worker = start_worker(server, executor=executor, env=docker_env if executor == "docker" else None)
    with server.api() as api:
        run = submit(api, "head -c 3000000 /dev/urandom > model.bin && stat -c %i model.bin > inode.txt")
        assert wait_final(api, run, timeout=BOUND)["status"] == "complete"
        manifest = {f["path"]: f for f in api.get(f"/runs/{run}/outputs").json()["files"]}
        stored = server.data_dir / "runs" / str(run) / "model.bin"
        assert stored.stat().st_ino == int((stored.parent / "inode.txt").read_text())  # moved, not copied
        data = api.get(f"/runs/{run}/outputs/model.bin").content
        assert manifest["model.bin"]["size"] == len(data) == 3_000_000
        assert manifest["model.bin"]["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
        assert stat.S_IMODE(stored.stat().st_mode) == 0o444 and stat.S_IMODE(stored.parent.stat().st_mode) == 0o555
    assert list((server.data_dir / "tmp").iterdir()) == []
    _cleaned_up(worker)


def test_a_worker_on_another_filesystem_streams_its_outputs_over_http(server, base_env):
    # /dev/shm is a tmpfs: a rename could not carry a file from there into the server's storage.
    work = Path(tempfile.mkdtemp(dir="/dev/shm"))
    worker = WorkerProcess(server=server, work_dir=work / "worker", name="elsewhere", executor="local",
                           env=base_env).start()
    try:
        with server.api() as api:
            # One big file (sent from the file), many small ones (gathered into few writes), empty folders.
            run = submit(api, "head -c 3000000 /dev/urandom > model.bin && mkdir -p empty deep/er && "
                              "for i in $(seq 300); do echo $i > deep/er/s$i.txt; done")
            assert wait_final(api, run, timeout=BOUND)["status"] == "complete"
            files = api.get(f"/runs/{run}/outputs").json()["files"]
        stored = server.data_dir / "runs" / str(run) / "model.bin"
        small = {f"deep/er/s{i}.txt": f"{i}\n".encode() for i in range(1, 301)}
        assert sorted((f["path"], f["size"], f["sha256"]) for f in files) == sorted([
            ("model.bin", 3_000_000, hashlib.sha256(stored.read_bytes()).hexdigest()),
            *((path, len(data), hashlib.sha256(data).hexdigest()) for path, data in small.items())])
        assert all((stored.parent / path).read_bytes() == data for path, data in small.items())
        assert stat.S_IMODE(stored.stat().st_mode) == 0o444 and (stored.parent / "empty").is_dir()
        assert list((server.data_dir / "tmp").iterdir()) == []
        _cleaned_up(worker)
    finally:
        worker.stop()
        remove_tree(work)


@pytest.mark.short_lease
def test_a_worker_killed_mid_move_leaves_no_half_adopted_output_and_its_staging_is_dropped(server, start_worker):
    worker = start_worker(server)
    staging = server.data_dir / "tmp"
    # Small files first (outputs are staged in name order), then one whose hash takes seconds.
    command = "for i in $(seq 20); do echo $i > a-$i.txt; done; truncate -s 6G z.bin"
    with server.api() as api:
        run = submit(api, command)
        wait_until(lambda: any(any(folder.iterdir()) for folder in staging.glob(f"staged-{run}-*")),
                   timeout=BOUND, interval=0.01, what="the worker to stage the first files")
        worker.stop(signal.SIGKILL)
        final = wait_status(api, run, "interrupted", "failed", timeout=BOUND)
        assert final["status"] == "interrupted"
        assert output_paths(api, run) == []
    assert list(staging.glob(f"staged-{run}-*")) == []
    assert not (server.data_dir / "runs" / str(run)).exists()


def test_a_sparse_file_is_saved_at_its_full_length_and_counts_so_against_the_cap(start_server, start_worker):
    server = start_server(env={"CAST_MAX_OUTPUT_BYTES": str(48 * 1024 * 1024)})
    start_worker(server)
    with server.api() as api:
        fits = submit(api, "truncate -s 32M sparse.bin && printf end >> sparse.bin && du -k sparse.bin")
        assert wait_final(api, fits, timeout=BOUND)["status"] == "complete"
        used_kib = int(log_texts(api, fits, "stdout")[0].split()[0])
        assert used_kib < 1024  # sparse on the worker's disk
        files = api.get(f"/runs/{fits}/outputs").json()["files"]
        assert [(f["path"], f["size"]) for f in files] == [("sparse.bin", 32 * 1024 * 1024 + 3)]
        with api.stream("GET", f"/runs/{fits}/outputs/sparse.bin") as response:
            body = b"".join(response.iter_bytes())
        assert body == bytes(32 * 1024 * 1024) + b"end"

        # A terabyte of holes: refused by the worker before any byte is sent.
        too_big = submit(api, "truncate -s 1T huge.bin && echo small > small.txt")
        run = wait_final(api, too_big, timeout=BOUND)
        assert run["status"] == "failed"
        assert run["reason"] == f"outputs not saved: the output of run {too_big} exceeds the limit of {48 << 20} bytes"
        assert output_paths(api, too_big) == []


# --- the property: any hostile tree ---------------------------------------------------

NAME_PARTS = st.sampled_from([
    b"plain", b"with space", b"\xff\xfe", b"new\nline", b"tab\there", b"x" * 255, b"\xc3\xa9t\xc3\xa9",
    b"-dash", b"dot.", b"UPPER",
])
KINDS = ["file", "dir", "link_out_file", "link_out_dir", "link_dangling", "fifo", "socket", "hardlink_host",
         "sparse", "deep"]


@st.composite
def trees(draw) -> list[tuple[bytes, str]]:
    """Entries (relative path as bytes, kind), parents before children, unique paths."""
    entries: list[tuple[bytes, str]] = []
    folders = [b""]
    used: set[bytes] = set()
    for _ in range(draw(st.integers(1, 12))):
        parent = draw(st.sampled_from(folders))
        base = draw(NAME_PARTS) + b"-%d" % len(entries)
        base = base[-255:]  # a component stays within the filesystem's limit
        path = parent + b"/" + base if parent else base
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(KINDS))
        entries.append((path, kind))
        if kind == "dir":
            folders.append(path)
    return entries


def _build(work: Path, canary: Path, entries: list[tuple[bytes, str]]) -> dict[str, str]:
    """Make the tree; the path (as os functions name it) → what it is."""
    made: dict[str, str] = {}
    for raw, kind in entries:
        target = Path(os.fsdecode(bytes(work) + b"/" + raw))
        if kind == "file":
            target.write_bytes(raw)
        elif kind == "dir":
            target.mkdir()
        elif kind == "link_out_file":
            target.symlink_to(canary / "file.txt")
        elif kind == "link_out_dir":
            target.symlink_to(canary / "private")
        elif kind == "link_dangling":
            target.symlink_to(canary / "missing")
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "socket":  # what bind() leaves (whose path length is capped at 108 bytes)
            os.mknod(target, stat.S_IFSOCK | 0o755)
        elif kind == "hardlink_host":
            os.link(canary / "file.txt", target)
        elif kind == "sparse":
            with open(target, "wb") as handle:
                handle.seek(1024 * 1024)
                handle.write(b"end")
        elif kind == "deep":
            target.mkdir()
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
            for _ in range(22):
                os.mkdir("z" * 200, dir_fd=fd)
                child = os.open("z" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
            os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.close(fd)
            made[os.fsdecode(raw) + "/" + "/".join(["z" * 200] * 22) + "/bottom"] = "file"
            kind = "dir"
        made[os.fsdecode(raw)] = kind
    return made


@settings(max_examples=25, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(entries=trees())
@pytest.mark.parametrize("push", ["tar", "staged"])
def test_any_hostile_tree_is_saved_or_named_and_removed_without_touching_the_host(tmp_path_factory, push, entries):
    base = tmp_path_factory.mktemp("tree")
    canary = canary_tree(base / "canary")
    work = base / "work"
    work.mkdir()
    before = snapshot(work)
    made = _build(work, canary, entries)
    canary_before = modes_and_contents(canary)

    lines: list[str] = []
    outputs = Outputs.collect(work, before, [], report=lines.append)
    stored = base / "stored"
    stored.mkdir()
    expected_files = {path for path, kind in made.items()
                      if kind in ("file", "hardlink_host", "sparse") and name_problem(path) is None}
    contents = {path: (work / path).read_bytes() for path in expected_files}
    try:
        if push == "tar":
            saved = storage.extract_tar(io.BytesIO(b"".join(span_bytes(outputs.tar()))), stored,
                                        max_bytes=1 << 30, what="outputs")
        else:  # moved or copied into the server's storage, then checked there as the server does
            staged = outputs.stage(stored, "token")
            saved = storage.verify_staged(stored, {f.path: (f.size, f.sha256) for f in staged.files},
                                          set(staged.folders), max_bytes=1 << 30, what="outputs")
    except BadRequest as refused:
        raise AssertionError(f"the server refused what the worker sent: {refused}") from None

    assert {f.path for f in saved} == expected_files
    for stored_file in saved:
        data = (stored / stored_file.path).read_bytes()
        assert data == contents[stored_file.path]
        assert stored_file.sha256 == hashlib.sha256(data).hexdigest()
    not_saved = {path for path, kind in made.items() if kind != "dir" and path not in expected_files}
    named = "\n".join(lines)
    for path in not_saved:
        assert f"not saved: {printable(path)}" in named, (path, lines)
    assert len(lines) <= len(made)  # each entry named once at most

    remove_tree(work)
    remove_tree(stored)
    assert not work.exists() and not stored.exists()
    assert modes_and_contents(canary) == canary_before
