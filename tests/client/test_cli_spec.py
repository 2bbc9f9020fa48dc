"""What `cast run` asks for (cli_spec): where a run's code comes from (a git
URL pinned to the commit it resolved to when submitted, or the local
repository sent as a bundle with its uncommitted changes, and not sent again),
`--from-file` with flags overriding it, and the refusals of bad flags and
mounts, each one `cast: error:` line, with nothing created."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.client.helpers import assert_one_line_error
from tests.factories import get_run, log_texts, run_id_of, wait_status

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(repo: Path, *args: str) -> str:
    import os

    result = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV},
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def make_repo(path: Path, version: str) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text(f"print('version {version}')\n")
    (path / "data").mkdir()
    (path / "data" / "keep.txt").write_text("kept\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", version)
    return path


def test_git_url_is_pinned_to_the_commit_resolved_at_submission(cli, server, start_worker, tmp_path):
    repo = make_repo(tmp_path / "repo", "1")
    first_sha = git(repo, "rev-parse", "HEAD")
    pinned = cli("run", "-d", "--json", "--github-url", f"file://{repo}", "--commit-ref", "main", "python train.py")
    assert pinned.returncode == 0, pinned
    assert pinned.json()["spec"]["commit_sha"] == first_sha

    # The branch moves on before any worker runs the first run.
    (repo / "train.py").write_text("print('version 2')\n")
    git(repo, "commit", "-q", "-am", "2")
    second_sha = git(repo, "rev-parse", "HEAD")
    relative = cli("run", "-d", "--json", "--git-url", "repo", "python train.py")  # a local path, default ref
    assert relative.returncode == 0, relative
    assert relative.json()["spec"]["git_url"] == str(repo)
    assert relative.json()["spec"]["commit_sha"] == second_sha

    start_worker(server)
    wait_status(server, 1, "complete")
    wait_status(server, 2, "complete")
    assert "version 1" in log_texts(server, 1, "stdout") and "version 2" not in log_texts(server, 1, "stdout")
    assert "version 2" in log_texts(server, 2, "stdout")

    unknown_ref = cli("run", "--github-url", f"file://{repo}", "--commit-ref", "no-such-branch", "true")
    assert_one_line_error(unknown_ref, "no-such-branch")
    not_a_repo = cli("run", "--github-url", str(tmp_path / "nowhere"), "true")
    assert_one_line_error(not_a_repo)


def test_local_repo_is_sent_with_uncommitted_changes_once(cli, worker, tmp_path):
    repo = make_repo(tmp_path / "proj", "1")
    sha = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text("print('version 1, edited')\n")  # uncommitted change
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "untracked.txt").write_text("not sent\n")

    first = cli("run", "python train.py; ls; cat data/keep.txt", cwd=repo)
    assert first.returncode == 0, first
    assert f"Sending the code of proj at {sha[:12]}, with uncommitted changes" in first.stderr
    output = first.stdout.splitlines()
    assert "version 1, edited" in output and "staged.txt" in output and "kept" in output
    assert "untracked.txt" not in output

    again = cli("run", "python ../train.py", cwd=repo / "data")  # from a subfolder: the same repository
    assert again.returncode == 0, again
    assert "Running in data/" in again.stderr
    assert f"The code of proj at {sha[:12]}, with uncommitted changes is already on the server" in again.stderr
    assert get_run(worker.server, 2)["spec"]["code_bundle"] == get_run(worker.server, 1)["spec"]["code_bundle"]

    git(repo, "commit", "-q", "-am", "2")
    clean = cli("run", "python train.py", cwd=repo)
    new_sha = git(repo, "rev-parse", "HEAD")
    assert f"Sending the code of proj at {new_sha[:12]}\n" in clean.stderr
    assert "version 1, edited" in clean.stdout

    outside = cli("run", "ls | wc -l")  # tmp_path is not in a repository: an empty folder
    assert "Sending" not in outside.stderr and "code" not in outside.stderr
    assert get_run(worker.server, 4)["spec"]["code_bundle"] is None


def test_from_file_options_with_flags_overriding(cli, worker, tmp_path):
    (tmp_path / "run.yaml").write_text(
        "command: echo \"$GREETING $SEED\"\n"
        "env: {GREETING: hi, SEED: '1'}\n"
        "labels: [from-yaml]\n"
        "timeout: 5m\n"
        "machine-type: cpu\n"
    )
    result = cli("run", "--from-file", "run.yaml", "-e", "SEED=2")
    assert result.returncode == 0, result
    assert "hi 2" in result.stdout.splitlines()
    spec = get_run(worker.server, 1)["spec"]
    assert spec["env"] == {"GREETING": "hi", "SEED": "2"} and spec["timeout"] == 300
    assert get_run(worker.server, 1)["labels"] == ["from-yaml"]

    overridden = cli("run", "--from-file", "run.yaml", "--label", "flag", "echo replaced")
    assert "replaced" in overridden.stdout.splitlines()
    assert get_run(worker.server, 2)["labels"] == ["flag"]

    (tmp_path / "bad.yaml").write_text("comand: true\n")
    assert_one_line_error(cli("run", "--from-file", "bad.yaml"), "unknown key 'comand'")
    (tmp_path / "broken.yaml").write_text("command: [unclosed\n")
    assert_one_line_error(cli("run", "--from-file", "broken.yaml"), "not valid YAML")


def test_mount_refusals(cli, worker):
    assert cli("run", "echo x > f.txt").returncode == 0
    running = run_id_of(cli("run", "-d", "sleep 60"))
    wait_status(worker.server, running, "running")
    try:
        refusals = {
            "runs/99/f.txt": ["99"],  # unknown run (server)
            f"runs/{running}": [str(running)],  # not finished (server)
            "runs/1/nope.txt": ["nope.txt"],  # missing path (server)
            "runs/1/../../../etc": ["'..'"],  # escape
            "/etc/passwd": ["absolute"],
            "uploads/none": ["none"],  # unknown upload (server)
        }
        for mount, needles in refusals.items():
            assert_one_line_error(cli("run", "-m", mount, "true"), *needles)
        assert_one_line_error(cli("run", "-m", "runs/1/f.txt:x", "-m", "runs/1:x", "true"), "two mounts on one path")
        assert_one_line_error(cli("run", "-m", "runs/1/f.txt:a", "-m", "runs/1:a/b", "true"), "overlap")
        # Nothing was created by the refused submissions.
        assert [r["id"] for r in cli("ps", "--json").json()] == [running, 1]
    finally:
        cli("kill", str(running))


def test_flag_refusals(cli, server):
    cases = [
        (["-t", "tpu"], "machine type"),
        (["-t", "gpu:99"], "between 1 and 16"),
        (["-e", "NOVALUE"], "NAME=VALUE"),
        (["-e", "1BAD=x"], "not valid"),
        (["--pip", "tqdm; rm -rf /"], "not a package requirement"),
        (["--pip", "--index-url=http://evil"], "not a package requirement"),
        (["--apt", "bad pkg"], "Debian package"),
        (["--label", "no spaces"], "label"),
        (["--timeout", "soon"], "--timeout 'soon' must be seconds"),
        (["--timeout", "0"], "--timeout '0' must be more than zero"),
        (["--commit-ref", "main"], "--commit-ref needs --github-url"),
        (["--retries", "20"], "between 0 and 10"),
        (["--pip-req", "missing.txt"], "missing.txt"),
    ]
    for flags, needle in cases:
        result = cli("run", *flags, "true")
        assert_one_line_error(result, needle)
        assert result.returncode == 2
    assert_one_line_error(cli("run"), "no command")
    assert_one_line_error(cli("run", "-d", "--bogus", "true"), "--bogus")
    assert_one_line_error(cli("nonsense"), "nonsense")
    assert cli("ps", "--json").json() == []


def test_options_after_the_command_are_refused_with_a_hint(cli, worker):
    hint = "put cast's options before it, or use -- to pass it to your command"
    for words, option in ((["--pip", "tqdm"], "--pip"), (["--pip=tqdm"], "--pip"), (["-e", "A=1"], "-e"),
                          (["-d"], "-d"), (["--idempotent"], "--idempotent")):
        refused = cli("run", "python -c 'import tqdm'", *words)
        assert_one_line_error(refused, f"option {option} after the command; {hint}")
        assert refused.returncode == 2
    assert_one_line_error(cli("run", "echo", "x", "--workdir", "sub"), "option --workdir after the command")
    assert cli("ps", "--json").json() == []

    # After `--` (before the command, or after its first words) every word is the command's.
    passed = cli("run", "-e", "A=1", "--", "echo", "--pip", "tqdm", "-d")
    assert passed.returncode == 0, passed
    assert "--pip tqdm -d" in passed.stdout.splitlines()
    literal = cli("run", "echo", "x", "--", "--pip")
    assert literal.returncode == 0, literal
    assert "x -- --pip" in literal.stdout.splitlines()
    # A word that is not one of cast's options still belongs to the command, as before.
    unquoted = cli("run", "echo", "train", "--lr", "3")
    assert unquoted.returncode == 0 and "train --lr 3" in unquoted.stdout.splitlines()
    assert "(use -- to pass it to your command)" in " ".join(cli("run", "--help").stdout.split())


def test_a_run_starts_in_the_subfolder_it_was_launched_from(cli, worker, tmp_path):
    repo = make_repo(tmp_path / "proj", "1")
    (repo / "sub").mkdir()
    (repo / "sub" / "s.py").write_text("import os; print('in', os.path.basename(os.getcwd()))\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "sub")

    below = cli("run", "python s.py", cwd=repo / "sub")
    assert below.returncode == 0, below
    assert "Running in sub/" in below.stderr and "in sub" in below.stdout.splitlines()
    assert get_run(worker.server, 1)["spec"]["workdir"] == "sub"

    at_root = cli("run", "--workdir", ".", "python sub/s.py && cat train.py", cwd=repo / "sub")
    assert at_root.returncode == 0, at_root
    assert "Running in" not in at_root.stderr and "print('version 1')" in at_root.stdout
    chosen = cli("run", "--workdir", "data/", "cat keep.txt", cwd=repo)
    assert chosen.returncode == 0 and "kept" in chosen.stdout.splitlines()
    assert "Running in data/" in chosen.stderr
    from_git = cli("run", "--github-url", str(repo), "--workdir", "sub", "python s.py")
    assert from_git.returncode == 0 and "in sub" in from_git.stdout.splitlines()

    # A folder that holds no tracked file is not in the code sent: the run fails saying so.
    (repo / "scratch").mkdir()
    missing = cli("run", "true", cwd=repo / "scratch")
    assert missing.returncode == 1, missing
    failed = get_run(worker.server, run_id_of(missing))
    assert failed["status"] == "mount_failed"
    assert failed["reason"] == "workdir 'scratch' is not a folder of the run's code"
    assert "workdir 'scratch' is not a folder of the run's code" in missing.stdout
    assert_one_line_error(cli("run", "--workdir", "../up", "true", cwd=repo), "workdir '../up' escapes its root")
    assert_one_line_error(cli("run", "--workdir", "/etc", "true", cwd=repo), "must be relative")


def test_local_code_records_its_commit_branch_and_uncommitted_changes(cli, worker, tmp_path):
    repo = make_repo(tmp_path / "proj", "1")
    sha = git(repo, "rev-parse", "HEAD")
    clean = cli("run", "-d", "--json", "python train.py", cwd=repo)
    assert clean.returncode == 0, clean
    spec = clean.json()["spec"]
    assert (spec["commit_sha"], spec["branch"], spec["dirty"]) == (sha, "main", False)

    (repo / "train.py").write_text("print('edited')\n")
    dirty = cli("run", "-d", "--json", "python train.py", cwd=repo).json()
    assert (dirty["spec"]["commit_sha"], dirty["spec"]["branch"], dirty["spec"]["dirty"]) == (sha, "main", True)
    wait_status(worker.server, dirty["id"], "complete")
    info = cli("info", str(dirty["id"]))
    digest = dirty["spec"]["code_digest"]
    code_line = next(line for line in info.stdout.splitlines() if line.startswith("Code:"))
    assert code_line.split(None, 1)[1] == f"bundle {digest[:12]}… from commit {sha[:7]} on main (uncommitted changes)"
    shown = cli("info", str(dirty["id"]), "--json").json()["spec"]
    assert (shown["commit_sha"], shown["branch"], shown["dirty"]) == (sha, "main", True)

    git(repo, "checkout", "-q", "--", "train.py")
    git(repo, "checkout", "-q", "--detach")
    detached = cli("run", "-d", "--json", "true", cwd=repo).json()["spec"]
    assert (detached["commit_sha"], detached["branch"], detached["dirty"]) == (sha, None, False)
