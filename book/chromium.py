"""Headless Chromium driven over the DevTools protocol, and a local HTTP server for the built book.

The book must work without a network: the browser tests and ``make pdf`` serve the HTML from
127.0.0.1 and load every page in Debian's ``chromium``; the tests record every request a page makes
and look at what rendered (figures, widgets, maths), ``build_pdf.py`` prints the pages.  Only the
``websocket-client`` package is needed; no browser is downloaded.
"""

from __future__ import annotations

import base64
import functools
import http.server
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import websocket

# JavaScript conditions of a rendered page: every image loaded, every formula typeset by MathJax,
# widgets drawn from the state embedded in the page.
IMAGES_DONE = "Array.from(document.images).every(i => i.complete)"
MATH_DONE = """(() => {
  const math = Array.from(document.querySelectorAll('.math'));
  if (!math.length) return true;
  return math.every(m => m.querySelector('mjx-container'));
})()"""
WIDGET_STATE = "document.querySelector('script[type=\"application/vnd.jupyter.widget-state+json\"]') !== null"
WIDGETS_DRAWN = "document.querySelectorAll('.jupyter-widgets').length > 0"

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"data", "blob", "about"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--window-size=1280,1600",
]


def find_chromium() -> str:
    """The Chromium executable: $CHROMIUM, else chromium / chromium-browser on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise FileNotFoundError(
        "Chromium is not installed: the book's browser test needs Debian's `chromium` "
        "(apt-get install -y chromium; `make test` installs it when run as root), or set $CHROMIUM"
    )


def is_local(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme in LOCAL_SCHEMES or parsed.hostname in LOCAL_HOSTS


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@contextmanager
def serve(directory: Path):
    """Serve ``directory`` on an ephemeral port of 127.0.0.1; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Page:
    """One DevTools session on a tab: send commands, collect events, record network traffic."""

    def __init__(self, ws_url: str, timeout: float = 60.0) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Runtime.enable")

    def close(self) -> None:
        self._ws.close()

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(f"no answer to {method} within {timeout} s")

    def _drain(self, seconds: float) -> None:
        """Collect events for a while (network requests that happen after load)."""
        deadline = time.monotonic() + seconds
        self._ws.settimeout(0.1)
        try:
            while time.monotonic() < deadline:
                try:
                    message = json.loads(self._ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if "method" in message:
                    self.events.append(message)
        finally:
            self._ws.settimeout(60.0)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str, timeout: float = 60.0) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading within {timeout} s")
            self._drain(0.2)

    def wait_for(self, expression: str, timeout: float = 30.0) -> bool:
        """Poll a JavaScript expression until it is truthy; False if it never became so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            self._drain(0.25)
        return False

    def wait_rendered(self, timeout: float = 30.0) -> list[str]:
        """Wait until images, formulas and widgets are drawn; returns what did not finish in time."""
        pending = [what for what, done in (("images did not finish loading", IMAGES_DONE),
                                           ("MathJax did not typeset every formula", MATH_DONE))
                   if not self.wait_for(done, timeout)]
        if self.evaluate(WIDGET_STATE) and not self.wait_for(WIDGETS_DRAWN, timeout):
            pending.append("the page embeds widget state but no widget rendered")
        self.settle(1.0)
        return pending

    def settle(self, seconds: float = 1.0) -> None:
        self._drain(seconds)

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def failures(self) -> list[str]:
        """Requests that failed or answered with an HTTP error (e.g. a vendored file that is missing)."""
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e["method"] == "Network.requestWillBeSent"}
        bad = []
        for e in self.events:
            if e["method"] == "Network.loadingFailed" and not e["params"].get("canceled"):
                bad.append(f"{urls.get(e['params']['requestId'], '?')}: {e['params'].get('errorText')}")
            if e["method"] == "Network.responseReceived" and e["params"]["response"]["status"] >= 400:
                bad.append(f"{e['params']['response']['url']}: HTTP {e['params']['response']['status']}")
        return bad

    def console_errors(self) -> list[str]:
        out = []
        for e in self.events:
            if e["method"] == "Runtime.exceptionThrown":
                out.append(e["params"]["exceptionDetails"].get("text", "") + " " + json.dumps(
                    e["params"]["exceptionDetails"].get("exception", {}).get("description", "")))
            if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
        return out

    def press(self, key: str, code: str, key_code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent",
                      {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code})

    def screenshot(self, path: Path, full_page: bool = True, width: int = 1280) -> Path:
        """Save a PNG of the page; ``full_page`` makes the window as tall as the page first (Chromium
        does not paint images far outside the window), up to 16000 pixels."""
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            height = int(min(size["height"], 16000))
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            self.wait_for(IMAGES_DONE, 30)
            self.settle(1.0)
        try:
            data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        finally:
            if full_page:
                self.send("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


    def print_pdf(self, path: Path) -> Path:
        """Print the page to an A4 PDF with its backgrounds (the print style sheet of the theme hides
        the navigation); returns ``path``."""
        data = self.send("Page.printToPDF", {
            "printBackground": True, "preferCSSPageSize": False,
            "paperWidth": 8.27, "paperHeight": 11.69,  # A4, inches
            "marginTop": 0.5, "marginBottom": 0.5, "marginLeft": 0.5, "marginRight": 0.5,
        }, timeout=120)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Chromium:
    """A headless Chromium process with its own throw-away profile; ``new_page()`` opens a tab."""

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or find_chromium()
        self._profile = tempfile.mkdtemp(prefix="chromium-profile.")
        self._proc = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 30.0) -> int:
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}: "
                                   f"{self._proc.stderr.read().decode(errors='replace')[-2000:]}")
            if port_file.is_file() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def new_page(self) -> Page:
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            target = json.load(response)
        return Page(target["webSocketDebuggerUrl"])

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
