"""The verbs about files (cli_data) through the real CLI: `cast upload` of a file
and a folder, mounting them in runs, `cast ls` of runs and uploads (and what it
says when there is nothing), `cast cp` of files and folders with their bytes
intact and an honest progress bar, and deleting and retention: `cast rm`,
`cast prune`, `cast du`, `cast upload --replace` and CAST_RETENTION_DAYS."""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess

from tests.client.helpers import assert_one_line_error
from tests.conftest import wait_until
from tests.factories import get_run, submit, wait_final, wait_status


def _tree_digest(root) -> dict[str, str]:
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            digests[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digests


def test_uploads_are_listed_and_mounted(cli, worker, tmp_path):
    (tmp_path / "data.txt").write_text("one\ntwo\n")
    dataset = tmp_path / "dataset"
    (dataset / "nested").mkdir(parents=True)
    (dataset / "a.txt").write_text("alpha\n")
    (dataset / "nested" / "b.bin").write_bytes(os.urandom(3000))

    as_file = cli("upload", "data.txt")
    assert as_file.returncode == 0, as_file
    assert "uploads/data.txt" in as_file.stdout
    as_dir = cli("upload", "dataset", "-n", "ds")
    assert as_dir.returncode == 0, as_dir
    assert "uploads/ds" in as_dir.stdout

    listing = cli("ls", "uploads").stdout.splitlines()
    assert [line.split()[0] for line in listing] == ["data.txt", "ds"]
    assert cli("ls", "uploads/ds").stdout.split() == ["a.txt", "6", "B", "nested/", "2.9", "KB"]
    assert cli("ls", "uploads/ds/nested", "--json").json() == [{"name": "b.bin", "type": "file", "size": 3000}]

    assert cli("ls", "uploads/data.txt").stdout == "data.txt    8 B\n"
    assert cli("cp", "uploads/data.txt", "back.txt").returncode == 0
    assert (tmp_path / "back.txt").read_text() == "one\ntwo\n"
    assert_one_line_error(cli("ls", "uploads/data.txt/inside"), "is a file")

    assert_one_line_error(cli("upload", "data.txt"), "already exists")

    run = cli("run", "-m", "uploads/data.txt", "-m", "uploads/ds:inputs/ds",
              "cat data.txt; cat inputs/ds/a.txt; wc -c < inputs/ds/nested/b.bin; "
              "touch inputs/ds/new 2>/dev/null && echo writable || echo read-only")
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    for expected in ("one", "two", "alpha", "3000", "read-only"):
        assert expected in lines, (expected, lines)
    # Mounts are inputs, not outputs.
    assert cli("ls", "runs/1").stdout == "run 1 saved no outputs (it wrote no files).\n"


def test_cp_copies_files_and_folders_byte_for_byte(cli, worker, tmp_path):
    make = ("mkdir -p out/sub && echo hi > out/a.txt && head -c 200000 /dev/urandom > out/sub/blob.bin "
            "&& printf 'x' > top.txt")
    assert cli("run", make).returncode == 0

    folder = cli("cp", "runs/1/out", "copied")
    assert folder.returncode == 0, folder
    copied = tmp_path / "copied"
    assert sorted(_tree_digest(copied)) == ["a.txt", "sub/blob.bin"]
    assert (copied / "a.txt").read_text() == "hi\n"

    # Check the bytes against a second copy made by a run that mounts the folder.
    check = cli("run", "-m", "runs/1/out", "sha256sum out/sub/blob.bin")
    assert _tree_digest(copied)["sub/blob.bin"] in check.stdout

    # Like `cp -r`: into an existing folder, the folder lands inside it.
    first_copy = _tree_digest(copied)
    into_existing = cli("cp", "runs/1/out", "copied")
    assert into_existing.returncode == 0
    assert _tree_digest(copied / "out") == first_copy

    one_file = cli("cp", "runs/1/out/sub/blob.bin")
    assert one_file.returncode == 0, one_file
    assert (tmp_path / "blob.bin").read_bytes() == (copied / "sub" / "blob.bin").read_bytes()
    renamed = cli("cp", "runs/1/top.txt", "renamed.txt")
    assert renamed.returncode == 0 and (tmp_path / "renamed.txt").read_text() == "x"

    whole_run = cli("cp", "runs/1")
    assert whole_run.returncode == 0, whole_run
    assert sorted(_tree_digest(tmp_path / "1")) == ["out/a.txt", "out/sub/blob.bin", "top.txt"]

    assert_one_line_error(cli("cp", "runs/1/missing.txt"), "no such file or folder")
    assert_one_line_error(cli("ls", "runs/1/missing"), "no such file or folder")
    assert_one_line_error(cli("cp", "runs/99/x"))


def test_cp_of_an_uploaded_folder(cli, worker, tmp_path):
    source = tmp_path / "src"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "f.bin").write_bytes(os.urandom(70000))
    (source / "g.txt").write_text("g\n")
    assert cli("upload", "src").returncode == 0
    assert cli("cp", "uploads/src", "back").returncode == 0
    assert _tree_digest(tmp_path / "back") == _tree_digest(source)
    assert cli("cp", "uploads/src/g.txt", "g-copy.txt").returncode == 0
    assert (tmp_path / "g-copy.txt").read_text() == "g\n"


