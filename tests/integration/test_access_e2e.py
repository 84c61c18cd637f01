"""
End-to-end tests of access control and sessions: a real C{twistd
gatewaykit} process with C{ip_filter}, C{cors} and C{session} policies
between curl and a real upstream, all on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from tests.integration import support

APP = "https://app.example.com"
SECRET = "an end-to-end test secret of 32+ bytes"


def _seen(response: support.Response) -> dict[str, list[str]]:
    """The header fields the upstream's C{/headers} reported, by lower-case name."""
    fields: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        fields.setdefault(name.lower(), []).append(value)
    return fields


class IPFilterTests(support.GatewayTestCase):
    """ip_filter in front of a real upstream."""

    timeout = 120

    @defer.inlineCallbacks
    def test_refusal_never_reaches_upstream(self) -> support.Steps:
        """A refused client gets 403 forbidden and the upstream sees nothing; an allowed one passes."""
        upstream = self.start_upstream()
        config = support.proxy_config(
            upstream.port,
            routes=({"name": "local", "match": {"path": "/headers"}, "upstream": "app"},),
        )
        support.with_policies(
            config,
            {
                "office": {"type": "ip_filter", "allow": ["10.0.0.0/8"]},
                "loopback": {"type": "ip_filter", "allow": ["127.0.0.0/8", "::1"]},
            },
            all=["office"],
            local=["loopback"],
        )
        gateway = yield self.start_gateway(config)
        # No trusted proxies: a client naming an office address is not believed.
        refused = yield support.curl(
            self, gateway.url("/echo"), "-H", "X-Forwarded-For: 10.1.2.3"
        )
        self.assertEqual(refused.status, 403)
        self.assertEqual(refused.header("Content-Type"), "application/problem+json")
        self.assertEqual(refused.json()["type"], "urn:gatewaykit:error:forbidden")
        self.assertEqual(upstream.requests, 0)
        allowed = yield support.curl(self, gateway.url("/headers"))
        self.assertEqual((allowed.status, upstream.requests), (200, 1))


class CORSTests(support.GatewayTestCase):
    """cors in front of a real upstream."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        upstream = self.start_upstream()
        config = support.with_policies(
            support.proxy_config(upstream.port),
            {
                "cors": {
                    "type": "cors",
                    "origins": [APP],
                    "methods": ["GET", "PUT"],
                    "headers": ["X-Token"],
                    "expose_headers": ["X-Request-ID"],
                    "credentials": True,
                    "max_age": "10m",
                }
            },
            all=["cors"],
        )
        gateway = yield self.start_gateway(config)
        return gateway, upstream

    def preflight(self, gateway: Any, origin: str) -> defer.Deferred:
        return support.curl(
            self,
            gateway.url("/headers"),
            "-X",
            "OPTIONS",
            "-H",
            f"Origin: {origin}",
            "-H",
            "Access-Control-Request-Method: PUT",
            "-H",
            "Access-Control-Request-Headers: x-token",
        )

    @defer.inlineCallbacks
    def test_preflight_answered_by_gateway(self) -> support.Steps:
        """An allowed preflight is answered 204 by the gateway; the upstream sees nothing."""
        gateway, upstream = yield self.start()
        response = yield self.preflight(gateway, APP)
        self.assertEqual(response.status, 204)
        self.assertEqual(response.header("Access-Control-Allow-Origin"), APP)
        self.assertEqual(response.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(response.header("Access-Control-Allow-Methods"), "GET, PUT")
        self.assertEqual(response.header("Access-Control-Allow-Headers"), "X-Token")
        self.assertEqual(response.header("Access-Control-Max-Age"), "600")
        self.assertEqual(upstream.requests, 0)

    @defer.inlineCallbacks
    def test_preflight_refused(self) -> support.Steps:
        """A preflight from another origin gets 403 without Access-Control-* fields."""
        gateway, upstream = yield self.start()
        response = yield self.preflight(gateway, "https://evil.example.net")
        self.assertEqual(response.status, 403)
        self.assertEqual(
            [n for n, _ in response.fields if n.lower().startswith("access-control-")], []
        )
        self.assertEqual(upstream.requests, 0)

    @defer.inlineCallbacks
    def test_actual_request(self) -> support.Steps:
        """The actual request reaches the upstream and its response carries the CORS fields."""
        gateway, upstream = yield self.start()
        response = yield support.curl(self, gateway.url("/headers"), "-H", f"Origin: {APP}")
        self.assertEqual((response.status, upstream.requests), (200, 1))
        self.assertEqual(response.header("Access-Control-Allow-Origin"), APP)
        self.assertEqual(response.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(response.header("Access-Control-Expose-Headers"), "X-Request-ID")
        self.assertIn("Origin", response.headers("Vary"))


class SessionTests(support.GatewayTestCase):
    """session in front of a real upstream."""

    timeout = 120

    @defer.inlineCallbacks
    def test_session_across_requests(self) -> support.Steps:
        """
        A login response sets the cookie; the next request with it brings the
        same session, whose user goes upstream in X-User (never the client's).
        """
        upstream = self.start_upstream()
        login = {
            "name": "login",
            "match": {"path": "/login"},
            "respond": {"status": 200, "body": "welcome\n", "headers": {"X-Session-User": "alice"}},
        }
        config = support.with_policies(
            support.proxy_config(upstream.port, routes=(login,)),
            {
                "session": {
                    "type": "session",
                    "secret": SECRET,
                    "ttl": "5m",
                    "from_response": {"X-Session-User": "user"},
                    "forward": {"user": "X-User"},
                }
            },
            login=["session"],
            all=["session"],
        )
        gateway = yield self.start_gateway(config)

        first = yield support.curl(self, gateway.url("/login"))
        self.assertEqual(first.status, 200)
        self.assertIsNone(first.header("X-Session-User"))
        set_cookie = first.header("Set-Cookie")
        assert set_cookie is not None
        cookie, *attributes = [part.strip() for part in set_cookie.split(";")]
        self.assertTrue(cookie.startswith("gk_session="))
        self.assertEqual(attributes, ["Path=/", "HttpOnly", "SameSite=Lax"])

        second = yield support.curl(
            self,
            gateway.url("/headers"),
            "-H",
            f"Cookie: theme=dark; {cookie}",
            "-H",
            "X-User: mallory",
        )
        seen = _seen(second)
        self.assertEqual(seen.get("x-user"), ["alice"])
        self.assertEqual(seen.get("cookie"), ["theme=dark"])
        self.assertIsNone(second.header("Set-Cookie"))

        anonymous = yield support.curl(self, gateway.url("/headers"), "-H", "X-User: mallory")
        self.assertIsNone(_seen(anonymous).get("x-user"))
        self.assertIsNone(anonymous.header("Set-Cookie"))
