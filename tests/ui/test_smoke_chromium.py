"""Smoke test: `matcher review --headless` serves the app, and Debian's headless Chromium renders it.

Chromium is started with --headless --no-sandbox --disable-gpu
--disable-background-networking (and a throw-away profile) and driven over its
DevTools socket: load the page, wait until the sign-in form has rendered, sign in,
open the Queue (a scene matched by `matcher match` is waiting there), and save
screenshots.  (The one-shot ``--screenshot --virtual-time-budget`` mode races with
Streamlit's websocket and caught the page rendered in only about one load in three,
so the test waits for the page itself instead.)

Screenshots: ``test-output/review_smoke.png`` (the Queue) and
``test-output/review_smoke_signin.png`` (git-ignored).  ``scripts/test.sh`` installs
Chromium when it is missing; without it this test is skipped with that reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.review_support import SCENE, SECRET, clone_settings, sample_template, scene_boxes

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output"
SCREENSHOT = OUT / "review_smoke.png"
SIGNIN_SCREENSHOT = OUT / "review_smoke_signin.png"
WIDTH, HEIGHT = 1280, 900
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={WIDTH},{HEIGHT}"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`matcher review` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no answer from {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


class DevTools:
    """The few DevTools protocol calls the smoke test needs (websockets ships with Streamlit)."""

    def __init__(self, chromium: str, profile: Path) -> None:
        self.process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "TMPDIR": str(profile.parent)})  # its sockets, not /tmp
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail("headless chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        from websockets.sync.client import connect

        self._connection = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=20)
        self.socket = self._connection.__enter__()
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expression):
                return
            time.sleep(0.25)
        text = self.js("document.body ? document.body.innerText.slice(0, 2000) : ''")
        pytest.fail(f"the page never showed {what} within {timeout:.0f} s; it shows:\n{text}")

    def has_text(self, text: str) -> str:
        return f"document.body && document.body.innerText.includes({json.dumps(text)})"

    def type_into(self, label: str, text: str) -> None:
        found = self.js("(() => { const e = document.querySelector('input[aria-label=" + json.dumps(label) + "]');"
                        " if (!e) return false; e.focus(); return true; })()")
        assert found, f"no input labelled {label!r}"
        self.call("Input.insertText", text=text)

    def click(self, selector: str, text: str) -> None:
        found = self.js("(() => { const e = [...document.querySelectorAll(" + json.dumps(selector) + ")]"
                        ".find(b => b.innerText.trim() === " + json.dumps(text) + "); if (!e) return false;"
                        " e.click(); return true; })()")
        assert found, f"nothing to click: {selector} {text!r}"

    def screenshot(self, path: Path) -> None:
        time.sleep(1.0)  # let images finish painting
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        connection = getattr(self, "_connection", None)
        if connection is not None:
            try:
                connection.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - closing a socket chromium may already have dropped
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _ink(png: Path) -> float:
    """Share of clearly dark pixels: text and pictures, not a blank page or Streamlit's pale skeleton."""
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float((grey < 110).mean())


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

    port = _free_port()
    env = {**os.environ, "MATCHER_DATABASE_URL": settings.database_url, "MATCHER_DATA_DIR": str(settings.data_dir),
           "MATCHER_REVIEW_SECRET": SECRET, "MATCHER_BACKEND": "classical"}
    env.pop("MATCHER_REVIEW_DETECTORS", None)
    matcher_bin = Path(sys.executable).with_name("matcher")
    command = [str(matcher_bin)] if matcher_bin.exists() else [sys.executable, "-m", "matcher.cli"]
    log = tmp_path / "review.log"
    with log.open("wb") as out:
        server = subprocess.Popen([*command, "review", "--headless", "--port", str(port), "--address", "127.0.0.1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    browser = None
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", server, log)
        OUT.mkdir(parents=True, exist_ok=True)
        for path in (SCREENSHOT, SIGNIN_SCREENSHOT):
            path.unlink(missing_ok=True)
        browser = DevTools(chromium, tmp_path / "profile")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        browser.wait_for(browser.has_text("Shared secret"), "the sign-in form")
        browser.screenshot(SIGNIN_SCREENSHOT)

        browser.type_into("Your name", "smoke")
        browser.type_into("Shared secret", SECRET)
        browser.click("button", "Sign in")
        browser.wait_for(browser.has_text("Signed in as"), "the signed-in app")
        browser.click("label", "Queue")
        first = result.objects[0].detection_id
        browser.wait_for(browser.has_text(f"Detection {first}"), f"detection {first} in the queue")
        browser.wait_for("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length >= 4",
                         "the photo, cutout and product images")
        browser.screenshot(SCREENSHOT)
    finally:
        if browser is not None:
            browser.close()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    for path, least in ((SIGNIN_SCREENSHOT, 0.002), (SCREENSHOT, 0.01)):
        image = Image.open(path)
        assert image.size == (WIDTH, HEIGHT)
        assert np.asarray(image.convert("L")).std() > 5, f"{path} is blank"
        assert _ink(path) > least, f"{path} shows almost nothing (dark share {_ink(path):.4f})"
    print(f"screenshots: {SCREENSHOT} and {SIGNIN_SCREENSHOT}")
