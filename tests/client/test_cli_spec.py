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

    again = cli("run", "python train.py", cwd=repo / "data")  # from a subfolder: the same repository
    assert again.returncode == 0, again
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
