# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real browser for the tests: Debian's headless Chromium, driven over the DevTools protocol.

The protocol runs over two pipes (``--remote-debugging-pipe``: commands in on fd 3, replies and events out on fd 4,
each message JSON ended by a NUL byte), so no WebSocket client and no open debugging port are needed. Chromium is
started in a lab node's network namespace (``prefix``): it can reach that node and the lab, and nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM = "/usr/bin/chromium"
# Everything Chromium would fetch on its own (updates, sync, safe browsing, field trials) stays off.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
         "--window-size=1500,1000"]


class BrowserError(AssertionError):
    pass


class Browser:
    """``with Browser(prefix) as browser: page = browser.page(); page.open(url); page.text()``."""

    def __init__(self, prefix=(), flags=()):
        self.profile = tempfile.mkdtemp(prefix="sr-chromium.")
        to_browser, self._commands = os.pipe()
        self._events, from_browser = os.pipe()
        # bash, not sh: dash takes only one-digit descriptors in a redirection.
        argv = list(prefix) + ["bash", "-c", 'exec "$@" 3<&%d 4>&%d' % (to_browser, from_browser), "bash", CHROMIUM] + FLAGS \
            + ["--user-data-dir=" + self.profile] + list(flags) + ["about:blank"]
        self.process = subprocess.Popen(argv, pass_fds=(to_browser, from_browser), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._lock = threading.Lock()
        self._ended = False
        self._replies = {}
        self._events_queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self):
        for line in self.process.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip())

    def _read(self):
        buffer = b""
        with os.fdopen(self._events, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    with self._lock:
                        self._ended = True
                        waiters, self._replies = list(self._replies.values()), {}
                    for waiter in waiters:
                        waiter.put({"error": "Chromium ended"})
                    self._events_queue.put(None)
                    return
                buffer += chunk
                while b"\0" in buffer:
                    raw, buffer = buffer.split(b"\0", 1)
                    message = json.loads(raw)
                    if "id" in message:
                        with self._lock:
                            waiter = self._replies.pop(message["id"], None)
                        if waiter is not None:
                            waiter.put(message)
                    else:
                        self._events_queue.put(message)

    def send(self, method, params=None, session=None, timeout=30):
        with self._lock:
            if self._ended:
                raise BrowserError("Chromium has ended; its stderr: %s" % "\n".join(self.stderr[-20:]))
            self._next_id += 1
            number = self._next_id
            waiter = self._replies[number] = queue.Queue(1)
        message = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode("utf-8") + b"\0")
        try:
            reply = waiter.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError("Chromium did not answer %s within %d s; its stderr: %s"
                               % (method, timeout, "\n".join(self.stderr[-20:]))) from None
        if "error" in reply:
            raise BrowserError("%s failed: %s; Chromium's stderr: %s" % (method, reply["error"], "\n".join(self.stderr[-5:])))
        return reply.get("result", {})

    def wait_event(self, method, session, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._events_queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BrowserError("no %s within %d s" % (method, timeout)) from None
            if event is None:
                raise BrowserError("Chromium ended; its stderr: %s" % "\n".join(self.stderr[-20:]))
            if event.get("method") == method and event.get("sessionId") == session:
                return event.get("params", {})

    def page(self, headers=None):
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self.send("Page.enable", session=session)
        self.send("Runtime.enable", session=session)
        if headers:
            self.send("Network.enable", session=session)
            self.send("Network.setExtraHTTPHeaders", {"headers": headers}, session=session)
        return page

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser, session):
        self.browser = browser
        self.session = session
        self.console = []

    def send(self, method, params=None, timeout=30):
        return self.browser.send(method, params, self.session, timeout)

    def open(self, url, timeout=30):
        """Navigate and wait for the load event; returns the HTTP status of the document."""
        reply = self.send("Page.navigate", {"url": url}, timeout)
        if reply.get("errorText"):
            raise BrowserError("loading %s failed: %s" % (url, reply["errorText"]))
        self.browser.wait_event("Page.loadEventFired", self.session, timeout)
        return self.evaluate("performance.getEntriesByType('navigation')[0].responseStatus")

    def evaluate(self, expression):
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise BrowserError("%s raised %s" % (expression, reply["exceptionDetails"].get("text")))
        return reply["result"].get("value")

    def text(self, selector="body"):
        """What a person reads in the element (innerText: rendered text, hidden parts left out)."""
        return self.evaluate("(function(){var e=document.querySelector(%s);return e?e.innerText:null;})()"
                             % json.dumps(selector))

    def rows(self, selector="table.jobs"):
        """The rows of a table as {column header: cell text}, as displayed."""
        return self.evaluate("""(function(){
            var t=document.querySelector(%s); if(!t){return null;}
            var heads=Array.from(t.querySelectorAll('thead th')).map(function(h){return h.innerText.trim();});
            return Array.from(t.querySelectorAll('tbody tr')).map(function(r){
                var row={}; Array.from(r.children).forEach(function(c,i){row[heads[i]]=c.innerText.trim();}); return row;});
        })()""" % json.dumps(selector))

    def wait_for(self, expression, timeout, what):
        """Poll until ``expression`` is truthy in the page (the page refreshing itself, not reloaded by us)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError("after %.0f s the page still does not show %s; it shows:\n%s"
                                   % (timeout, what, self.text()))
            time.sleep(0.5)

    def screenshot(self, path):
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 1000
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": 1500, "height": height, "scale": 1}})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data["data"]))
        return path
