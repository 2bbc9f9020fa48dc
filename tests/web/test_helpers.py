"""The web tests' own `load` helper: a viewer file dropped once is loaded
again, one dropped every time fails the test with what was seen."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.helpers import load


def test_a_viewer_file_dropped_once_is_loaded_again(server, page):
    aborted = []

    def drop_once(route):
        if aborted:
            route.continue_()
        else:
            aborted.append(route.request.url)
            route.abort()

    page.route("**/static/util.js", drop_once)
    load(page, f"{server.url}/#/runs")
    assert len(aborted) == 1
    expect(page.locator("form.login")).to_be_visible()
    expect(page.locator(".boot-error")).to_have_count(0)


def test_a_viewer_file_dropped_every_time_fails_with_the_card(server, page):
    page.route("**/static/util.js", lambda route: route.abort())
    with pytest.raises(AssertionError, match="could not load all of its files"):
        load(page, f"{server.url}/#/runs", tries=2)
