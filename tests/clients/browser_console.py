#!/usr/bin/env python3
"""Drive the operator console in a real headless Chromium, a browser we did not write.

Runs a list of steps (JSON, from --steps) in one browser session, over the W3C WebDriver
protocol of `chromedriver` (the WebDriver client is shared with browser_sign_in.py). The browser
keeps the session cookie, posts forms with their CSRF token and enforces the pages'
Content-Security-Policy, as a person's browser does.

Steps (each an object with one key):
  {"open": "/path"}                  load base + path
  {"expect": "text"}                 wait until the page's text contains it
  {"absent": "text"}                 the page's text does not contain it (now)
  {"fill": ["css selector", "v"]}    type into a field (its old value cleared)
  {"click": "css selector"}          click an element (waits for the page that follows)
  {"blank_csrf": true}               empty every form's csrf field (to prove the server checks it)
  {"screenshot": "file.png"}         save the whole page (the window grows to fit) as PNG
  {"text": "name"}                   report the page's text under this name

Prints one JSON object: {"ok": true, "browser": "...", "texts": {...}, "url": "...",
"seconds": ...} or {"ok": false, "error": "...", "step": N, "url": ..., "text": ...} and exits
0 or 1. chromedriver and Chromium are stopped whatever happens.
"""
import argparse
import base64
import json
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser_sign_in import (  # noqa: E402 - the shared WebDriver client
    Deadline, Failed, WebDriver, WebDriverError, start_chromedriver, stop, wait_for_text)

WIDTH = 1280


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="http://host:port of the console")
    p.add_argument("--steps", required=True, help="JSON list of steps")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    return p.parse_args()


def screenshot(driver, path):
    driver.s("POST", "/window/rect", {"width": WIDTH, "height": 600})
    height = driver.s("POST", "/execute/sync", {
        "script": "return Math.max(document.documentElement.scrollHeight, 600);", "args": []})
    driver.s("POST", "/window/rect", {"width": WIDTH, "height": min(int(height) + 140, 4000)})
    data = driver.s("GET", "/screenshot")
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))


def run_step(driver, base, step, report, deadline):
    (kind, arg), = step.items()
    if kind == "open":
        driver.open(base + arg)
    elif kind == "expect":
        wait_for_text(driver, arg, deadline, 15)
    elif kind == "absent":
        text = driver.body_text()
        if arg in text:
            raise Failed("the page shows %r: %r" % (arg, text[:2000]))
    elif kind == "fill":
        element = driver.find(arg[0])
        driver.s("POST", "/element/%s/clear" % element, {})
        driver.s("POST", "/element/%s/value" % element, {"text": arg[1]})
    elif kind == "click":
        driver.click(driver.find(arg))
    elif kind == "blank_csrf":
        driver.s("POST", "/execute/sync", {"script": (
            "document.querySelectorAll('input[name=csrf]').forEach(function(e){e.value='';});"
            "return true;"), "args": []})
    elif kind == "screenshot":
        screenshot(driver, arg)
    elif kind == "text":
        report["texts"][arg] = driver.body_text()
    else:
        raise Failed("unknown step %r" % kind)


def main():
    a = parse_args()
    started = time.monotonic()
    deadline = Deadline(a.timeout)
    steps = json.loads(a.steps)
    report = {"ok": False, "texts": {}}

    def terminate(signum, _frame):
        raise Failed("stopped by signal %d" % signum)
    signal.signal(signal.SIGTERM, terminate)

    proc = driver = None
    with tempfile.TemporaryDirectory(prefix="smtp2oauth-console-") as tmp:
        log = os.path.join(tmp, "chromedriver.log")
        profile = os.path.join(tmp, "profile")
        os.mkdir(profile)
        try:
            proc, url = start_chromedriver(a.chromedriver, log, deadline)
            driver = WebDriver(url, deadline)
            report["browser"] = driver.start(a.chromium, profile)
            driver.s("POST", "/window/rect", {"width": WIDTH, "height": 900})
            for i, step in enumerate(steps):
                report["step"] = i
                run_step(driver, a.base, step, report, deadline)
            report.pop("step", None)
            report["url"] = driver.url()
            report["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported as JSON, whatever it is
            report["error"] = "%s: %s" % (type(e).__name__, e)
            if driver is not None and driver.session:
                try:
                    driver.deadline = Deadline(10)
                    report["url"] = driver.url()
                    report["text"] = driver.body_text()[:4000]
                except Exception:  # noqa: BLE001 - best effort
                    pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if driver is not None:
                try:
                    driver.quit()
                except Exception:  # noqa: BLE001 - chromedriver is stopped below anyway
                    pass
            stop(proc)
            if not report["ok"]:
                try:
                    with open(log, errors="replace") as f:
                        report["chromedriver_log"] = f.read()[-4000:]
                except OSError:
                    pass
    report["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
