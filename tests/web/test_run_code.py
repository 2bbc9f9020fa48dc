"""The run page's Code facts for a run of local code: the commit, branch and
uncommitted changes the client's repository was on, and the folder the
command started in."""

from __future__ import annotations

import hashlib

from playwright.sync_api import expect

from tests.factories import create_run, wait_status
from tests.server.conftest import make_tar
from tests.web.helpers import sign_in


def test_the_run_page_shows_the_commit_branch_changes_and_workdir_of_local_code(server, worker, page):
    bundle = make_tar({"sub/s.txt": b"here\n"})
    key = hashlib.sha256(bundle).hexdigest()
    with server.api() as api:
        assert api.put(f"/code/{key}", content=bundle).status_code == 201
    sha = "1a2b3c4d" * 5
    run = create_run(server, "cat s.txt", code_bundle=key, commit_sha=sha, branch="main", dirty=True, workdir="sub")
    wait_status(server, run["id"], "complete")

    sign_in(page, server, route=f"#/runs/{run['id']}")
    facts = page.locator(".spec-grid")
    expect(facts).to_contain_text(f"Commit{sha}")
    expect(facts).to_contain_text("Branchmain")
    expect(facts).to_contain_text("Uncommitted changesyes (the bundle holds them)")
    expect(facts).to_contain_text("Starts insub/")
