"""The web viewer in Debian's Firefox ESR, headless, against a real control
plane and a real local worker: sign-in, the runs page, a run's live log, and
markup in logs shown as text.

playwright cannot drive a stock Firefox (it needs its own patched build) and
no geckodriver binary can be installed here, so the test speaks the W3C
WebDriver BiDi protocol that Firefox itself serves on
`--remote-debugging-port`, over a loopback websocket. Clicks and typing are
real input actions, not synthetic DOM events."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.factories import create_run, wait_status
from tests.web.helpers import SCREENSHOTS

FIREFOX = Path("/usr/bin/firefox-esr")
LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


class FirefoxError(AssertionError):
    pass


class Firefox:
    """One headless Firefox with one tab, driven over WebDriver BiDi. It
    records what the page should never do: open a dialog, throw an error."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        from websockets.sync.client import connect

        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        # Answers that arrived while a nested command (a dialog being
        # dismissed from inside an event) was waiting for its own.
        self._answers: dict[int, dict] = {}
        self._closing = contextlib.ExitStack()
        self._process = subprocess.Popen(
            [str(FIREFOX), "--headless", "--no-remote", "--profile", str(profile),
             "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._stderr: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._socket = self._closing.enter_context(
            connect(f"{self._wait_for_address()}/session", max_size=None, open_timeout=30))
        self.command("session.new", capabilities={"alwaysMatch": {"unhandledPromptBehavior": {"default": "ignore"}}})
        self.command("session.subscribe", events=["browsingContext.userPromptOpened", "log.entryAdded"])
        self.context = self.command("browsingContext.getTree")["contexts"][0]["context"]
        self.command("browsingContext.setViewport", context=self.context,
                     viewport={"width": width, "height": height})

    def _drain_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr.put(line)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self._stderr.get(timeout=0.5)
            except queue.Empty:
                if self._process.poll() is not None:
                    break
                continue
            seen.append(line)
            if match := LISTENING.search(line):
                return match.group(1)
        raise FirefoxError("Firefox did not start its WebDriver BiDi server:\n" + "".join(seen[-20:]))

    def command(self, method: str, **params) -> dict:
        command_id = next(self._ids)
        self._socket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while command_id not in self._answers:
            message = json.loads(self._socket.recv(timeout=60))
            if message.get("type") == "event":
                self._record(message)
            else:
                self._answers[message["id"]] = message
        answer = self._answers.pop(command_id)
        if answer["type"] == "error":
            raise FirefoxError(f"{method}: {answer['error']}: {answer.get('message')}")
        return answer["result"]

    def _record(self, event: dict) -> None:
        params = event["params"]
        if event["method"] == "browsingContext.userPromptOpened":
            self.dialogs.append(f"{params['type']}: {params['message']}")
            self.command("browsingContext.handleUserPrompt", context=params["context"], accept=False)
        elif event["method"] == "log.entryAdded" and params["type"] == "javascript":
            self.errors.append(params.get("text", ""))

    def close(self) -> None:
        try:
            self.command("browser.close")
        except Exception:  # noqa: BLE001 - the browser may close the socket before answering
            pass
        self._closing.close()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def goto(self, url: str) -> None:
        self.command("browsingContext.navigate", context=self.context, url=url, wait="complete")

    def _evaluate(self, expression: str) -> dict:
        result = self.command("script.evaluate", expression=expression, target={"context": self.context},
                              awaitPromise=True)
        if result["type"] == "exception":
            raise FirefoxError(f"{expression}: {result['exceptionDetails']['text']}")
        return result["result"]

    def js(self, expression: str):
        """The value of a JavaScript expression, through JSON."""
        value = self._evaluate(f"(async () => JSON.stringify(await ({expression})))()")
        return json.loads(value["value"]) if value["type"] == "string" else None

    def wait_for(self, expression: str, timeout: float = 120, what: str | None = None):
        return wait_until(lambda: self.js(expression), timeout=timeout, interval=0.1, what=what or expression)

    def _element(self, selector: str) -> dict:
        self.wait_for(f"document.querySelector({json.dumps(selector)}) !== null", what=selector)
        return self._evaluate(f"document.querySelector({json.dumps(selector)})")

    def click(self, selector: str) -> None:
        element = self._element(selector)
        self.command("input.performActions", context=self.context, actions=[{
            "type": "pointer", "id": "mouse", "actions": [
                {"type": "pointerMove", "x": 0, "y": 0,
                 "origin": {"type": "element", "element": {"sharedId": element["sharedId"]}}},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0}]}])

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        keys = [{"type": kind, "value": char} for char in text for kind in ("keyDown", "keyUp")]
        self.command("input.performActions", context=self.context,
                     actions=[{"type": "key", "id": "keyboard", "actions": keys}])

    def screenshot(self, name: str) -> Path:
        data = self.command("browsingContext.captureScreenshot", context=self.context, origin="document")["data"]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture
