"""Smoke test: `matcher review --headless` serves the app, and Debian's headless Chromium renders it.

Chromium is started with --headless --no-sandbox --disable-gpu
--disable-background-networking (and a throw-away profile) and driven over its
DevTools socket: load the page, sign in, open the Queue (a scene matched by
`matcher match` is waiting there), and save screenshots.  (The one-shot
``--screenshot --virtual-time-budget`` mode races with Streamlit's websocket and
caught the page rendered in only about one load in three, so the test waits for
the page itself instead.)

Streamlit streams elements to the browser while the script runs, so on a busy
machine any element can appear seconds after the one before it.  Every step
therefore waits for exactly the element it acts on next - rendered by the current
script run, visible, enabled and not covered - through one helper,
``DevTools.element``, which finds it and acts on it in the same evaluation; there
are no fixed sleeps.  Screenshots wait until the script run has finished and every
visible image has loaded.  The app server listens on a port the OS picks
(``--port 0``); the test reads it from the server's own listening socket, so no
other process can take it in between and no other server can answer for it.

Screenshots: ``test-output/review_smoke.png`` (the Queue) and
``test-output/review_smoke_signin.png`` (git-ignored; copies of the ones the test
checks in its own temporary folder, so two runs at once cannot mix them up).  ``scripts/test.sh`` installs
Chromium when it is missing; without it this test is skipped with that reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.process_support import listening_port as _listening_port
from tests.review_support import PASSWORD, SCENE, clone_settings, sample_template, scene_boxes

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output"
SCREENSHOT = OUT / "review_smoke.png"
SIGNIN_SCREENSHOT = OUT / "review_smoke_signin.png"
WIDTH, HEIGHT = 1280, 900
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={WIDTH},{HEIGHT}"]
# Ceiling for each wait (server start, page render, one script run): generous, for a loaded 2-core machine.
# Waits return as soon as their condition holds, so a long ceiling costs nothing when all is well.
TIMEOUT = float(os.environ.get("MATCHER_SMOKE_TIMEOUT", "300"))
POLL = 0.2  # seconds between two looks at a condition that does not hold yet

T = TypeVar("T")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _poll(check: Callable[[], T | None], what: str, timeout: float = TIMEOUT,
          explain: Callable[[], str] = lambda: "") -> T:
    """Call ``check`` until it returns something truthy (returned) or ``timeout`` runs out (the test fails).

    ``check`` may call ``pytest.fail`` itself to give up at once (a process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not there within {timeout:.0f} s{explain()}")
        time.sleep(POLL)


def _serving_port(process: subprocess.Popen, log: Path) -> int:
    """Wait until ``matcher review`` listens and its Streamlit server answers the health check; its port."""
    def tail() -> str:
        return ":\n" + log.read_text(errors="replace")[-3000:]

    def alive() -> None:
        if process.poll() is not None:
            pytest.fail(f"`matcher review` exited with {process.returncode}{tail()}")

    def port() -> int | None:
        alive()
        return _listening_port(process)

    found = _poll(port, "a listening socket of `matcher review`", explain=tail)

    def healthy() -> bool:
        alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{found}/_stcore/health", timeout=10) as response:
                return response.status == 200 and response.read().strip() == b"ok"
        except OSError:
            return False

    _poll(healthy, f"`ok` from http://127.0.0.1:{found}/_stcore/health", explain=tail)
    return found


def _stop(process: subprocess.Popen) -> None:
    """End the process group ``process`` leads (started with ``start_new_session``), children included."""
    try:
        os.killpg(process.pid, signal.SIGTERM)  # even if the leader is gone: its children may not be
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class ProtocolError(RuntimeError):
    """An error answer of the DevTools protocol (e.g. the page's context went away while navigating)."""


# An element rendered by the current script run (Streamlit marks the previous run's leftovers data-stale)
# and visible; "clickable" adds: enabled, and the topmost element at its centre once scrolled into view.
_ELEMENT_JS = """(() => {
  const where = (e) => (%(where)s), then = (e) => (%(then)s), clickable = %(clickable)s;
  for (const e of document.querySelectorAll(%(selector)s)) {
    if (!where(e)) continue;
    const container = e.closest('[data-testid="stElementContainer"]');
    if (container && container.getAttribute('data-stale') === 'true') continue;
    if (!e.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    let r = e.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) continue;
    if (clickable) {
      if (e.matches(':disabled') || e.closest('[aria-disabled="true"], fieldset:disabled')
          || e.querySelector('input:disabled, button:disabled')) continue;
      e.scrollIntoView({block: 'center', inline: 'center'});
      r = e.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      if (!hit || !(e === hit || e.contains(hit))) continue;
    }
    return then(e);
  }
  return null;
})()"""

# Nothing left to arrive: the script run has finished on a connected page, no element of an earlier run
# or lazily loaded component is still showing, fonts are in, and every visible image has loaded.
_SETTLED_JS = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning'
      || app.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  if (document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]')) return false;
  if (document.fonts.status !== 'loaded') return false;
  return [...document.images].filter(i => i.checkVisibility())
    .every(i => i.complete && i.naturalWidth > 0);
})()"""


class DevTools:
    """The few DevTools protocol calls the smoke test needs (websockets ships with Streamlit)."""

    def __init__(self, chromium: str, profile: Path) -> None:
        self._connection = None
        self.process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "TMPDIR": str(profile.parent)})  # its sockets, not /tmp
        try:
            self._connect(profile)
        except BaseException:  # pytest.fail too: leave no browser behind
            self.close()
            raise

    def _connect(self, profile: Path) -> None:
        def alive() -> None:
            if self.process.poll() is not None:
                pytest.fail(f"headless chromium exited with {self.process.returncode}")

        def devtools_port() -> int | None:  # the file holds the port, then the browser's websocket path
            alive()
            active = profile / "DevToolsActivePort"
            lines = active.read_text().split() if active.is_file() else []
            return int(lines[0]) if len(lines) >= 2 else None

        port = _poll(devtools_port, "chromium's DevTools port (DevToolsActivePort)")

        def page_target() -> dict | None:  # the about:blank tab, once chromium lists it
            alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                    return next((t for t in json.load(response) if t["type"] == "page"), None)
            except OSError:
                return None

        page = _poll(page_target, "chromium's page target")
        from websockets.sync.client import connect

        self._connection = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=TIMEOUT)
        self.socket = self._connection.__enter__()
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=TIMEOUT))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise ProtocolError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:  # a mistake in the test's own script: say so instead of waiting it out
            details = result["exceptionDetails"]
            raise RuntimeError(f"{details.get('exception', {}).get('description') or details.get('text')}\n"
                               f"in: {expression}")
        return result.get("result", {}).get("value")

    def shows(self) -> str:
        try:
            text = self.js("document.body ? document.body.innerText.slice(0, 2000) : ''")
        except ProtocolError as exc:
            text = f"(page not readable: {exc})"
        return f"; the page shows:\n{text}"

    def until(self, expression: str, what: str, timeout: float = TIMEOUT):
        """Evaluate ``expression`` in the page until its value is truthy; that value."""
        def check():
            try:
                return self.js(expression)
            except ProtocolError:  # the page is between two documents (navigating): look again
                return None

        return _poll(check, what, timeout, explain=self.shows)

    def element(self, selector: str, what: str, *, where: str = "true", clickable: bool = False,
                then: str = "true", timeout: float = TIMEOUT):
        """Wait for the element the next step needs, and act on it in the same evaluation.

        The first element matching the CSS ``selector`` for which the JavaScript expression ``where``
        (of ``e``) holds, drawn by the current script run and visible - with ``clickable``: also
        enabled and not covered by anything - gets the expression ``then`` (of ``e``) evaluated on it;
        the wait ends when that value is truthy, and returns it.  Finding and acting in one evaluation
        leaves no gap in which Streamlit could replace or move the element.
        """
        script = _ELEMENT_JS % {"selector": json.dumps(selector), "where": where, "then": then,
                                "clickable": "true" if clickable else "false"}
        return self.until(script, what, timeout)

    def click(self, selector: str, text: str, what: str) -> None:
        self.element(selector, f"{what} ({selector} {text!r}, clickable)",
                     where=f"e.innerText.trim() === {json.dumps(text)}", clickable=True, then="(e.click(), true)")

    def type_into(self, label: str, text: str) -> None:
        selector = f"input[aria-label={json.dumps(label)}]"
        self.element(selector, f"the input {label!r}, ready for typing", clickable=True,
                     then="(e.focus(), document.activeElement === e)")
        self.call("Input.insertText", text=text)
        self.element(selector, f"{text!r} typed into {label!r}", where=f"e.value === {json.dumps(text)}")

    def screenshot(self, path: Path) -> None:
        self.until(_SETTLED_JS, "the page settled: script run finished, images loaded")
        self.js("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))")  # painted
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - closing a socket chromium may already have dropped
                pass
        _stop(self.process)


def _ink(png: Path) -> float:
    """Share of clearly dark pixels: text and pictures, not a blank page or Streamlit's pale skeleton."""
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float((grey < 110).mean())


