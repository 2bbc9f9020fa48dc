"""cli.main's error reporting: every failure is one `cast: error:` line and a
non-zero exit, never a traceback: unknown runs and uploads, bad resources and
statuses, a wrong token, an unreachable server."""

from __future__ import annotations

from tests.client.helpers import assert_one_line_error
from tests.conftest import free_port


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