def firefox(tmp_path):
    if not FIREFOX.exists():
        pytest.fail(f"{FIREFOX} is missing: install Debian's firefox-esr package (scripts/setup.sh --system)")
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        pytest.fail("the websockets package is missing: pip install -e '.[test]'")
    profile = tmp_path / "firefox-profile"
    profile.mkdir()
    browser = Firefox(profile)
    yield browser
    browser.close()
    assert browser.dialogs == [], f"the page opened dialogs: {browser.dialogs}"
    assert browser.errors == [], f"the page threw errors: {browser.errors}"


LINE_TEXTS = "[...document.querySelectorAll('.log .line')].map((line) => line.textContent)"


def wait_for_line(firefox: Firefox, text: str) -> None:
    firefox.wait_for(f"{LINE_TEXTS}.includes({json.dumps(text)})", what=f"log line {text!r}")


def test_firefox_signs_in_lists_runs_follows_a_live_log_and_shows_markup_as_text(server, worker, firefox):
    markup = create_run(server, "echo '<script>alert(1)</script>'; echo '<img src=x onerror=alert(1)>'")
    wait_status(server, markup["id"], "complete")
    ticking = create_run(server, 'for i in $(seq 1 100); do echo "tick $i"; sleep 0.2; done')

    # Nothing without the token; the sign-in form takes it.
    firefox.goto(f"{server.url}/#/runs")
    firefox.wait_for("document.querySelector('form.login') !== null")
    assert "onerror" not in firefox.js("document.body.innerText")
    firefox.type("#token", server.admin_token)
    firefox.click("form.login button[type=submit]")
    firefox.wait_for("document.querySelector('form.login') === null")

    # The runs page lists both runs; the ticking one's row leads to its page.
    row = f'tr[data-run-id="{ticking["id"]}"]'
    firefox.wait_for(f"document.querySelector('{row} td.command')?.textContent.includes('tick')")
    firefox.wait_for(f"document.querySelector('tr[data-run-id=\"{markup['id']}\"]') !== null")
    firefox.js("window.notReloaded = true")
    firefox.click(f"{row} a.run-link")
    firefox.wait_for(f"document.querySelector('.run-head h1')?.textContent === 'Run #{ticking['id']}'")

    # Lines keep arriving while the page stays as it is (no reload).
    for tick in (3, 5, 8):
        wait_for_line(firefox, f"tick {tick}")
    assert firefox.js("window.notReloaded") is True
    assert firefox.js("document.querySelector('.log-state').textContent") == "live"
    assert firefox.js("document.querySelector('#run-status .badge').dataset.status") == "running"
    firefox.screenshot("firefox-run-page")

    # Markup in a log is text: shown literally, no element made, nothing run.
    firefox.js(f"location.hash = '#/runs/{markup['id']}'")
    wait_for_line(firefox, "<img src=x onerror=alert(1)>")
    assert "<script>alert(1)</script>" in firefox.js(LINE_TEXTS)
    assert "<script>alert(1)</script>" in firefox.js("document.querySelector('.log').innerText")
    assert firefox.js("document.querySelectorAll('img, .log script').length") == 0
    # The viewer's own, and nothing a line brought.
    assert firefox.js("[...document.scripts].map((s) => new URL(s.src).pathname)") == [
        "/static/boot.js", "/static/app.js"]
    time.sleep(0.3)  # give any injected handler its chance to fire
    firefox.js("true")  # collects the events that arrived meanwhile
    assert firefox.dialogs == []
    firefox.screenshot("firefox-markup-run-page")
