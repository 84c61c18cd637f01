"""
Tests for L{gatewaykit.upstream.tls}: https upstreams' connections, made
through the pool with real TLS handshakes against an in-memory server.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from OpenSSL import crypto
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import parse_config
from gatewaykit.config.model import UpstreamConfig
from gatewaykit.plugins import balancer_factories
from gatewaykit.testing import GatewayReactor
from gatewaykit.upstream.cluster import Upstream
from gatewaykit.upstream.connection import UpstreamConnection
from gatewaykit.upstream.pool import ConnectionPool
from gatewaykit.upstream.target import Target
from gatewaykit.upstream.tls import TLSUpstreamConnection
from tests.fixtures.tls import Authority, Recorder, write_pair

AUTHORITY = Authority()


class Waiter:
    """A pool waiter keeping what it was told."""

    def __init__(self) -> None:
        self.connection: Optional[UpstreamConnection] = None
        self.reused: Optional[bool] = None
        self.failure: Optional[Failure] = None

    def connected(self, connection: UpstreamConnection, reused: bool) -> None:
        self.connection, self.reused = connection, reused

    def connect_failed(self, reason: Failure) -> None:
        self.failure = reason


def server_factory(
    names: list[str], authority: Authority = AUTHORITY, client_ca: Optional[Authority] = None
) -> tuple[TLSMemoryBIOFactory, list[Recorder]]:
    """A TLS server for C{names}, requiring a client certificate from C{client_ca}."""
    certificate, key = authority.issue(names[0], dns=names)
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(certificate),
        verify=client_ca is not None,
        caCerts=[crypto.X509.from_cryptography(client_ca.certificate)] if client_ca else None,
        requireCertificate=client_ca is not None,
    )
    recorders: list[Recorder] = []

    def build() -> Recorder:
        recorders.append(Recorder())
        return recorders[-1]

    return TLSMemoryBIOFactory(options, False, Factory.forProtocol(build)), recorders


class UpstreamTLSTestCase(SynchronousTestCase):
    """An https upstream's pool on a fake reactor, and its log."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        AUTHORITY.write(self.base)
        self.reactor = GatewayReactor()
        self.logged: list[str] = []

        def observe(event: dict) -> None:
            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def upstream(self, tls: str = "{ca: ca.pem}", target: str = "up.test:443") -> UpstreamConfig:
        text = (
            "upstreams:\n  secure:\n"
            f"    targets: ['{target}']\n    scheme: https\n    tls: {tls}\n"
            "    timeouts: {connect: 2s}\n"
        )
        return parse_config(text, base_dir=self.base, environ={}).upstreams["secure"]

    def pool(self, config: UpstreamConfig) -> tuple[ConnectionPool, Target]:
        pool = ConnectionPool(self.reactor, config)
        return pool, Target(config.targets[0])

    def handshake(
        self, pool: ConnectionPool, target: Target, server: TLSMemoryBIOFactory
    ) -> tuple[Waiter, iosim.IOPump, Any]:
        """Acquire a connection and run its handshake with C{server}."""
        waiter = Waiter()
        pool.acquire(target, waiter)
        client = self.reactor.tcpClients[-1][2].buildProtocol(None)
        server_protocol = server.buildProtocol(None)
        pump = iosim.connect(
            server_protocol,
            iosim.FakeTransport(server_protocol, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=self.reactor,
        )
        return waiter, pump, server_protocol


class UpstreamTLSTests(UpstreamTLSTestCase):
    """Verified TLS to a target."""

    def test_wrapped(self) -> None:
        """scheme https connects through TLS; http does not."""
        pool, target = self.pool(self.upstream())
        pool.acquire(target, Waiter())
        self.assertIsInstance(self.reactor.tcpClients[-1][2], TLSMemoryBIOFactory)
        plain = parse_config("upstreams:\n  p: {targets: ['h:80']}\n").upstreams["p"]
        pool, target = self.pool(plain)
        pool.acquire(target, Waiter())
        self.assertNotIsInstance(self.reactor.tcpClients[-1][2], TLSMemoryBIOFactory)

    def test_verified(self) -> None:
        """A certificate for the target's name from the CA: the waiter gets the connection."""
        pool, target = self.pool(self.upstream())
        server, _ = server_factory(["up.test"])
        waiter, _, _ = self.handshake(pool, target, server)
        self.assertIsInstance(waiter.connection, TLSUpstreamConnection)
        self.assertEqual((waiter.reused, waiter.failure), (False, None))
        self.assertEqual(pool.connections_opened, 1)

    def test_handed_out_after_handshake(self) -> None:
        """TCP being up is not enough: nothing is handed out before the handshake."""
        pool, target = self.pool(self.upstream())
        waiter = Waiter()
        pool.acquire(target, waiter)
        client = self.reactor.tcpClients[-1][2].buildProtocol(None)
        client.makeConnection(iosim.FakeTransport(client, isServer=False))
        self.assertIsNone(waiter.connection)

    def test_reused(self) -> None:
        """A released TLS connection is pooled and handed out again."""
        pool, target = self.pool(self.upstream())
        server, _ = server_factory(["up.test"])
        waiter, _, _ = self.handshake(pool, target, server)
        assert waiter.connection is not None
        pool.release(waiter.connection)
        again = Waiter()
        pool.acquire(target, again)
        self.assertEqual((again.connection, again.reused), (waiter.connection, True))
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_name_mismatch(self) -> None:
        """A certificate for another name fails the connect, and the log says why."""
        pool, target = self.pool(self.upstream())
        server, _ = server_factory(["other.test"])
        waiter, _, _ = self.handshake(pool, target, server)
        self.assertIsNone(waiter.connection)
        assert waiter.failure is not None
        self.assertTrue(waiter.failure.check(VerificationError))
        line = [text for text in self.logged if "TLS handshake" in text][-1]
        self.assertIn("upstream secure: TLS handshake with up.test:443 failed:", line)
        self.assertIn("certificate name mismatch", line)
        self.assertIn("'up.test'", line)

    def test_server_name(self) -> None:
        """server_name is the name sent and verified, whatever the target's address."""
        pool, target = self.pool(
            self.upstream("{ca: ca.pem, server_name: api.test}", "127.0.0.1:443")
        )
        server, recorders = server_factory(["api.test"])
        waiter, _, server_protocol = self.handshake(pool, target, server)
        self.assertIsNotNone(waiter.connection)
        self.assertEqual(server_protocol.getHandle().get_servername(), b"api.test")

    def test_unknown_ca(self) -> None:
        """A certificate from a CA not in ca fails, naming the verification error."""
        pool, target = self.pool(self.upstream())
        server, _ = server_factory(["up.test"], authority=Authority("another CA"))
        waiter, _, _ = self.handshake(pool, target, server)
        self.assertIsNotNone(waiter.failure)
        self.assertIn("certificate verify failed", self.logged[-1])

    def test_verify_false(self) -> None:
        """verify: false connects to anyone, and is logged as a warning."""
        pool, target = self.pool(self.upstream("{verify: false}"))
        self.assertTrue(any("tls.verify is false" in text for text in self.logged))
        server, _ = server_factory(["other.test"], authority=Authority("another CA"))
        waiter, _, _ = self.handshake(pool, target, server)
        self.assertIsNotNone(waiter.connection)

    def test_client_certificate(self) -> None:
        """client_cert is presented to a target that asks for one."""
        client_ca = Authority("client CA")
        certificate, key = client_ca.issue("gateway", client=True)
        write_pair(self.base, "client", certificate, key)
        pool, target = self.pool(
            self.upstream("{ca: ca.pem, client_cert: client.pem, client_key: client.key}")
        )
        server, _ = server_factory(["up.test"], client_ca=client_ca)
        waiter, _, server_protocol = self.handshake(pool, target, server)
        self.assertIsNotNone(waiter.connection)
        peer = server_protocol.getPeerCertificate().to_cryptography()
        self.assertEqual(peer, certificate)

    def test_handshake_timeout(self) -> None:
        """A target that never answers the ClientHello fails after the connect timeout."""
        pool, target = self.pool(self.upstream())
        waiter = Waiter()
        pool.acquire(target, waiter)
        client = self.reactor.tcpClients[-1][2].buildProtocol(None)
        silent = Protocol()
        pump = iosim.connect(
            silent,
            iosim.FakeTransport(silent, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=self.reactor,
        )
        self.reactor.advance(2.1)
        pump.flush()
        assert waiter.failure is not None
        self.assertTrue(waiter.failure.check(ConnectTimeout))
        self.assertIn("no handshake in time", self.logged[-1])


class HealthCheckTLSTests(UpstreamTLSTestCase):
    """Active health checks of an https upstream speak TLS too."""

    def test_probe_wrapped(self) -> None:
        """The probe's connection is made through TLS."""
        config = self.upstream("{ca: ca.pem}\n    health: {path: /healthz}")
        upstream = Upstream(config, self.reactor, balancer_factories()["round_robin"])
        upstream.start()
        self.addCleanup(upstream.close)
        self.assertIsInstance(self.reactor.tcpClients[-1][2], TLSMemoryBIOFactory)