# --- deleting and retention ---------------------------------------------------------

def _add_user(server, name: str) -> str:
    """A second user (a non-admin) and their token."""
    with server.api() as api:
        return api.post("/users", json={"name": name}).json()["token"]["token"]


def test_rm_frees_the_files_and_keeps_the_record(cli, worker, server, tmp_path):
    assert cli("run", "mkdir out && head -c 50000 /dev/urandom > out/blob && echo hi > a.txt").returncode == 0
    assert cli("run", "-m", "runs/1:in", "cat in/a.txt").returncode == 0  # run 2's lineage names run 1
    stored = server.data_dir / "runs" / "1"
    assert (stored / "out" / "blob").stat().st_size == 50000

    removed = cli("rm", "runs/1")
    assert removed.returncode == 0, removed
    assert removed.stdout == "Deleted runs/1 (freed 48.8 KB); its record stays\n"
    assert not stored.exists()

    # The record stays, shown as deleted.
    info = cli("info", "1", "--json").json()
    assert (info["status"], info["mounted_by"]) == ("complete", [2]) and info["deleted_at"]
    assert {r["id"]: r["deleted_at"] for r in cli("ps", "--json").json()}[1] == info["deleted_at"]
    assert "Deleted:" in cli("info", "1").stdout and "complete, deleted" in cli("ps").stdout
    assert "1/    complete, deleted" in cli("ls", "runs").stdout.splitlines()
    assert_one_line_error(cli("ls", "runs/1"), "run 1's outputs were deleted at ")
    assert_one_line_error(cli("cp", "runs/1/a.txt"), "run 1's outputs were deleted at ")
    again = cli("rm", "runs/1")
    assert again.returncode == 0 and again.stdout.startswith("runs/1 was already deleted at "), again
    assert_one_line_error(cli("run", "-m", "runs/1", "ls"), "mount runs/1: run 1's outputs were deleted at ")

    (tmp_path / "data.txt").write_text("12345")
    assert cli("upload", "data.txt").returncode == 0
    assert cli("rm", "uploads/data.txt").stdout == "Deleted uploads/data.txt (freed 5 B); its record stays\n"
    assert not (server.data_dir / "uploads" / "data.txt").exists()
    assert cli("ls", "uploads").stdout == "data.txt    deleted\n"
    assert_one_line_error(cli("run", "-m", "uploads/data.txt", "ls"), "upload 'data.txt' was deleted at ")
    assert_one_line_error(cli("rm", "runs/1/out"), "not a path inside it")


