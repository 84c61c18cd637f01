"""
Tests for WebSocket proxying: the upgrade handshake through a route, the
switch to a byte tunnel, and what is refused.
"""

import os
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.errors import ConfigError
from gatewaykit.config.loader import parse_config
from gatewaykit.config.model import Limits, PolicyConfig, WebSocketConfig
from gatewaykit.testing import GatewayHarness, make_config, parse_response, route, upstream
from tests.test_policy_chain import ScriptedFactory

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def harness(websocket=WebSocketConfig(), policies=(), limits=Limits()) -> GatewayHarness:
    config = make_config(
        routes=[
            route("ws", path="/ws", upstream="app", websocket=websocket, policies=tuple(policies))
        ],
        upstreams=[upstream("app", "10.0.0.1:80")],
        policies=[PolicyConfig(name, "test.scripted", {"do": name}) for name in policies],
        limits=limits,
    )
    return GatewayHarness(config, policy_types={"test.scripted": ScriptedFactory()})


class Tunnel:
    """A client that asked to switch, and the upstream connection its request opened."""

    def __init__(self, gateway: GatewayHarness, handshake: bytes = HANDSHAKE) -> None:
        self.client, self.client_transport = gateway.connect()
        self.client.dataReceived(handshake)
        self.upstream, self.upstream_transport = gateway.accept_upstream()

    def switch(self, extra: bytes = b"") -> None:
        self.upstream.dataReceived(SWITCH + extra)
        self.client_transport.clear()
        self.upstream_transport.clear()


class HandshakeTests(SynchronousTestCase):
    """The handshake on its way up and the answer on its way back."""

    def test_upgrade_forwarded(self):
        """The upstream gets Connection: Upgrade, Upgrade and the Sec-WebSocket fields."""
        tunnel = Tunnel(harness())
        head = tunnel.upstream_transport.value()
        self.assertIn(b"Connection: Upgrade\r\nUpgrade: websocket\r\n", head)
        self.assertIn(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", head)
        self.assertIn(b"X-Forwarded-For: 127.0.0.1\r\n", head)

    def test_switch_relayed(self):
        """The 101 reaches the client with Upgrade, Connection and the accept key."""
        tunnel = Tunnel(harness())
        tunnel.upstream.dataReceived(SWITCH)
        answer = tunnel.client_transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"Connection: Upgrade\r\n", answer)
        self.assertIn(b"Upgrade: websocket\r\n", answer)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", answer)
        self.assertNotIn(b"Content-Length", answer)
        self.assertNotIn(b"Connection: close", answer)

    def test_not_switched_relayed(self):
        """A non-101 answer is relayed as a normal response and no tunnel starts."""
        tunnel = Tunnel(harness())
        tunnel.upstream.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        response = parse_response(tunnel.client_transport.value())
        self.assertEqual((response.status, response.body), (403, b"no"))

    def test_route_without_websocket(self):
        """On a route without websocket the upgrade is not passed on."""
        tunnel = Tunnel(harness(websocket=None))
        head = tunnel.upstream_transport.value().lower()
        self.assertNotIn(b"upgrade: websocket", head)
        self.assertNotIn(b"connection: upgrade", head)

    def test_unasked_switch_is_502(self):
        """An upstream switching protocols on a plain request is a 502."""
        tunnel = Tunnel(harness(websocket=None))
        tunnel.upstream.dataReceived(SWITCH)
        self.assertEqual(parse_response(tunnel.client_transport.value()).status, 502)

    def test_policy_refusal_never_upstream(self):
        """A policy answering the handshake (here 403) means no upstream connection."""
        gateway = harness(policies=["answer"])
        client, transport = gateway.connect()
        client.dataReceived(HANDSHAKE)
        self.assertEqual(parse_response(transport.value()).status, 403)
        self.assertEqual(gateway.reactor.tcpClients, [])

    def test_tunnel_cap(self):
        """Beyond max_tunnels on the route, a handshake gets 503 at once."""
        gateway = harness(websocket=WebSocketConfig(max_tunnels=1))
        Tunnel(gateway).switch()
        client, transport = gateway.connect()
        client.dataReceived(HANDSHAKE)
        self.assertEqual(parse_response(transport.value()).status, 503)
        self.assertEqual(len(gateway.reactor.tcpClients), 1)


