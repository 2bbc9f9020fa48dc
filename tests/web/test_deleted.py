"""The viewer shows a run whose outputs were deleted (`cast rm`, prune) as such:
a "deleted" badge beside its status in the runs list and on its page, whose
outputs section says when, while its record (status, log, lineage) stays."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.factories import create_run, wait_status
from tests.web.helpers import load, sign_in


def test_a_deleted_runs_badge_and_outputs(server, worker, page):
    kept = create_run(server, "echo kept > kept.txt")
    freed = create_run(server, "echo freed > freed.txt")
    wait_status(server, kept["id"], "complete")
    wait_status(server, freed["id"], "complete")
    with server.api() as api:
        response = api.delete(f"/runs/{freed['id']}/outputs")
        assert response.status_code == 200, response.text

    sign_in(page, server)
    freed_row = page.locator(f'tr[data-run-id="{freed["id"]}"]')
    expect(freed_row.locator(".badge.deleted")).to_have_text("deleted")
    expect(freed_row.locator('.badge[data-status="complete"]')).to_be_visible()
    expect(page.locator(f'tr[data-run-id="{kept["id"]}"] .badge.deleted')).to_have_count(0)

    load(page, f"{server.url}/#/runs/{freed['id']}")
    expect(page.locator("#run-status .badge.deleted")).to_be_visible()
    expect(page.locator(".outputs")).to_contain_text(f"run {freed['id']}'s outputs were deleted at ")
    expect(page.locator("#run-status")).to_contain_text("complete")