def test_rm_is_refused_while_a_live_run_mounts_it(cli, worker, server, tmp_path):
    assert cli("run", "echo x > x.txt").returncode == 0
    (tmp_path / "data.txt").write_text("d")
    assert cli("upload", "data.txt").returncode == 0
    live = submit(server, "sleep 120", mounts=[{"resource": "runs/1"}, {"resource": "uploads/data.txt"}])
    wait_status(server, live, "running")

    refused = cli("rm", "runs/1", "uploads/data.txt")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"cast: error: runs/1: runs/1 is mounted by run {live} (running); wait for it to finish or stop it, "
        "or delete it anyway with --force",
        f"cast: error: uploads/data.txt: uploads/data.txt is mounted by run {live} (running); wait for it to "
        "finish or stop it, or delete it anyway with --force",
    ]
    assert_one_line_error(cli("rm", f"runs/{live}"), f"run {live} is running; stop it first (cast stop {live})")
    assert (server.data_dir / "runs" / "1" / "x.txt").exists()

    forced = cli("rm", "--force", "uploads/data.txt")
    assert forced.returncode == 0, forced
    assert not (server.data_dir / "uploads" / "data.txt").exists()

    assert cli("kill", str(live)).returncode == 0
    wait_final(server, live)
    assert cli("rm", "runs/1").returncode == 0
    assert not (server.data_dir / "runs" / "1").exists()

    bob = _add_user(server, "bob")
    assert_one_line_error(cli("rm", "--force", f"runs/{live}", env={"CAST_TOKEN": bob}),
                          "only admins may delete with --force")
    assert_one_line_error(cli("rm", f"runs/{live}", env={"CAST_TOKEN": bob}), f"run {live} not found")


