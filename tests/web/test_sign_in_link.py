"""`cast web`'s one-time sign-in link in a real browser (Debian's Chromium):
it signs a fresh browser in once (the runs list shows, the link leaves the
address bar), a second use and an expired link are refused on the page."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from sqlalchemy import create_engine, text

from tests.factories import create_run
from tests.web.helpers import load


def _link(cli) -> str:
    result = cli("web", "--no-open")
    assert result.returncode == 0, result.stderr
    return re.search(r"^Sign in: (\S+)$", result.stdout, re.M).group(1)


def test_a_sign_in_link_works_once(server, cli, page, second_page):
    create_run(server, "echo signed-in-marker")  # no worker: it stays queued, listed
    link = _link(cli)
    assert link.startswith(f"{server.url}/#sign-in=cast_s_")

    load(page, link)
    expect(page.locator("table.runs")).to_contain_text("signed-in-marker")
    expect(page.locator("form.login")).to_have_count(0)
    assert "sign-in" not in page.url  # the spent secret left the address bar
    assert page.evaluate("localStorage.getItem('cast.token')").startswith("cast_u_")

    load(second_page, link)
    expect(second_page.locator(".login-error")).to_contain_text("this sign-in link was already used")
    expect(second_page.locator("table.runs")).to_have_count(0)


def test_an_expired_sign_in_link_is_refused_on_the_page(server, cli, page):
    link = _link(cli)
    engine = create_engine(server.env.get("CAST_DATABASE_URL", f"sqlite:///{server.data_dir / 'cast.db'}"))
    try:
        with engine.begin() as db:  # the server's own database, SQLite or PostgreSQL
            db.execute(text("UPDATE tokens SET expires_at = '2000-01-01 00:00:00' WHERE kind = 'sign-in'"))
    finally:
        engine.dispose()
    load(page, link)
    expect(page.locator(".login-error")).to_contain_text("this sign-in link expired; run `cast web` for a new one")
    expect(page.locator("form.login")).to_be_visible()
