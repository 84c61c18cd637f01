"""
The dashboard in a real headless Chromium, driven over WebDriver (plain
HTTP and JSON to C{chromedriver}, no Selenium): it signs in, loads without
console errors, shows every upstream target with its health, and follows a
target going down.

Needs Debian's C{chromium} and C{chromium-driver} packages; skipped without
them. With C{GATEWAYKIT_DASHBOARD_SCREENSHOT=PATH} set, the dashboard is
also saved as a PNG there (that is how C{docs/dashboard.png} is made).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from io import BytesIO
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.integration import support
from tests.integration.test_admin_e2e import TOKEN, AdminGateway, admin_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C element reference key
SCREENSHOT = os.environ.get("GATEWAYKIT_DASHBOARD_SCREENSHOT")

CHROME_ARGUMENTS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1500",
]

# Rows of the upstream tables, as the dashboard marks them.
TARGETS_SCRIPT = """
return Array.from(document.querySelectorAll("tr[data-target]")).map((row) => ({
  upstream: row.dataset.upstream,
  target: row.dataset.target,
  state: row.dataset.state,
  text: row.textContent,
}));
"""


class WebDriverError(Exception):
    """chromedriver refused a command."""


class _Driver(ProcessProtocol):
    """The chromedriver process; C{ended} fires when it exits."""

    def __init__(self) -> None:
        self.ended = support.Event()
        self.output: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.fire(reason.check(ProcessDone) is not None)


class Browser:
    """A headless Chromium session through chromedriver's WebDriver API."""

    def __init__(self, test_case: Any) -> None:
        self.test_case = test_case
        self.port = support.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.session: Optional[str] = None
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        self._driver = _Driver()
        self._process: Any = None

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        assert CHROMEDRIVER is not None and CHROMIUM is not None
        profile = os.path.abspath(self.test_case.mktemp())
        os.makedirs(profile)
        self._process = reactor.spawnProcess(
            self._driver,
            CHROMEDRIVER,
            [CHROMEDRIVER, f"--port={self.port}"],
            env=dict(os.environ),
        )
        self.test_case.addCleanup(self._stop_driver)
        yield support.wait_for(self._driver_ready, what="chromedriver to listen")
        yield self._wait_ready()
        arguments = [*CHROME_ARGUMENTS, f"--user-data-dir={profile}"]
        created = yield self.command(
            "POST",
            "/session",
            {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {"binary": CHROMIUM, "args": arguments},
                        "goog:loggingPrefs": {"browser": "ALL"},
                    }
                }
            },
        )
        self.session = created["sessionId"]
        self.test_case.addCleanup(self._end_session)
        return self

    def _driver_ready(self) -> bool:
        return b"started successfully" in b"".join(self._driver.output)

    @defer.inlineCallbacks
    def _wait_ready(self) -> support.Steps:
        for _ in range(100):
            try:
                status = yield self.command("GET", "/status")
                if status.get("ready"):
                    return
            except Exception:
                pass
            yield support.sleep(0.1)
        raise support.WaitTimeout("chromedriver never became ready")

    @defer.inlineCallbacks
    def command(self, method: str, path: str, body: Any = None) -> support.Steps:
        """One WebDriver command; fires with its C{value}."""
        producer = None
        if body is not None:
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
        response = yield self.agent.request(
            method.encode("ascii"),
            (self.base + path).encode("ascii"),
            Headers({b"Content-Type": [b"application/json; charset=utf-8"]}),
            producer,
        )
        data = yield readBody(response)
        value = json.loads(data)["value"]
        if response.code != 200:
            raise WebDriverError(f"{method} {path}: {response.code} {value}")
        return value

    def in_session(self, method: str, path: str, body: Any = None) -> defer.Deferred:
        return self.command(method, f"/session/{self.session}{path}", body)

    def go(self, url: str) -> defer.Deferred:
        return self.in_session("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> defer.Deferred:
        """The value of C{script} (a function body) run in the page."""
        return self.in_session("POST", "/execute/sync", {"script": script, "args": list(args)})

    @defer.inlineCallbacks
    def find(self, selector: str) -> support.Steps:
        found = yield self.in_session(
            "POST", "/element", {"using": "css selector", "value": selector}
        )
        return found[ELEMENT]

    @defer.inlineCallbacks
    def type_into(self, selector: str, text: str) -> support.Steps:
        element = yield self.find(selector)
        yield self.in_session("POST", f"/element/{element}/value", {"text": text})

    @defer.inlineCallbacks
    def click(self, selector: str) -> support.Steps:
        element = yield self.find(selector)
        yield self.in_session("POST", f"/element/{element}/click", {})

    def console(self) -> defer.Deferred:
        """The console entries logged since the last call."""
        return self.in_session("POST", "/se/log", {"type": "browser"})

    @defer.inlineCallbacks
    def screenshot(self, path: str) -> support.Steps:
        encoded = yield self.in_session("GET", "/screenshot")
        with open(path, "wb") as f:
            f.write(base64.b64decode(encoded))

    @defer.inlineCallbacks
    def _end_session(self) -> support.Steps:
        if self.session is not None:
            try:
                yield self.command("DELETE", f"/session/{self.session}")
            except Exception:
                pass
            self.session = None

    def _stop_driver(self) -> defer.Deferred:
        if self._driver.ended.happened:
            return defer.succeed(None)
        try:
            self._process.signalProcess("TERM")
        except ProcessExitedAlready:
            pass
        return self._driver.ended.wait()


class DashboardBrowserTests(support.GatewayTestCase):
    """The dashboard as a browser shows it."""

    def setUp(self) -> None:
        if CHROMIUM is None or CHROMEDRIVER is None:
            raise SkipTest("needs chromium and chromedriver: apt-get install chromium chromium-driver")

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        self.upstreams = [self.start_upstream() for _ in range(3)]
        config = admin_config(
            [server.port for server in self.upstreams],
            health={
                "path": "/headers",
                "interval": "200ms",
                "timeout": "500ms",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
            },
        )
        config["policies"] = {"per-ip": {"type": "rate_limit", "key": ["ip"], "limit": 5, "window": "1s"}}
        config["routes"].insert(
            0,
            {
                "name": "limited",
                "match": {"path_prefix": "/limited"},
                "policies": ["per-ip"],
                "respond": {"status": 200, "body": "ok\n"},
            },
        )
        self.gateway = AdminGateway(self, config).start()
        port = self.gateway.service.port_of("web")
        for path, pause in (("/headers", 0.05), ("/ping", 0.2), ("/limited", 0.1), ("/nope", 0.5)):
            support.Load(self, port, path, pause=pause).start()
        self.browser = yield Browser(self).start()

    @defer.inlineCallbacks
    def sign_in(self) -> support.Steps:
        """Sign in on the form the dashboard shows without the cookie."""
        browser = self.browser
        yield browser.go(self.gateway.admin_url("/"))
        yield browser.type_into("#token", TOKEN)
        yield browser.click("button[type=submit]")
        yield self.wait_page(
            lambda: browser.run("return document.getElementById('upstreams') !== null"),
            what="the dashboard after signing in",
        )

    @defer.inlineCallbacks
    def wait_page(self, check: Any, timeout: float = 15.0, what: str = "") -> support.Steps:
        """Poll C{check()} (a Deferred of a value) until the value is true."""
        deadline = reactor.seconds() + timeout
        while True:
            value = yield check()
            if value:
                return value
            if reactor.seconds() > deadline:
                page = yield self.browser.run(
                    "return location.href + '\\n' + document.body.innerText.slice(0, 2000)"
                )
                console = yield self.browser.console()
                raise support.WaitTimeout(
                    f"waited {timeout:g}s for {what or check!r}; page: {page}\nconsole: {console}"
                )
            yield support.sleep(0.2)

    def updates(self) -> defer.Deferred:
        return self.browser.run("return Number(document.body.dataset.updated || 0)")

    @defer.inlineCallbacks
    def test_dashboard(self) -> support.Steps:
        """Signs in, shows every target healthy without console errors, then one going down."""
        yield self.start()
        yield self.sign_in()
        yield self.browser.console()  # the sign-in page's 401 is expected: start afresh
        yield self.browser.go(self.gateway.admin_url("/"))
        yield self.wait_page(lambda: self.updates().addCallback(lambda n: n >= 2), what="polls")

        rows = yield self.browser.run(TARGETS_SCRIPT)
        addresses = sorted(f"127.0.0.1:{server.port}" for server in self.upstreams)
        self.assertEqual(sorted(row["target"] for row in rows), addresses)
        self.assertEqual({row["state"] for row in rows}, {"healthy"})
        self.assertTrue(all("healthy" in row["text"] for row in rows))
        title = yield self.browser.run("return document.title")
        self.assertEqual(title, f"gatewaykit {support.NODE} · dashboard")
        routes = yield self.browser.run(
            "return Array.from(document.querySelectorAll('tr[data-route]'), r => r.dataset.route)"
        )
        self.assertEqual(set(routes) >= {"limited", "ping", "all"}, True)

        down = f"127.0.0.1:{self.upstreams[2].port}"
        yield self.upstreams[2].stop()

        def target_state() -> defer.Deferred:
            return self.browser.run(TARGETS_SCRIPT).addCallback(
                lambda rows: {row["target"]: row["state"] for row in rows}.get(down) == "unhealthy"
            )

        yield self.wait_page(target_state, what=f"{down} to show unhealthy")
        rows = yield self.browser.run(TARGETS_SCRIPT)
        states = {row["target"]: row["state"] for row in rows}
        self.assertEqual(states.pop(down), "unhealthy")
        self.assertEqual(set(states.values()), {"healthy"})

        yield self.wait_page(lambda: self.updates().addCallback(lambda n: n >= 4), what="polls")
        if SCREENSHOT:
            yield self.browser.screenshot(SCREENSHOT)
        entries = yield self.browser.console()
        problems = [entry for entry in entries if entry["level"] in ("SEVERE", "WARNING")]
        self.assertEqual(problems, [])
