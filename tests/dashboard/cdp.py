"""Headless Chromium driven over the Chrome DevTools Protocol (websocket-client only, no browser download).

Tests use :class:`Chromium` to load the dashboard and read its DOM; run as a
script it saves a screenshot of a page (how docs/dashboard.png was made)::

    python tests/dashboard/cdp.py http://127.0.0.1:8765/ docs/dashboard.png
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64decode
from pathlib import Path
from typing import Any

import websocket
from typing_extensions import Self

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str | None:
    """Debian's ``chromium`` (scripts/setup.sh installs it), or another Chrome on the PATH."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page; ``evaluate`` runs JavaScript in it and returns the value."""

    def __init__(self, *, width: int = 1400, height: int = 1000) -> None:
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("no chromium on the PATH (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="edgedfl-chromium-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self._profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        #: JavaScript exceptions thrown in the page, and console errors
        self.errors: list[str] = []
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are inspected for errors)."""
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            if msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"].get("type") == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                            for a in msg["params"].get("args", []))[:500])

    def navigate(self, url: str, *, wait_for: str = "document.readyState === 'complete'", timeout: float = 20) -> None:
        self.call("Page.navigate", url=url)
        self.wait_until(wait_for, timeout=timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_until(self, expression: str, *, timeout: float = 20) -> Any:
        """Poll ``expression`` until it is truthy; its value (TimeoutError past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            time.sleep(0.2)

    def screenshot(self, path: str | Path) -> Path:
        """A PNG of the whole page (as tall as its content)."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 1000)
        width = int(self.evaluate("Math.ceil(document.documentElement.clientWidth)") or 1400)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.5)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        out = Path(path)
        out.write_bytes(b64decode(data))
        return out

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            # Chromium's helpers (zygote, crashpad, renderers) share its process group and
            # may still write into the profile after the main process exits: end them all.
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._signal_group(signal.SIGKILL)
            for attempt in range(20):
                try:
                    shutil.rmtree(self._profile.name)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt == 19:
                        raise
                    time.sleep(0.1)
            self._profile.cleanup()  # detaches its finalizer; the folder is already gone

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":  # python tests/dashboard/cdp.py URL OUT.png
    with Chromium(width=1400, height=1000) as browser:
        browser.navigate(sys.argv[1])
        browser.wait_until("window.edgedfl && window.edgedfl.renders > 0")
        time.sleep(1.5)  # charts and graph layout settle
        print(browser.screenshot(sys.argv[2]))
        if browser.errors:
            print("page errors:", browser.errors, file=sys.stderr)
