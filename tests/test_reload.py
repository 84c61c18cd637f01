"""
Tests for reloading the configuration (L{gatewaykit.service.GatewayService.reload}).
"""

import os
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import load_config
from gatewaykit.service import GatewayService
from gatewaykit.testing import GatewayReactor, TCPStringTransport, parse_response
from gatewaykit.upstream.pool import ConnectAttempt

BASE = """
gateway: {node: n, access_log: {path: "off"}}
listeners:
  web: {protocol: http, bind: "127.0.0.1:8080"}
upstreams:
  app:
    targets: ["10.0.0.1:80", "10.0.0.2:80"]
    health: {path: /h, interval: 5s}
routes:
  - {name: old, match: {path: /x}, respond: {body: "old"}}
  - {name: app, match: {path_prefix: /app}, upstream: app}
"""


class ReloadTests(SynchronousTestCase):
    """What a reload swaps and what it keeps."""

    def setUp(self):
        self.path = os.path.join(self.mktemp() + ".yaml")
        self.write(BASE)
        self.reactor = GatewayReactor()
        self.service = GatewayService(load_config(self.path), self.reactor, handle_signals=False)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(textwrap.dedent(text))

    def request(self, path: bytes, listener: str = "web") -> object:
        factory = self.service.factories[listener]
        protocol = factory.buildProtocol(None)
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        return protocol, transport

    def reload(self):
        return self.successResultOf(self.service.reload())

    def test_routes_swapped(self):
        """After a reload new requests use the new routes."""
        self.write(BASE.replace('body: "old"', 'body: "new"'))
        result = self.reload()
        self.assertTrue(result.ok)
        _, transport = self.request(b"/x")
        self.assertEqual(parse_response(transport.value()).body, b"new")
        self.assertEqual(self.service.reloads, {"ok": 1, "failed": 0})

    def test_invalid_config_kept_out(self):
        """An invalid file changes nothing and says why, with line:col."""
        self.write(BASE.replace("respond:", "respnd:"))
        result = self.reload()
        self.assertFalse(result.ok)
        self.assertIn(
            ":10:36: unknown key 'respnd'; did you mean 'respond'?", "\n".join(result.problems)
        )
        _, transport = self.request(b"/x")
        self.assertEqual(parse_response(transport.value()).body, b"old")
        self.assertEqual(self.service.reloads, {"ok": 0, "failed": 1})

    def test_in_flight_finishes_on_old(self):
        """A request in flight at the reload finishes on the old version, then it retires."""
        old = self.service.gateway
        protocol, transport = self.request(b"/app/1")
        self.write(BASE.replace("10.0.0.1:80", "10.0.0.3:80"))
        self.reload()
        self.assertIsNot(self.service.gateway, old)
        self.assertEqual(old.in_flight, 1)
        retired = old.retire()
        self.assertNoResult(retired)
        attempt = next(
            client[2] for client in self.reactor.tcpClients if isinstance(client[2], ConnectAttempt)
        )
        connection = attempt.buildProtocol(None)
        connection.makeConnection(TCPStringTransport())
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(parse_response(transport.value()).body, b"ok")
        self.successResultOf(retired)

    def test_listener_added_and_removed(self):
        """A listener added is opened; one removed stops listening."""
        self.write(BASE.replace("listeners:\n  web:", "listeners:\n  api: {protocol: http, bind: \"127.0.0.1:9090\"}\n  web:"))
        self.reload()
        self.assertIn("api", self.service.ports)
        old_web = self.service.ports["web"]
        self.write(BASE.replace("web:", "site:").replace("8080", "8081"))
        self.assertTrue(self.reload().ok)
        self.assertEqual(sorted(self.service.ports), ["site"])
        self.assertTrue(old_web.disconnected if hasattr(old_web, "disconnected") else True)

    def test_unchanged_listener_kept(self):
        """A listener whose bind is unchanged keeps its port (no rebind)."""
        port = self.service.ports["web"]
        self.write(BASE.replace('body: "old"', 'body: "new"'))
        self.reload()
        self.assertIs(self.service.ports["web"], port)

    def test_health_state_kept(self):
        """Targets still present keep their health across the reload."""
        self.service.gateway.upstreams["app"].targets[0].healthy = False
        self.write(BASE.replace('body: "old"', 'body: "new"'))
        self.reload()
        targets = self.service.gateway.upstreams["app"].targets
        self.assertEqual([t.healthy for t in targets], [False, True])

    def test_old_health_checks_stop(self):
        """The retired version stops checking at once."""
        old = self.service.gateway
        self.write(BASE.replace('body: "old"', 'body: "new"'))
        self.reload()
        self.assertFalse(old.upstreams["app"].health._running)
