"""
Tests for L{gatewaykit.admin.server}: every admin call, the token and the
dashboard sign-in, over an in-memory connection to the real site.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.admin.metrics import FAMILIES
from gatewaykit.admin.server import COOKIE, AdminService, AdminSite
from gatewaykit.config.model import AdminConfig
from gatewaykit.testing import Response, parse_response
from tests.test_admin_state import ADMIN_TOKEN, JWT_SECRET, AdminWorld, FakeCache, ReloadResult

ADMIN_HOST = "127.0.0.1:9901"


class AdminClient:
    """Requests to an L{AdminSite}, each on a new in-memory connection."""

    def __init__(self, token: str = "", world: Optional[AdminWorld] = None) -> None:
        self.world = world if world is not None else AdminWorld()
        self.state = self.world.state()
        self.reactor = MemoryReactorClock()
        self.site = AdminSite(self.state, AdminConfig(token=token), self.reactor)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Optional[dict[str, str]] = None,
    ) -> Response:
        fields = {"Host": ADMIN_HOST, **(headers or {})}
        if body or method == "POST":
            fields["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields.items()
        )
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert channel is not None
        channel.makeConnection(transport)
        channel.dataReceived(head.encode("latin-1") + b"\r\n" + body)
        return parse_response(transport.value(), head_request=method == "HEAD")

    def get(self, path: str, **headers: str) -> Response:
        return self.request("GET", path, headers=_fields(headers))

    def post(self, path: str, body: bytes = b"", **headers: str) -> Response:
        return self.request("POST", path, body, _fields(headers))


def _fields(headers: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in headers.items()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def document(response: Response) -> Any:
    return json.loads(response.body)


class EndpointTests(SynchronousTestCase):
    """Each admin call, without a token configured."""

    def setUp(self) -> None:
        self.client = AdminClient()

    def test_dashboard(self) -> None:
        """C{GET /} is the dashboard page, referring to its own assets only."""
        response = self.client.get("/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get(b"content-type"), b"text/html; charset=utf-8")
        self.assertIn(b'<script src="/static/dashboard.js"', response.body)
        self.assertNotIn(b"https://", response.body)
        self.assertIn(b"script-src 'self'", response.headers.get(b"content-security-policy"))

    def test_static(self) -> None:
        """The dashboard's script and style sheet are served with their types."""
        script = self.client.get("/static/dashboard.js")
        style = self.client.get("/static/dashboard.css")
        self.assertEqual(
            (script.status, script.headers.get(b"content-type")),
            (200, b"text/javascript; charset=utf-8"),
        )
        self.assertEqual(style.headers.get(b"content-type"), b"text/css; charset=utf-8")

    def test_static_etag(self) -> None:
        """An asset is revalidated with its ETag: 304 when unchanged."""
        etag = self.client.get("/static/dashboard.js").headers.get(b"etag")
        again = self.client.get("/static/dashboard.js", If_None_Match=etag.decode())
        self.assertEqual((again.status, again.body), (304, b""))

    def test_static_unknown(self) -> None:
        """Only the packaged files are served: no listing, no path walking."""
        for path in ("/static/", "/static/nope.js", "/static/../server.py"):
            self.assertEqual(self.client.get(path).status, 404, path)

    def test_status(self) -> None:
        """C{GET /status} is the status document as JSON."""
        self.client.world.get("/ping")
        response = self.client.get("/status")
        self.assertEqual(response.headers.get(b"content-type"), b"application/json")
        status = document(response)
        for key in ("node", "version", "config_digest", "uptime_seconds", "listeners"):
            self.assertIn(key, status)
        for key in ("upstreams", "workers", "routes", "rate_limits", "cache", "reloads"):
            self.assertIn(key, status)
        target = status["upstreams"][0]["targets"][0]
        self.assertEqual(
            set(target) >= {"address", "healthy", "ejected", "in_flight", "ewma_ms"}, True
        )

    def test_status_head(self) -> None:
        """HEAD works wherever GET does."""
        self.assertEqual(self.client.request("HEAD", "/status").status, 200)

    def test_metrics(self) -> None:
        """C{GET /metrics} is Prometheus text with every family of SPEC section 10."""
        self.client.world.get("/ping")
        response = self.client.get("/metrics")
        self.assertEqual(
            response.headers.get(b"content-type"), b"text/plain; version=0.0.4; charset=utf-8"
        )
        families = {
            family.name + ("_total" if family.type == "counter" else "")
            for family in text_string_to_metric_families(response.body.decode())
        }
        self.assertEqual(set(FAMILIES) - families, set())

    def test_config(self) -> None:
        """C{GET /config} is the effective config with secrets masked."""
        response = self.client.get("/config")
        config = document(response)
        self.assertEqual(config["policies"]["jwt"]["options"]["secret"], "***")
        self.assertNotIn(JWT_SECRET.encode(), response.body)
        self.assertNotIn(ADMIN_TOKEN.encode(), response.body)

    def test_reload_ok(self) -> None:
        """C{POST /reload} answers 200 with the new digest."""
        self.client.world.next_reload = ReloadResult(ok=True, digest="abc123")
        response = self.client.post("/reload")
        self.assertEqual(
            (response.status, document(response)), (200, {"ok": True, "digest": "abc123"})
        )

    def test_reload_invalid(self) -> None:
        """An invalid new config answers 422 with its problems."""
        problems = ("gw.yaml:3:5: unknown key 'balancr'; did you mean 'balancer'?",)
        self.client.world.next_reload = ReloadResult(ok=False, problems=problems)
        response = self.client.post("/reload")
        self.assertEqual(
            (response.status, document(response)),
            (422, {"ok": False, "problems": list(problems)}),
        )

    def test_reload_pending(self) -> None:
        """The answer waits for the reload to finish."""
        pending: Deferred[Any] = Deferred()
        self.client.world.next_reload = pending
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        channel = self.client.site.buildProtocol(None)
        assert channel is not None
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /reload HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        pending.callback(ReloadResult(ok=True, digest="d"))
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_reload_failed(self) -> None:
        """A reload that raises answers 500 (and is logged), not a traceback."""
        self.client.world.next_reload = fail(RuntimeError("boom"))
        response = self.client.post("/reload")
        self.assertEqual(response.status, 500)
        self.assertNotIn(b"boom", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_purge(self) -> None:
        """C{POST /cache/purge} answers how many entries went."""
        cache = FakeCache(purges=4)
        self.client.world.gateway.policies["cache"] = cache
        prefix = self.client.post("/cache/purge", b'{"prefix": "/users"}')
        url = self.client.post("/cache/purge", b'{"url": "http://a/users/1"}')
        self.assertEqual((prefix.status, document(prefix)), (200, {"purged": 4}))
        self.assertEqual(document(url), {"purged": 4})
        self.assertEqual(cache.purged, [("/users", None), (None, "http://a/users/1")])

    def test_purge_no_cache(self) -> None:
        """Without a cache, nothing is purged."""
        self.assertEqual(document(self.client.post("/cache/purge", b'{"prefix": "/"}')), {"purged": 0})

    def test_purge_bad_body(self) -> None:
        """A body that is not one prefix or one URL is a 400 problem."""
        for body in (
            b"",
            b"not json",
            b"[]",
            b"{}",
            b'{"prefix": "/a", "url": "http://a/"}',
            b'{"prefix": 3}',
            b'{"prefix": "users"}',
            b'{"path": "/a"}',
        ):
            response = self.client.post("/cache/purge", body)
            self.assertEqual(response.status, 400, body)
            self.assertEqual(response.headers.get(b"content-type"), b"application/problem+json")

    def test_not_found(self) -> None:
        """An unknown path is a 404 problem."""
        response = self.client.get("/nope")
        self.assertEqual(response.status, 404)
        self.assertEqual(document(response)["type"], "urn:gatewaykit:error:not_found")

    def test_wrong_method(self) -> None:
        """A known path with the wrong method is 405 with Allow."""
        get = self.client.get("/reload")
        post = self.client.post("/status")
        self.assertEqual((get.status, get.headers.get(b"allow")), (405, b"POST"))
        self.assertEqual((post.status, post.headers.get(b"allow")), (405, b"GET, HEAD"))

    def test_cross_origin_post(self) -> None:
        """A POST a web page of another origin makes is refused."""
        self.client.world.next_reload = ReloadResult(ok=True, digest="d")
        refused = self.client.post("/reload", Origin="https://evil.example")
        same = self.client.post("/reload", Origin=f"http://{ADMIN_HOST}")
        self.assertEqual((refused.status, same.status), (403, 200))
        self.assertEqual(self.client.world.reloads["ok"], 1)

    def test_fetch_site(self) -> None:
        """Sec-Fetch-Site decides when the browser sends it (Origin may be "null")."""
        self.client.world.next_reload = ReloadResult(ok=True, digest="d")
        for site, status in (("cross-site", 403), ("same-site", 403), ("same-origin", 200)):
            response = self.client.post("/reload", Sec_Fetch_Site=site, Origin="null")
            self.assertEqual(response.status, status, site)

    def test_favicon(self) -> None:
        """Browsers asking for a favicon get an empty answer, not a 404."""
        self.assertEqual(self.client.get("/favicon.ico").status, 204)

    def test_no_store(self) -> None:
        """Admin answers are not cached by browsers or proxies."""
        self.assertEqual(self.client.get("/status").headers.get(b"cache-control"), b"no-store")


class TokenTests(SynchronousTestCase):
    """With C{gateway.admin.token} set."""

    def setUp(self) -> None:
        self.client = AdminClient(token=ADMIN_TOKEN)
        self.client.world.next_reload = ReloadResult(ok=True, digest="d")

    def test_every_call_needs_it(self) -> None:
        """Without credentials every call is 401 with a Bearer challenge."""
        calls = [("GET", path) for path in ("/", "/status", "/metrics", "/config")]
        calls += [("POST", "/reload"), ("POST", "/cache/purge")]
        for method, path in calls:
            response = self.client.request(method, path)
            self.assertEqual(response.status, 401, path)
            self.assertEqual(
                response.headers.get(b"www-authenticate"), b'Bearer realm="gatewaykit-admin"'
            )
        self.assertEqual(self.client.world.reloads["ok"], 0)

    def test_wrong_token(self) -> None:
        """A wrong token is 401 with C{error="invalid_token"}."""
        for token in ("wrong", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1], ""):
            response = self.client.get("/status", **_snake(bearer(token)))
            self.assertEqual(response.status, 401, token)
            self.assertIn(b'error="invalid_token"', response.headers.get(b"www-authenticate"))

    def test_other_scheme(self) -> None:
        """The token under another scheme (Basic) does not count."""
        response = self.client.get("/status", Authorization=f"Basic {ADMIN_TOKEN}")
        self.assertEqual(response.status, 401)

    def test_right_token(self) -> None:
        """The right token opens every call."""
        headers = _snake(bearer(ADMIN_TOKEN))
        for path in ("/", "/status", "/metrics", "/config"):
            self.assertEqual(self.client.get(path, **headers).status, 200, path)
        self.assertEqual(self.client.post("/reload", **headers).status, 200)

    def test_static_public(self) -> None:
        """The dashboard's assets (no data in them) need no token."""
        self.assertEqual(self.client.get("/static/dashboard.css").status, 200)

    def test_login_page(self) -> None:
        """A browser loading the dashboard without credentials gets the sign-in form."""
        response = self.client.get("/", Accept="text/html,application/xhtml+xml")
        self.assertEqual(response.status, 401)
        self.assertIn(b'<form method="post" action="/login">', response.body)

    def test_login(self) -> None:
        """Signing in sets an HttpOnly, SameSite=Strict cookie that opens reading calls."""
        response = self.client.post(
            "/login",
            f"token={ADMIN_TOKEN}".encode(),
            Content_Type="application/x-www-form-urlencoded",
        )
        self.assertEqual((response.status, response.headers.get(b"location")), (303, b"/"))
        cookie = response.headers.get(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        self.assertNotIn(ADMIN_TOKEN.encode(), cookie)
        value = cookie.split(b";")[0].decode()
        self.assertTrue(value.startswith(COOKIE.decode() + "="))
        self.assertEqual(self.client.get("/status", Cookie=value).status, 200)
        self.assertEqual(self.client.get("/", Cookie=value).status, 200)
        # Reading only: a cookie never changes anything.
        self.assertEqual(self.client.post("/reload", Cookie=value).status, 401)

    def test_login_wrong(self) -> None:
        """A wrong token on the form is 401 with the form again."""
        response = self.client.post(
            "/login", b"token=nope", Content_Type="application/x-www-form-urlencoded"
        )
        self.assertEqual(response.status, 401)
        self.assertIn(b"That token is not valid.", response.body)
        self.assertIsNone(response.headers.get(b"set-cookie"))

    def test_login_token_in_url(self) -> None:
        """The sign-in form reads the token from its body only, never from the URL."""
        response = self.client.post(
            f"/login?token={ADMIN_TOKEN}", b"", Content_Type="application/x-www-form-urlencoded"
        )
        self.assertEqual(response.status, 401)

    def test_forged_cookie(self) -> None:
        """A cookie with another value (the raw token included) is refused."""
        for value in ("x", ADMIN_TOKEN):
            response = self.client.get("/status", Cookie=f"{COOKIE.decode()}={value}")
            self.assertEqual(response.status, 401, value)

    def test_logout(self) -> None:
        """Signing out clears the cookie."""
        response = self.client.post("/logout")
        self.assertEqual(response.status, 303)
        self.assertIn(b"Max-Age=0", response.headers.get(b"set-cookie"))

    def test_token_changed(self) -> None:
        """A new token (reload) takes over at once; old cookies stop working."""
        signed_in = self.client.post(
            "/login", f"token={ADMIN_TOKEN}".encode(), Content_Type="application/x-www-form-urlencoded"
        )
        cookie = signed_in.headers.get(b"set-cookie").split(b";")[0].decode()
        self.client.site.set_token("another-token-0123456789")
        self.assertEqual(self.client.get("/status", **_snake(bearer(ADMIN_TOKEN))).status, 401)
        self.assertEqual(self.client.get("/status", Cookie=cookie).status, 401)
        headers = _snake(bearer("another-token-0123456789"))
        self.assertEqual(self.client.get("/status", **headers).status, 200)

    def test_nothing_secret_logged(self) -> None:
        """Neither the token nor a wrong guess shows in the log."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        headers = _snake(bearer(ADMIN_TOKEN))
        self.client.post("/reload", **headers)
        self.client.post("/cache/purge", b'{"prefix": "/a"}', **headers)
        self.client.post("/login", b"token=guess-123", Content_Type="application/x-www-form-urlencoded")
        self.client.post(
            "/login", f"token={ADMIN_TOKEN}".encode(), Content_Type="application/x-www-form-urlencoded"
        )
        text = "\n".join(formatEvent(event) + repr(event) for event in events)
        self.assertIn("reload requested", text)
        self.assertNotIn(ADMIN_TOKEN, text)
        self.assertNotIn("guess-123", text)


def _snake(headers: dict[str, str]) -> dict[str, str]:
    return {name.replace("-", "_"): value for name, value in headers.items()}


class AdminServiceTests(SynchronousTestCase):
    """L{AdminService} listening on C{gateway.admin.bind}."""

    def setUp(self) -> None:
        self.world = AdminWorld()
        self.reactor = MemoryReactorClock()

    def test_listens(self) -> None:
        """Starting listens on the configured address; stopping stops."""
        service = AdminService(self.world.state(), AdminConfig("127.0.0.1", 9901), self.reactor)
        service.privilegedStartService()
        service.startService()
        [(port, site, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface, site), (9901, "127.0.0.1", service.site))
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)

    def test_every_interface(self) -> None:
        """An empty host (C{:9901}) listens on every interface."""
        service = AdminService(self.world.state(), AdminConfig("", 9901), self.reactor)
        service.startService()
        self.assertEqual(self.reactor.tcpServers[0][3], "::")

    def test_reconfigure(self) -> None:
        """A new bind listens again; a new token applies at once."""
        service = AdminService(self.world.state(), AdminConfig("127.0.0.1", 9901), self.reactor)
        service.startService()
        self.successResultOf(
            service.reconfigure(AdminConfig("127.0.0.1", 9902, token=ADMIN_TOKEN))
        )
        self.assertEqual([server[0] for server in self.reactor.tcpServers], [9901, 9902])
        self.assertTrue(service.site.admin.guard.enabled)
