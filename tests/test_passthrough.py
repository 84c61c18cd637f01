"""
Tests for L{gatewaykit.tunnel.passthrough}: reading the server name from a
TLS ClientHello, and tls_passthrough listeners choosing an upstream by it,
driven over fake transports and a fake reactor.
"""

from __future__ import annotations

from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import parse_config
from gatewaykit.gateway import Gateway
from gatewaykit.testing import TCPStringTransport
from gatewaykit.tunnel.passthrough import (
    MAX_HELLO_BYTES,
    NeedMore,
    NotClientHello,
    PassthroughFactory,
    PassthroughTunnel,
    server_name,
)


def client_hello(name: Optional[str] = None) -> bytes:
    """The first flight of a real OpenSSL client: one record with its ClientHello."""
    connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    connection.set_connect_state()
    if name is not None:
        connection.set_tlsext_host_name(name.encode("ascii"))
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


def in_records(hello: bytes, size: int) -> bytes:
    """The handshake message of C{hello}'s one record, split over records of C{size} bytes."""
    header, body = hello[:5], hello[5:]
    assert int.from_bytes(header[3:5], "big") == len(body)
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(header[:3] + len(piece).to_bytes(2, "big") + piece for piece in pieces)


class ServerNameTests(SynchronousTestCase):
    """L{server_name} on ClientHellos whole, in pieces and broken."""

    def test_name(self) -> None:
        """The SNI of a real ClientHello, lower-cased."""
        self.assertEqual(server_name(client_hello("DB.Example.test")), "db.example.test")

    def test_no_sni(self) -> None:
        """A ClientHello without the extension has no name."""
        self.assertIsNone(server_name(client_hello()))

    def test_tcp_segments(self) -> None:
        """Every prefix of the hello needs more; the whole one gives the name."""
        hello = client_hello("a.test")
        for end in range(len(hello)):
            self.assertRaises(NeedMore, server_name, hello[:end])
        self.assertEqual(server_name(hello), "a.test")

    def test_several_records(self) -> None:
        """A ClientHello split over several TLS records is reassembled."""
        for size in (1, 3, 50):
            hello = in_records(client_hello("a.test"), size)
            self.assertEqual(server_name(hello), "a.test")
            self.assertRaises(NeedMore, server_name, hello[:-1])

    def test_bytes_after(self) -> None:
        """What follows the ClientHello does not matter."""
        self.assertEqual(server_name(client_hello("a.test") + b"\x17\x03\x03junk"), "a.test")

    def test_garbage(self) -> None:
        """Plain HTTP, SSLv2-style hellos and other records are refused at once."""
        for data in (
            b"GET / HTTP/1.1\r\n",
            b"\x80\x2e\x01\x00\x02",
            b"\x17\x03\x01\x00\x05hello",
            b"G",
            b"\x16\x02",
        ):
            self.assertRaises(NotClientHello, server_name, data)
        self.assertRaises(NeedMore, server_name, b"\x16")

    def test_not_client_hello(self) -> None:
        """A handshake record with another message type is refused."""
        self.assertRaises(NotClientHello, server_name, b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")

    def test_oversized(self) -> None:
        """A ClientHello announcing more than the bound is refused before it arrives."""
        size = (MAX_HELLO_BYTES + 1).to_bytes(3, "big")
        self.assertRaises(NotClientHello, server_name, b"\x16\x03\x01\x00\x04\x01" + size)

    def test_truncated_fields(self) -> None:
        """A hello whose fields overrun its length is refused."""
        body = b"\x03\x03" + b"\x00" * 32 + b"\x20"  # a session id longer than what follows
        message = b"\x01" + len(body).to_bytes(3, "big") + body
        record = b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message
        self.assertRaises(NotClientHello, server_name, record)

    def test_bad_host_name(self) -> None:
        """A server name with characters no host name has is refused."""
        hello = client_hello("abc.test")
        self.assertRaises(NotClientHello, server_name, hello.replace(b"abc.test", b"a c.test"))


CONFIG = """
gateway: {node: test-node, access_log: {path: "off"}, limits: {header_timeout: 5s}}
listeners:
  mux:
    protocol: tls_passthrough
    bind: 127.0.0.1:9443
    sni: %s
upstreams:
  db: {targets: ["10.0.0.1:5432"]}
  web: {targets: ["10.0.0.2:443"]}
  fallback: {targets: ["10.0.0.3:443"]}
"""
FULL = '{"db.example.test": db, "*.example.test": web, "*": fallback}'
NO_DEFAULT = '{"db.example.test": db}'


class Passthrough:
    """A tls_passthrough listener's factory on a fake reactor."""

    def __init__(self, sni: str = FULL) -> None:
        self.reactor = MemoryReactorClock()
        self.config = parse_config(CONFIG % sni)
        self.gateway = Gateway(self.config, self.reactor)
        self.factory = PassthroughFactory(self.config.listeners["mux"], self.gateway, self.reactor)

    def connect(self) -> tuple[PassthroughTunnel, TCPStringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        transport = TCPStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9443),
            peerAddress=IPv4Address("TCP", "192.0.2.7", 40000),
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def target(self, index: int = -1) -> str:
        host, port = self.reactor.tcpClients[index][:2]
        return f"{host}:{port}"

    def accept(self, index: int = -1) -> TCPStringTransport:
        factory: Any = self.reactor.tcpClients[index][2]
        side = factory.buildProtocol(None)
        transport = TCPStringTransport()
        side.makeConnection(transport)
        return transport


class PassthroughTunnelTests(SynchronousTestCase):
    """Routing by the ClientHello, then a byte tunnel."""

    def route(self, data: bytes, sni: str = FULL) -> tuple[Passthrough, TCPStringTransport]:
        passthrough = Passthrough(sni)
        _, transport = passthrough.connect()
        _.dataReceived(data)
        return passthrough, transport

    def test_exact(self) -> None:
        """An exact name goes to its upstream."""
        passthrough, _ = self.route(client_hello("db.example.test"))
        self.assertEqual(passthrough.target(), "10.0.0.1:5432")

    def test_wildcard(self) -> None:
        """A name under a wildcard goes to its upstream, at any depth (as routes)."""
        for name in ("www.example.test", "a.b.example.test"):
            passthrough, _ = self.route(client_hello(name))
            self.assertEqual(passthrough.target(), "10.0.0.2:443")

    def test_default(self) -> None:
        """Other names, no SNI and non-TLS bytes go to "*"."""
        for data in (client_hello("other.test"), client_hello(), b"SSH-2.0-x\r\n"):
            passthrough, _ = self.route(data)
            self.assertEqual(passthrough.target(), "10.0.0.3:443")

    def test_no_default_closes(self) -> None:
        """Without "*", what matches nothing is closed without connecting."""
        for data in (client_hello("other.test"), client_hello(), b"GET / HTTP/1.1\r\n"):
            passthrough, transport = self.route(data, NO_DEFAULT)
            self.assertEqual((passthrough.reactor.tcpClients, transport.disconnecting), ([], True))

    def test_waits_for_whole_hello(self) -> None:
        """No target is chosen until the ClientHello is complete."""
        passthrough = Passthrough()
        protocol, _ = passthrough.connect()
        hello = in_records(client_hello("db.example.test"), 40)
        for byte in range(len(hello) - 1):
            protocol.dataReceived(hello[byte : byte + 1])
        self.assertEqual(passthrough.reactor.tcpClients, [])
        protocol.dataReceived(hello[-1:])
        self.assertEqual(passthrough.target(), "10.0.0.1:5432")
        self.assertEqual(protocol.server_name, "db.example.test")

    def test_replays_hello(self) -> None:
        """The target gets the ClientHello first, then the rest, byte for byte."""
        passthrough = Passthrough()
        protocol, client = passthrough.connect()
        hello = client_hello("db.example.test")
        protocol.dataReceived(hello[:10])
        protocol.dataReceived(hello[10:] + b"more")
        self.assertEqual(client.producerState, "paused")
        target = passthrough.accept()
        protocol.dataReceived(b" and more")
        self.assertEqual(target.value(), hello + b"more and more")
        self.assertEqual(client.producerState, "producing")
        protocol.target_side.dataReceived(b"server hello")
        self.assertEqual(client.value(), b"server hello")
        self.assertEqual(passthrough.factory.bytes_in, len(hello) + 13)

    def test_timeout_without_bytes(self) -> None:
        """A client that sends nothing is dropped after header_timeout."""
        passthrough = Passthrough()
        _, transport = passthrough.connect()
        passthrough.reactor.advance(5)
        self.assertTrue(transport.disconnected)
        self.assertEqual(passthrough.reactor.tcpClients, [])

    def test_timeout_partial(self) -> None:
        """A partial ClientHello that stops coming goes to "*"."""
        passthrough = Passthrough()
        protocol, _ = passthrough.connect()
        protocol.dataReceived(client_hello("db.example.test")[:20])
        passthrough.reactor.advance(5)
        self.assertEqual(passthrough.target(), "10.0.0.3:443")

    def test_eof_before_hello(self) -> None:
        """A client ending its side before a whole ClientHello is closed."""
        passthrough = Passthrough()
        protocol, transport = passthrough.connect()
        protocol.dataReceived(b"\x16\x03")
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(passthrough.reactor.tcpClients, [])

    def test_lost_before_hello(self) -> None:
        """A client gone before routing leaves nothing counted."""
        passthrough = Passthrough()
        protocol, _ = passthrough.connect()
        protocol.connectionLost()
        self.assertEqual(passthrough.factory.connections, set())
        self.assertEqual(passthrough.gateway.upstreams["fallback"].in_flight, 0)

    def test_reconfigure(self) -> None:
        """A new sni mapping routes new connections."""
        passthrough = Passthrough()
        listener = parse_config(CONFIG % '{"db.example.test": web}').listeners["mux"]
        passthrough.factory.listener = listener  # as a reload does
        protocol, _ = passthrough.connect()
        protocol.dataReceived(client_hello("db.example.test"))
        self.assertEqual(passthrough.target(), "10.0.0.2:443")