class TunnelTests(SynchronousTestCase):
    """After the 101: bytes, ends and timeouts."""

    def test_bytes_both_ways(self):
        """Bytes from either side reach the other unchanged."""
        tunnel = Tunnel(harness())
        tunnel.switch()
        tunnel.client.dataReceived(b"\x81\x05hello")
        tunnel.upstream.dataReceived(b"\x81\x05world")
        self.assertEqual(tunnel.upstream_transport.value(), b"\x81\x05hello")
        self.assertEqual(tunnel.client_transport.value(), b"\x81\x05world")

    def test_early_bytes_kept(self):
        """Frames sent right behind the handshake, and right behind the 101, are not lost."""
        gateway = harness()
        tunnel = Tunnel(gateway, HANDSHAKE + b"\x81\x02hi")
        self.assertNotIn(b"\x81\x02hi", tunnel.upstream_transport.value())
        tunnel.upstream.dataReceived(SWITCH + b"\x81\x02yo")
        self.assertTrue(tunnel.upstream_transport.value().endswith(b"\x81\x02hi"))
        self.assertTrue(tunnel.client_transport.value().endswith(b"\x81\x02yo"))

    def test_counted(self):
        """The listener counts the tunnel's bytes each way."""
        gateway = harness()
        tunnel = Tunnel(gateway)
        tunnel.switch()
        tunnel.client.dataReceived(b"123")
        tunnel.upstream.dataReceived(b"12345")
        factory = gateway.factory
        self.assertEqual((factory.tunnel_bytes_in, factory.tunnel_bytes_out), (3, 5))

    def test_active_counted(self):
        """The listener counts open tunnels, down again when one ends."""
        gateway = harness()
        tunnel = Tunnel(gateway)
        tunnel.switch()
        self.assertEqual(gateway.factory.tunnels_active, 1)
        tunnel.upstream.connectionLost(Failure(ConnectionDone()))
        tunnel.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(gateway.factory.tunnels_active, 0)

    def test_drain_leaves_tunnel(self):
        """Draining on shutdown leaves an open tunnel carrying bytes (until the drain timeout)."""
        gateway = harness()
        tunnel = Tunnel(gateway)
        tunnel.switch()
        tunnel.client.drain()
        self.assertFalse(tunnel.client_transport.disconnecting)
        self.assertFalse(tunnel.client_transport.write_closed)
        tunnel.upstream.dataReceived(b"still here")
        self.assertEqual(tunnel.client_transport.value(), b"still here")

    def test_backpressure(self):
        """Each side's transport produces into the other's."""
        tunnel = Tunnel(harness())
        tunnel.switch()
        self.assertIs(tunnel.client_transport.producer, tunnel.upstream_transport)
        self.assertIs(tunnel.upstream_transport.producer, tunnel.client_transport)

    def test_client_half_close(self):
        """The client shutting its side down shuts the upstream's write side."""
        tunnel = Tunnel(harness())
        tunnel.switch()
        tunnel.client.readConnectionLost()
        self.assertTrue(tunnel.upstream_transport.write_closed)
        self.assertFalse(tunnel.upstream_transport.disconnecting)

    def test_upstream_gone_closes_client(self):
        """The upstream going away closes the client after what was written."""
        tunnel = Tunnel(harness())
        tunnel.switch()
        tunnel.upstream.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(tunnel.client_transport.disconnecting)

    def test_idle_timeout(self):
        """A tunnel without a byte for idle_timeout is closed."""
        gateway = harness(websocket=WebSocketConfig(idle_timeout=30.0))
        tunnel = Tunnel(gateway)
        tunnel.switch()
        gateway.reactor.advance(20)
        tunnel.client.dataReceived(b"x")
        gateway.reactor.advance(20)
        self.assertFalse(tunnel.client_transport.disconnecting)
        gateway.reactor.advance(11)
        self.assertTrue(tunnel.client_transport.disconnecting)
        self.assertTrue(tunnel.upstream_transport.disconnecting)

    def test_request_accounted_at_switch(self):
        """The handshake counts as answered (101) once switched: the config version can retire."""
        gateway = harness()
        tunnel = Tunnel(gateway)
        self.assertEqual(gateway.gateway.in_flight, 1)
        tunnel.switch()
        self.assertEqual(gateway.gateway.in_flight, 0)
        self.successResultOf(gateway.gateway.retire())
        tunnel.client.dataReceived(b"after retire")
        self.assertEqual(tunnel.upstream_transport.value(), b"after retire")

    def test_target_counts_tunnel(self):
        """The target counts an open tunnel in flight until it ends."""
        gateway = harness()
        target = gateway.gateway.upstreams["app"].targets[0]
        tunnel = Tunnel(gateway)
        tunnel.switch()
        self.assertEqual(target.in_flight, 1)
        tunnel.client.connectionLost(Failure(ConnectionDone()))
        tunnel.upstream.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(target.in_flight, 0)


class WebSocketConfigTests(SynchronousTestCase):
    """The C{routes[].websocket} key."""

    def parse(self, route: str) -> Any:
        text = (
            "listeners: {web: {protocol: http, bind: ':8080'}}\n"
            "upstreams: {app: {targets: ['127.0.0.1:9001']}}\n"
            f"routes: [{route}]\n"
        )
        return parse_config(text, "gw.yaml", base_dir=os.getcwd())

    def test_forms(self):
        """true, false, or a mapping of max_tunnels and idle_timeout."""
        for written, expected in [
            ("true", WebSocketConfig()),
            ("false", None),
            ("{max_tunnels: 10, idle_timeout: 5m}", WebSocketConfig(10, 300.0)),
        ]:
            config = self.parse(f"{{name: ws, upstream: app, websocket: {written}}}")
            self.assertEqual(config.routes[0].websocket, expected)

    def test_only_on_proxied_routes(self):
        """A route that answers by itself cannot tunnel: refused with the reason."""
        error = self.assertRaises(
            ConfigError, self.parse, "{name: ws, respond: {status: 200}, websocket: true}"
        )
        self.assertEqual(
            [str(problem).partition(": ")[2] for problem in error.problems],
            ["websocket goes with upstream or split: only a proxied route can tunnel"],
        )

    def test_bad_option(self):
        """An unknown option or a negative cap is an error."""
        for written in ("{max_tunnel: 1}", "{max_tunnels: -1}"):
            self.assertRaises(
                ConfigError, self.parse, f"{{name: ws, upstream: app, websocket: {written}}}"
            )
