"""Helpers for the web viewer tests: watching the page, signing in through it
and saving screenshots (runs come from tests/factories.py).

Screenshots go to artifacts/screenshots/ on every run; with
CAST_UPDATE_DOC_SCREENSHOTS=1 the ones the docs show are also copied to
docs/images/.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError

from tests.conftest import REPO_ROOT

SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
DOC_IMAGES = REPO_ROOT / "docs" / "images"


@dataclass
class PageWatch:
    """What a page did that it never should: open a dialog, throw an error.
    Its failed requests and console errors are kept too, not asserted (a
    navigation aborts fetches on purpose), to say why a page stayed blank."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    trouble: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        def on_dialog(dialog):
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("requestfailed", lambda request: self.trouble.append(
            f"{request.method} {request.url} failed: {request.failure}"))
        page.on("response", lambda response: response.status >= 400 and self.trouble.append(
            f"{response.request.method} {response.url}: HTTP {response.status}"))
        page.on("console", lambda message: message.type == "error" and self.trouble.append(
            f"console: {message.text}"))

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"the page opened dialogs: {self.dialogs}"
        assert self.errors == [], f"the page threw errors: {self.errors}"


# What Chromium says when it drops requests because the host's addresses
# changed: here, another test's network namespace or container coming up.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
_VIEWER_FILES = frozenset({"document", "script", "stylesheet"})


def load(page, url: str | None = None, tries: int = 3) -> None:
    """`page.goto(url)`, or a reload without one; loaded again when Chromium
    dropped one of the viewer's own files for a network change, or the
    viewer could not load them all (CI saw modules dropped so: a viewer
    without all its modules never starts, and shows boot.js's card). The card is looked for as well as the
    failed requests because CI once saw those reported only after the
    navigation had returned. A failure that stays for every try is the
    test's to see."""
    for attempt in range(tries):
        dropped: list[str] = []

        def on_failed(request):
            if request.resource_type in _VIEWER_FILES and request.failure == NETWORK_CHANGED:
                dropped.append(request.url)

        page.on("requestfailed", on_failed)
        try:
            # Going to the same address with a fragment again would not load it.
            again = attempt > 0 and page.url == url
            page.goto(url) if url is not None and not again else page.reload()
        except PlaywrightError as error:
            if NETWORK_CHANGED not in str(error):
                raise
            dropped.append(str(error))
        finally:
            page.remove_listener("requestfailed", on_failed)
        if page.locator(".boot-error").count():
            dropped.append(page.locator(".boot-error").inner_text())
        if not dropped:
            return
    raise AssertionError(f"the viewer could not load all of its files in {tries} tries: {dropped}")


def sign_in(page, server, route: str = "#/runs") -> None:
    """Open the viewer and enter the admin token in its login form."""
    load(page, f"{server.url}/{route}")
    page.fill("#token", server.admin_token)
    page.click("form.login button[type=submit]")
    page.wait_for_selector("form.login", state="detached")


def screenshot(page, name: str, *, for_docs: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if for_docs and os.environ.get("CAST_UPDATE_DOC_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / f"{name}.png")
    return path
