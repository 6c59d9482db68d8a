#!/usr/bin/env python3
"""Click an account's Sign in button in a real headless Chromium, a browser we did not write.

Starts `chromedriver` on a free 127.0.0.1 port, opens a headless Chromium session with a
throw-away profile over the W3C WebDriver protocol (plain HTTP + JSON, so only the standard
library is needed), loads the accounts page, clicks the account's Sign in button and waits
until the page the browser lands on contains the expected text. The browser does everything a
person's browser does: keeps the session cookie, POSTs the form with its CSRF token, follows
the redirect to the provider's authorize page and that page's redirect back to the callback,
and enforces the page's Content-Security-Policy (form-action) on the way.

Prints one JSON object on standard output:
  {"ok": true, "button": "Sign in", "url": "<where the browser landed>", "text": "<its text>",
   "then_url": ..., "then_text": ..., "seconds": 4.2}
  or {"ok": false, "error": "...", "url": ..., "text": ..., "chromedriver_log": "<tail>"}
and exits 0 or 1. chromedriver and Chromium are stopped whatever happens (also on SIGTERM).
Used by tests/e2e/signin.rs; runnable by hand too:
  python3 tests/clients/browser_sign_in.py --page http://127.0.0.1:8025/accounts \
      --account scanner --expect "Signed in"
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# The key under which W3C WebDriver returns an element reference.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--page", required=True, help="URL of the accounts page")
    p.add_argument("--account", required=True, help="name of the account to sign in")
    p.add_argument("--expect", required=True,
                   help="text the page after the click must contain (waited for)")
    p.add_argument("--then", dest="then_url",
                   help="after success, open this URL in the same browser and report its text")
    p.add_argument("--timeout", type=float, default=120,
                   help="seconds for everything, browser start included")
    p.add_argument("--settle", type=float, default=15,
                   help="give up once the browser stayed this many seconds on a page without "
                        "the expected text")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver",
                   default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return p.parse_args()


class Failed(Exception):
    pass


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise Failed("timed out")
        return left


class WebDriver:
    """The few W3C WebDriver commands the sign-in needs."""

    def __init__(self, base, deadline):
        self.base = base
        self.deadline = deadline
        self.session = None

    def call(self, method, path, body=None, timeout=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        limit = self.deadline.left() if timeout is None else timeout
        try:
            with urllib.request.urlopen(req, timeout=limit) as resp:
                return json.loads(resp.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            # WebDriver errors: {"value": {"error": "no such element", "message": "..."}}
            try:
                value = json.loads(e.read()).get("value") or {}
            except ValueError:
                value = {}
            raise WebDriverError(value.get("error", "http %d" % e.code),
                                 value.get("message", "")) from None

    def s(self, method, path, body=None):
        return self.call(method, "/session/%s%s" % (self.session, path), body)

    def start(self, chromium, profile):
        args = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--user-data-dir=" + profile,
            # Nothing but the test's own 127.0.0.1 servers: no proxy from the environment, no
            # calls home that could stall a machine without Internet access.
            "--no-proxy-server", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", "--window-size=1024,768",
        ]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}}
        value = self.call("POST", "/session", caps)
        self.session = value["sessionId"]
        ms = int(self.deadline.left() * 1000)
        self.s("POST", "/timeouts", {"implicit": 0, "pageLoad": ms, "script": ms})
        return value.get("capabilities", {}).get("browserVersion", "?")

    def open(self, url):
        self.s("POST", "/url", {"url": url})

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(self, element):
        return self.s("GET", "/element/%s/text" % element)

    def click(self, element):
        self.s("POST", "/element/%s/click" % element, {})

    def url(self):
        return self.s("GET", "/url")

    def body_text(self):
        return self.text(self.find("body"))

    def quit(self):
        if self.session:
            session, self.session = self.session, None
            self.call("DELETE", "/session/" + session, timeout=30)


class WebDriverError(Exception):
    def __init__(self, error, message):
        super().__init__("%s: %s" % (error, message.splitlines()[0] if message else ""))
        self.error = error


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chromedriver(path, log, deadline):
    """chromedriver on a port that was free a moment ago; retried if another process took it."""
    for _ in range(5):
        port = free_port()
        # Its own process group, so Chromium and its helpers can be stopped with it.
        proc = subprocess.Popen(
            [path, "--port=%d" % port, "--log-path=" + log, "--log-level=INFO"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        base = "http://127.0.0.1:%d" % port
        while proc.poll() is None:
            try:
                if WebDriver(base, deadline).call("GET", "/status", timeout=5).get("ready"):
                    return proc, base
            except (OSError, WebDriverError):
                pass
            deadline.left()
            time.sleep(0.1)
    raise Failed("chromedriver did not start (see its log)")


def stop(proc):
    """Stops chromedriver and anything left in its process group (Chromium's processes)."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # The group may outlive its leader: sweep the rest too.
            os.killpg(proc.pid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            pass
        break


def page_went_away(e):
    """Whether a WebDriver error only says that the page changed under the command: the element
    was found in the page before a navigation and read in the next one. chromedriver reports
    that as a stale element, or, when the new document is already in place, as an "unknown
    error" from Chromium's inspector ("Node with given id does not belong to the document")."""
    return (e.error in ("no such element", "stale element reference", "no such window")
            or (e.error == "unknown error" and "does not belong to the document" in str(e)))


def wait_for_text(driver, expect, deadline, settle):
    """Polls the current page until its text contains `expect` (the browser may still be
    following redirects, so a page can vanish between two commands). chromedriver answers only
    once pending navigations are done, so a page that stays the same for `settle` seconds is
    where the browser ended up: a wrong one fails then, not at the deadline."""
    text, seen, since = "", None, time.monotonic()
    while True:
        try:
            text = driver.body_text()
            if expect in text:
                return text
            now = (driver.url(), text)
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > settle:
                raise Failed("the browser stayed on %s without %r: %r"
                             % (now[0], expect, text[:2000]))
        except WebDriverError as e:
            if not page_went_away(e):
                raise
        if deadline.end - time.monotonic() < 0.3:
            raise Failed("the page never showed %r; last text: %r" % (expect, text[:2000]))
        time.sleep(0.25)


def sign_in(a, driver, deadline, profile, report):
    report["browser"] = driver.start(a.chromium, profile)
    driver.open(a.page)
    report["url"] = driver.url()
    selector = 'form[action="/accounts/%s/sign-in"] button' % a.account
    try:
        button = driver.find(selector)
    except WebDriverError as e:
        raise Failed("no Sign in button (%s) on %s: %s; page: %r"
                     % (selector, report["url"], e, driver.body_text()[:2000])) from None
    report["button"] = driver.text(button)
    driver.click(button)
    report["text"] = wait_for_text(driver, a.expect, deadline, a.settle)
    report["url"] = driver.url()
    if a.then_url:
        driver.open(a.then_url)
        report["then_url"] = driver.url()
        report["then_text"] = driver.body_text()


def main():
    a = parse_args()
    started = time.monotonic()
    deadline = Deadline(a.timeout)
    report = {"ok": False}

    # SIGTERM (a test harness giving up) still cleans up, through the finally below.
    def terminate(signum, _frame):
        raise Failed("stopped by signal %d" % signum)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    proc = None
    driver = None
    with tempfile.TemporaryDirectory(prefix="smtp2oauth-browser-") as tmp:
        log = os.path.join(tmp, "chromedriver.log")
        profile = os.path.join(tmp, "profile")
        os.mkdir(profile)
        try:
            proc, base = start_chromedriver(a.chromedriver, log, deadline)
            driver = WebDriver(base, deadline)
            sign_in(a, driver, deadline, profile, report)
            report["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported as JSON, whatever it is
            report["error"] = "%s: %s" % (type(e).__name__, e)
            if driver is not None and driver.session:
                # Where the browser was when it went wrong.
                try:
                    driver.deadline = Deadline(10)
                    report["url"] = driver.url()
                    report.setdefault("text", driver.body_text()[:4000])
                except Exception:  # noqa: BLE001 - best effort, the error above is what counts
                    pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if driver is not None:
                try:
                    driver.quit()
                except Exception:  # noqa: BLE001 - chromedriver is stopped below anyway
                    pass
            stop(proc)
            if not report["ok"]:
                try:
                    with open(log, errors="replace") as f:
                        report["chromedriver_log"] = f.read()[-6000:]
                except OSError:
                    pass
    report["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(report))
    if not report["ok"]:
        print("browser sign-in failed: %s" % report.get("error"), file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
