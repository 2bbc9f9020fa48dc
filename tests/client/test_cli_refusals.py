"""Every refusal is one `cast: error:` line and a non-zero exit, never a
traceback: bad mounts (checked by the CLI and by the server), bad flags,
unknown runs, a wrong token, an unreachable server."""

from __future__ import annotations

from tests.client.helpers import assert_one_line_error
from tests.factories import run_id_of, wait_status
from tests.conftest import free_port


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
        (["--timeout", "soon"], "--timeout"),
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


def test_unknown_runs_tokens_and_servers(cli, server, tmp_path):
    assert_one_line_error(cli("info", "42"), "42")
    assert_one_line_error(cli("logs", "42"), "42")
    assert_one_line_error(cli("label", "42", "x"))
    assert_one_line_error(cli("kill", "42"), "run 42")
    assert_one_line_error(cli("upload", "does-not-exist"), "does-not-exist")
    assert_one_line_error(cli("ls", "elsewhere/1"), "runs/N")
    assert_one_line_error(cli("ps", "--status", "sleeping"), "sleeping")

    assert_one_line_error(cli("ps", env={"CAST_TOKEN": "wrong"}))
    assert_one_line_error(cli("ps", env={"CAST_TOKEN": server.worker_token}))
    nobody = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(cli("ps", env={"CAST_SERVER_URL": nobody}), nobody, "cannot reach")
    assert_one_line_error(cli("run", "true", env={"CAST_SERVER_URL": nobody}), "cannot reach")
    assert_one_line_error(cli("ps", env={"CAST_TOKEN": ""}), "CAST_TOKEN")