def test_an_upload_is_replaced_only_until_a_run_mounts_it(cli, worker, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("v1")
    assert cli("upload", "data.txt").returncode == 0
    data.write_text("version 2")
    assert_one_line_error(cli("upload", "data.txt"), "already exists; choose another name with -n NAME, "
                                                     "or replace it with --replace")
    replaced = cli("upload", "data.txt", "--replace")
    assert replaced.stdout == "Uploaded uploads/data.txt (9 B)\n", replaced
    assert "version 2" in cli("run", "-m", "uploads/data.txt", "cat data.txt").stdout
    assert_one_line_error(cli("upload", "data.txt", "--replace"),
                          "upload 'data.txt' cannot be replaced: run 1 mounted it; upload under a new name")

    assert cli("rm", "uploads/data.txt").returncode == 0
    assert_one_line_error(cli("upload", "data.txt"), "was deleted, but run 1 mounted it, so its name stays "
                                                     "with it (their lineage names it); upload under a new name")
    # A name no run ever mounted is free again once deleted.
    (tmp_path / "scratch.txt").write_text("s")
    assert cli("upload", "scratch.txt").returncode == 0
    assert cli("rm", "uploads/scratch.txt").returncode == 0
    assert cli("upload", "scratch.txt").returncode == 0
    assert cli("ls", "uploads/scratch.txt").stdout == "scratch.txt    1 B\n"


def test_prune_and_du(cli, worker, server, tmp_path):
    import time

    assert cli("run", "--label", "keep", "echo a > a.txt").returncode == 0  # 2 B
    assert cli("run", "echo bb > b.txt").returncode == 0  # 3 B
    assert cli("run", "echo nothing saved").returncode == 0
    bob = _add_user(server, "bob")
    (tmp_path / "bob.txt").write_text("1234")
    assert cli("upload", "bob.txt", env={"CAST_TOKEN": bob}).returncode == 0

    usage = {u["user"]: u for u in cli("du", "--json").json()}
    assert usage["admin"]["runs"] == [{"id": 1, "status": "complete", "size": 2},
                                      {"id": 2, "status": "complete", "size": 3}]
    assert (usage["admin"]["total"], usage["bob"]["total"], usage["bob"]["uploads_size"]) == (5, 4, 4)
    text = cli("du").stdout.splitlines()
    assert text[0].split() == ["USER", "/", "DATA", "SIZE"]
    assert [line.split() for line in text[1:]] == [
        ["admin", "runs", "5", "B", "+", "uploads", "0", "B", "5", "B"],
        ["runs/1", "complete", "2", "B"], ["runs/2", "complete", "3", "B"],
        ["bob", "runs", "0", "B", "+", "uploads", "4", "B", "4", "B"],
        ["uploads/bob.txt", "upload", "4", "B"],
    ]
    assert [u["user"] for u in cli("du", "--json", "--user", "bob").json()] == ["bob"]
    assert [u["user"] for u in cli("du", "--json", env={"CAST_TOKEN": bob}).json()] == ["bob"]
    assert_one_line_error(cli("du", "--user", "admin", env={"CAST_TOKEN": bob}), "only admins")

    time.sleep(1.5)
    assert cli("prune", "--older-than", "1h").stdout == "No finished run older than 1h holds outputs to free.\n"
    assert cli("prune", "--older-than", "1s", "--dry-run").stdout == "Would free 5 B from 2 runs: runs/1, runs/2\n"
    assert cli("prune", "--older-than", "1s", "--dry-run", "--user", "bob").stdout.startswith("No finished run")
    assert (server.data_dir / "runs" / "2" / "b.txt").exists()
    assert_one_line_error(cli("prune", "--older-than", "soon"), "--older-than 'soon' must be")
    assert_one_line_error(cli("prune", "--older-than", "1s", "--user", "admin", env={"CAST_TOKEN": bob}),
                          "only admins")

    pruned = cli("prune", "--older-than", "1s", "--keep-labeled")
    assert pruned.stdout == "Freed 3 B from 1 run: runs/2\n", pruned
    assert not (server.data_dir / "runs" / "2").exists()
    assert (server.data_dir / "runs" / "1" / "a.txt").exists()
    assert get_run(server, 2)["status"] == "complete" and get_run(server, 2)["deleted_at"]
    assert cli("prune", "--older-than", "1s", "--json").json() == {"runs": [1], "freed": 2, "dry_run": False}
    assert [u["total"] for u in cli("du", "--json").json()] == [0, 4]


def test_retention_frees_old_runs_outputs_on_its_own(start_server, start_worker, cast_for):
    # About 2.6 s: a finished run's outputs are freed a few seconds after it ends.
    server = start_server(env={"CAST_RETENTION_DAYS": "0.00003", "CAST_RETENTION_KEEP_LABELED": "1"})
    start_worker(server)
    cli = cast_for(server)
    assert cli("run", "--label", "keep", "echo a > a.txt").returncode == 0
    assert cli("run", "echo b > b.txt").returncode == 0
    wait_until(lambda: get_run(server, 2)["deleted_at"], timeout=60, what="retention to free run 2")
    assert not (server.data_dir / "runs" / "2").exists()
    assert get_run(server, 2)["status"] == "complete"
    assert get_run(server, 1)["deleted_at"] is None
    assert (server.data_dir / "runs" / "1" / "a.txt").exists()


# --- empty results and progress -----------------------------------------------------

def test_empty_results_say_why(cli, worker, server, tmp_path):
    assert cli("ls", "uploads").stdout == "No uploads.\n"
    killed = submit(server, "sleep 120; echo late > late.txt")
    wait_status(server, killed, "running")
    assert cli("ls", f"runs/{killed}").stdout == f"run {killed} has no outputs yet (it is running).\n"
    assert cli("kill", str(killed)).returncode == 0
    wait_final(server, killed)
    assert cli("ls", f"runs/{killed}").stdout == f"run {killed} saved no outputs (it was killed).\n"
    assert cli("ls", f"runs/{killed}", "--json").stdout == "[]\n"
    assert_one_line_error(cli("cp", f"runs/{killed}"), f"run {killed} saved no outputs (it was killed)")

    failed = cli("run", "exit 3")
    assert failed.returncode == 3
    assert cli("ls", "runs/2").stdout == "run 2 saved no outputs (it failed: exit code 3).\n"

    (tmp_path / "empty").mkdir()
    assert cli("upload", "empty").returncode == 0
    assert cli("ls", "uploads/empty").stdout == "uploads/empty is empty.\n"


def test_cp_progress_counts_the_folders_bytes(cli, worker, server, base_env, tmp_path):
    assert cli("run", "mkdir out && printf '%035d' 0 > out/f.txt").returncode == 0
    # The bar is drawn only on a terminal: give cp one for stderr.
    controller, terminal = pty.openpty()
    env = {**base_env, "CAST_SERVER_URL": server.url, "CAST_TOKEN": server.admin_token}
    proc = subprocess.run(["cast", "cp", "runs/1/out", "copied"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=terminal, text=True, timeout=120)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert proc.returncode == 0, drawn
    bar = drawn.decode().split("\x1b[2K")[-1]  # the last drawing of the line
    assert "35 B / 35 B" in bar and "100%" in bar, drawn
    assert (tmp_path / "copied" / "f.txt").read_text() == "0" * 35
