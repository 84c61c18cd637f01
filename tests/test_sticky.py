"""
Tests for L{gatewaykit.upstream.sticky}: session affinity through the
state store.
"""

from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.model import PoolConfig, RetryConfig, StickyConfig
from gatewaykit.state import StoreUnavailable
from gatewaykit.testing import GatewayHarness, make_config, parse_response, route, upstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def harness(**upstream_kwargs) -> GatewayHarness:
    return GatewayHarness(
        make_config(
            routes=[route("app", path_prefix="/", upstream="app")],
            upstreams=[
                upstream(
                    "app",
                    "10.0.0.1:80",
                    "10.0.0.2:80",
                    "10.0.0.3:80",
                    sticky=StickyConfig(cookie="sid", ttl=600),
                    # A new connection per request shows each request's target.
                    pool=PoolConfig(max_idle_per_target=0),
                    **upstream_kwargs,
                )
            ],
        )
    )


def request(gateway: GatewayHarness, cookie: bytes = b"") -> tuple:
    """Send a GET (with a sid cookie if given), answer it, return (target host, response)."""
    client, transport = gateway.connect()
    extra = b"Cookie: sid=" + cookie + b"\r\n" if cookie else b""
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")
    host = gateway.reactor.tcpClients[-1][0]
    gateway.accept_upstream()[0].dataReceived(OK)
    return host, parse_response(transport.value())


def session_of(response) -> bytes:
    cookie = response.headers.get("set-cookie")
    return cookie.split(b";")[0].split(b"=", 1)[1]


class StickyTests(SynchronousTestCase):
    """One session, one target."""

    def test_first_response_sets_cookie(self):
        """A request without the cookie gets one: HttpOnly, SameSite, Max-Age."""
        host, response = request(harness())
        cookie = response.headers.get("set-cookie")
        self.assertRegex(cookie, rb"^sid=[0-9a-f]{32}; Path=/; Max-Age=600; HttpOnly; SameSite=Lax$")

    def test_same_target_for_session(self):
        """Later requests with the cookie go to the target that served the first."""
        gateway = harness()
        first, response = request(gateway)
        session = session_of(response)
        hosts = {request(gateway, session)[0] for _ in range(6)}
        self.assertEqual(hosts, {first})

    def test_no_new_cookie_for_known_session(self):
        """A request carrying a valid session gets no new cookie."""
        gateway = harness()
        _, response = request(gateway)
        _, again = request(gateway, session_of(response))
        self.assertIsNone(again.headers.get("set-cookie"))

    def test_moves_when_target_unavailable(self):
        """When the session's target is down, the session moves and stays on the new one."""
        gateway = harness()
        first, response = request(gateway)
        session = session_of(response)
        targets = gateway.gateway.upstreams["app"].targets
        next(t for t in targets if t.host == first).healthy = False
        moved = {request(gateway, session)[0] for _ in range(5)}
        self.assertEqual(len(moved), 1)
        self.assertNotIn(first, moved)

    def test_moves_after_retry(self):
        """A session whose target refuses is retried elsewhere and remembered there."""
        gateway = harness(retries=RetryConfig(attempts=1, on=("connect_failure",)))
        first, response = request(gateway)
        session = session_of(response)
        client, transport = gateway.connect()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: sid=" + session + b"\r\n\r\n")
        self.assertEqual(gateway.reactor.tcpClients[-1][0], first)
        gateway.refuse_upstream(ConnectionRefusedError())
        second = gateway.reactor.tcpClients[-1][0]
        self.assertNotEqual(second, first)
        gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertEqual({request(gateway, session)[0] for _ in range(3)}, {second})

    def test_malformed_cookie_replaced(self):
        """A cookie that is not a session id is ignored and a new session started."""
        _, response = request(harness(), b"../../etc")
        self.assertIsNotNone(response.headers.get("set-cookie"))

    def test_store_down_still_served(self):
        """With the store away, requests are balanced as usual and still answered."""
        gateway = harness()
        store = gateway.gateway.store
        self.patch(store, "get", lambda key: fail(StoreUnavailable("down")))
        self.patch(store, "set", lambda key, value, ttl: fail(StoreUnavailable("down")))
        _, response = request(gateway, b"0" * 32)
        self.assertEqual(response.status, 200)
        self.flushLoggedErrors(StoreUnavailable)
