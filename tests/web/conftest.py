"""Browser fixtures for the web viewer tests: Debian's Chromium driven by
playwright (never a downloaded browser), a fresh browser context per test,
and a check that no test's page opened a dialog or threw a script error."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.web.helpers import PageWatch

CHROMIUM = "/usr/bin/chromium"

# page.set_default_timeout does not reach expect(), whose own default is 5 s:
# a busy CI machine drew a 61-chart page in more than that. Both guard against
# hangs only.
expect.set_options(timeout=60_000)


@contextmanager
def chromium():
    """Debian's Chromium under playwright until the block ends. While it is open,
    playwright's sync API keeps an asyncio loop running in this thread, so every
    `asyncio.run` in a later test fails, and so does another module's playwright:
    each module opens its own and closes it when it ends, whichever modules
    share a process (scripts/test.sh runs files in parallel processes)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/setup.sh --system)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def _open_page(browser, watch: PageWatch, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)  # a guard against hangs, generous for a busy machine
    watch.attach(page)
    return page


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@contextmanager
def _watched_page(browser, watch: PageWatch, width: int, height: int):
    page = _open_page(browser, watch, width, height)
    yield page
    page.context.close()
    if watch.trouble:  # shown by pytest only when the test failed
        print("the pages' failed requests and console errors:", *watch.trouble, sep="\n  ")
    watch.assert_clean()


@pytest.fixture
def page(browser, watch):
    """A desktop-sized window."""
    with _watched_page(browser, watch, 1280, 900) as page:
        yield page


@pytest.fixture
def second_page(browser, watch):
    """Another desktop-sized window in a browser context of its own: a second browser."""
    with _watched_page(browser, watch, 1280, 900) as page:
        yield page


@pytest.fixture
def narrow_page(browser, watch):
    """A phone-sized window."""
    with _watched_page(browser, watch, 390, 844) as page:
        yield page
