"""The admin verbs (cli_admin): the refusals the CLI makes itself before
handing over or calling the server. (The embedded server that `cast up` and
`cast down` run and stop: tests/client/test_embedded.py. Users and tokens end
to end: tests/reliability/test_access.py.)"""

from __future__ import annotations

from tests.client.helpers import assert_one_line_error


def test_admin_refusals(cli, server):
    tokens = cli("token", "ls", "--json").json()
    for args in (["cache"], ["cache", "purge"]):
        refused = cli(*args)
        assert_one_line_error(refused, "cast cache needs ls or prune")
        assert refused.returncode == 2
    both = cli("token", "create", "--worker", "--user", "admin")
    assert_one_line_error(both, "--worker tokens belong to no user")
    assert both.returncode == 2
    assert_one_line_error(cli("token", "revoke", "999"), "token 999")
    assert cli("token", "ls", "--json").json() == tokens  # nothing was created