def _has_text(text: str) -> str:
    return f"e.innerText.includes({json.dumps(text)})"


def test_matcher_review_serves_a_page_that_headless_chromium_renders(pg_server, tmp_path_factory, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it: apt-get install chromium)")
    from matcher.db.engine import get_engine
    from matcher.query import QueryEngine

    template, _catalog = sample_template(pg_server, tmp_path_factory)
    settings = clone_settings(pg_server, template, tmp_path / "data")
    result = QueryEngine(settings).match(SCENE, boxes=scene_boxes(), store=True, source="cli")
    get_engine(settings).dispose()

    env = {**os.environ, "MATCHER_DATABASE_URL": settings.database_url, "MATCHER_DATA_DIR": str(settings.data_dir),
           "MATCHER_BACKEND": "classical"}
    env.pop("MATCHER_REVIEW_DETECTORS", None)
    matcher_bin = Path(sys.executable).with_name("matcher")
    command = [str(matcher_bin)] if matcher_bin.exists() else [sys.executable, "-m", "matcher.cli"]
    log = tmp_path / "review.log"
    with log.open("wb") as out:  # port 0: the OS picks a free port as the server binds it
        server = subprocess.Popen([*command, "review", "--headless", "--port", "0", "--address", "127.0.0.1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    # Taken into this test's own folder and checked there; copied to test-output/ for people to look at
    # (a run going on at the same time may replace those, never the files this one checks).
    shots = {SIGNIN_SCREENSHOT: tmp_path / SIGNIN_SCREENSHOT.name, SCREENSHOT: tmp_path / SCREENSHOT.name}
    browser = None
    try:
        port = _serving_port(server, log)
        browser = DevTools(chromium, tmp_path / "profile")
        browser.call("Page.enable")
        url = f"http://127.0.0.1:{port}/"
        navigated = browser.call("Page.navigate", url=url)
        assert not navigated.get("errorText"), f"{url}: {navigated['errorText']}"

        # The sign-in form (its button is the form's last element) and the page beside it.
        browser.element('[data-testid="stMain"] h1', "the page title", where=_has_text("Review matches"))
        browser.element('[data-testid="stSidebar"] button', "the sign-in button", where=_has_text("Sign in"))
        browser.screenshot(shots[SIGNIN_SCREENSHOT])

        browser.type_into("Your name", "smoke")
        browser.type_into("Password", PASSWORD)
        browser.click('[data-testid="stSidebar"] button', "Sign in", "the sign-in button")
        browser.element('[data-testid="stSidebar"] p', "the signed-in reviewer", where=_has_text("Signed in as smoke"))
        browser.click('[data-testid="stSidebar"] [role="radiogroup"] label', "Queue", "the Queue page in the sidebar")
        first = result.objects[0].detection_id
        browser.element('[data-testid="stMain"] h4', f"detection {first} in the queue",
                        where=_has_text(f"Detection {first}"))
        browser.until("[...document.querySelectorAll('[data-testid=\"stMain\"] img')]"
                      ".filter(i => i.checkVisibility() && i.complete && i.naturalWidth > 0).length >= 4",
                      "the photo, cutout and product images")
        browser.screenshot(shots[SCREENSHOT])
    finally:
        if browser is not None:
            browser.close()
        _stop(server)
        OUT.mkdir(parents=True, exist_ok=True)
        for published, taken in shots.items():  # those taken, failing or not; whole files, last run wins
            if taken.is_file():
                staged = published.with_name(f".{published.name}.{os.getpid()}")
                shutil.copyfile(taken, staged)
                os.replace(staged, published)

    for published, least in ((SIGNIN_SCREENSHOT, 0.002), (SCREENSHOT, 0.01)):
        path = shots[published]
        image = Image.open(path)
        assert image.size == (WIDTH, HEIGHT)
        assert np.asarray(image.convert("L")).std() > 5, f"{published} is blank"
        assert _ink(path) > least, f"{published} shows almost nothing (dark share {_ink(path):.4f})"
    print(f"screenshots: {SCREENSHOT} and {SIGNIN_SCREENSHOT}")
