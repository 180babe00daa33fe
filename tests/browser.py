"""A real headless Chromium for the report tests, driven over the DevTools protocol.

``Browser.open(path)`` loads a page from disk in a fresh tab and records every console message,
uncaught exception and network request the page makes; ``evaluate`` runs JavaScript in it and
``screenshot`` returns the visible page as a PNG. Chromium is Debian's ``chromium-headless-shell``
(or ``chromium``), which ``.ci/run`` installs; ``CHROMIUM`` is None where neither exists, and the
``needs_browser`` tests then skip (unless GENEMAN_REQUIRE_BROWSER is set, as in CI: then they fail).
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BINARIES = ("chromium-headless-shell", "chromium", "chromium-browser")
VIEWER_BG = (244, 244, 244)
"""The report's viewer background (pipeline/report/page.py's STYLE)."""
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:", "devtools:")


def _find() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


CHROMIUM = _find()
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("GENEMAN_REQUIRE_BROWSER"),
    reason="no headless Chromium here (apt-get install chromium-headless-shell; .ci/run installs it)")


@dataclass
class PageLog:
    """What a page did while it was open."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def network(self) -> list[str]:
        """Requests to anything but the page's own files and inline data (any network address)."""
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class Browser:
    """One Chromium process with a DevTools websocket; a context manager."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900):
        import websocket  # test dependency (websocket-client)

        self.profile = tempfile.mkdtemp(prefix="geneman-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--metrics-recording-only", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        url = self._devtools_url()
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.width, self.height = width, height
        self.session: str | None = None
        self.target: str | None = None
        self.log = PageLog()

    def _devtools_url(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                return m.group(1)
        raise RuntimeError("Chromium did not start: " + "".join(lines)[-2000:])

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End Chromium and every process it started (its GPU and renderer children are in its session)."""
        try:
            self.ws.close()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, params: dict | None = None, timeout: float = 60, session: bool = True) -> dict:
        """Send one command and return its result, noting the events that arrive meanwhile."""
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note(reply)
        raise TimeoutError(method)

    def _note(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.log.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                    for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.log.console_errors.append(f"{entry.get('text')} ({entry.get('url', '')})")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.log.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.log.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            self.log.failed.append(f"{params.get('errorText')} ({params.get('requestId')})")

    def open(self, path: Path) -> float:
        """Load ``path`` in a new tab (events recorded from before the first request); the seconds until
        the page's load event."""
        if self.session:
            self.send("Target.closeTarget", {"targetId": self.target}, session=False)
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.target = target
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.log = PageLog()
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        t0 = time.monotonic()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_for("document.readyState === 'complete' && performance.timing.loadEventEnd > 0")
        timing = self.evaluate("performance.timing.loadEventEnd - performance.timing.navigationStart")
        return timing / 1000 if timing else time.monotonic() - t0

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        """Poll until ``expression`` is true in the page."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        raise TimeoutError(f"never true within {timeout} s: {expression}")

    def screenshot(self, clip: dict | None = None) -> bytes:
        """PNG bytes of the viewport (or of ``clip``: x, y, width, height in CSS pixels)."""
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])


def viewer_pixels(browser: Browser) -> tuple[int, int]:
    """(pixels of the first viewer's canvas that differ from its background, all its pixels)."""
    browser.evaluate("document.querySelector('model-viewer').scrollIntoView()")
    rect = browser.evaluate("(() => {const r = document.querySelector('model-viewer').getBoundingClientRect();"
                            "return {x: r.x, y: r.y, width: r.width, height: r.height};})()")
    shot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB")).astype(int)
    x, y, w, h = (int(rect[k]) for k in ("x", "y", "width", "height"))
    region = shot[y + 4:y + h - 4, x + 4:x + w - 4]
    differs = np.abs(region - np.array(VIEWER_BG)).max(-1) > 24
    return int(differs.sum()), differs.size


def open_checked(browser: Browser, path: Path) -> None:
    browser.open(path)
    browser.wait_for("Array.from(document.querySelectorAll('model-viewer')).every(v => v.loaded)", 90)
    browser.wait_for("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", 30)


def assert_quiet(browser: Browser) -> None:
    log = browser.log
    assert not log.console_errors and not log.exceptions, (log.console_errors, log.exceptions)
    assert not log.network, log.network
    assert not log.failed, log.failed
