"""
Tests for L{gatewaykit.reactor}: Twisted's epoll reactor without the
per-event log context, on real loopback sockets.
"""

from __future__ import annotations

import socket
from typing import Callable

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python import context, log
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.reactor import GatewayReactor, name_of


class Recorder(Protocol):
    """Records what it receives and the log context it received it in."""

    def __init__(self) -> None:
        self.received = b""
        self.systems: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.systems.append(context.get(log.ILogContext)["system"])
        self.transport.write(data.upper())


class GatewayReactorTests(SynchronousTestCase):
    """A GatewayReactor instance (not installed) serving one connection."""

    def setUp(self) -> None:
        self.reactor = GatewayReactor()
        self.addCleanup(self.reactor._poller.close)
        self.protocols: list[Recorder] = []

        def build() -> Recorder:
            protocol = Recorder()
            self.protocols.append(protocol)
            return protocol

        self.port = self.reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def iterate_until(self, condition: Callable[[], bool], turns: int = 200) -> None:
        for _ in range(turns):
            if condition():
                return
            self.reactor.iterate(0.01)
        self.fail("condition not reached")

    def test_serves_without_log_context(self) -> None:
        """Reads and writes are handled; the handlers see no per-connection log context."""
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(b"hello")
        client.setblocking(False)
        answer: list[bytes] = []

        def answered() -> bool:
            try:
                answer.append(client.recv(100))
            except BlockingIOError:
                return False
            return True

        self.iterate_until(answered)
        self.assertEqual((self.protocols[0].received, answer), (b"hello", [b"HELLO"]))
        # Twisted's own epoll reactor would say "Recorder,0,127.0.0.1".
        self.assertEqual(self.protocols[0].systems, ["-"])

    def test_connection_lost(self) -> None:
        """A peer closing is reported to the protocol."""
        lost = []
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.iterate_until(lambda: bool(self.protocols))
        self.protocols[0].connectionLost = lost.append  # type: ignore[method-assign]
        client.close()
        self.iterate_until(lambda: bool(lost))


class NameTests(SynchronousTestCase):
    """The reactor plugin name a supervisor passes to its workers."""

    def test_names(self) -> None:
        """gatewaykit's reactor and Twisted's epoll by their plugin names; a fake by none."""
        ours, twisteds = GatewayReactor(), EPollReactor()
        self.addCleanup(ours._poller.close)
        self.addCleanup(twisteds._poller.close)
        self.assertEqual(
            (name_of(ours), name_of(twisteds), name_of(MemoryReactor())),
            ("gatewaykit", "epoll", None),
        )
