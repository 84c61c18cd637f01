"""
Tests for L{gatewaykit.writethrough}: on real loopback TCP connections, since
what it changes is how bytes reach a real socket.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gatewaykit.writethrough import write


class Collector(Protocol):
    """Keeps what it receives; C{expect(n)} fires once C{n} bytes arrived."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._waiting: list[tuple[int, Deferred[bytes]]] = []
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self._waiting):
            if len(self.received) >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(bytes(self.received))

    def expect(self, size: int) -> Deferred[bytes]:
        done: Deferred[bytes] = Deferred()
        self._waiting.append((size, done))
        self.dataReceived(b"")
        return done

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class Sender(Protocol):
    def __init__(self) -> None:
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class WriteThroughTests(TestCase):
    """L{write} on a plain TCP transport."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.collector = Collector()
        server_factory = Factory.forProtocol(lambda: self.collector)
        self.port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.sender = Sender()
        client_factory = ClientFactory.forProtocol(lambda: self.sender)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, client_factory)
        yield self.sender.made
        self.transport: Any = self.sender.transport

    @inlineCallbacks
    def tearDown(self) -> Any:
        if not self.transport.disconnected:
            self.transport.loseConnection()
            yield self.sender.lost
        yield self.collector.lost

    @inlineCallbacks
    def test_sent_at_once(self) -> Any:
        """With nothing queued, the bytes go to the socket at once, nothing is buffered."""
        write(self.transport, b"hello")
        self.assertEqual((self.transport.dataBuffer, self.transport._tempDataLen), (b"", 0))
        self.assertFalse(self.transport in reactor.getWriters())
        self.assertEqual((yield self.collector.expect(5)), b"hello")

    @inlineCallbacks
    def test_after_queued_bytes(self) -> Any:
        """Bytes queued by the transport first are not overtaken."""
        self.transport.write(b"first ")
        write(self.transport, b"second")
        self.assertEqual((yield self.collector.expect(12)), b"first second")

    @inlineCallbacks
    def test_more_than_the_socket_takes(self) -> Any:
        """What the socket does not take is buffered by the transport and follows in order."""
        data = bytes(range(256)) * (32 * 1024)  # 8 MiB, more than a loopback socket buffer
        write(self.transport, data)
        self.assertGreater(self.transport._tempDataLen, 0)
        write(self.transport, b"end")
        self.assertEqual((yield self.collector.expect(len(data) + 3)), data + b"end")

    def failing_send(self, errno: int) -> None:
        """Make the transport's socket's C{send} fail with C{errno} for this test."""
        real = self.transport.socket

        class Failing:
            def send(self, data: bytes) -> int:
                raise OSError(errno, os.strerror(errno))

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        self.transport.socket = Failing()
        self.addCleanup(setattr, self.transport, "socket", real)

    def test_socket_full(self) -> None:
        """EAGAIN from send: the bytes are queued on the transport."""
        self.failing_send(errno.EAGAIN)
        write(self.transport, b"queued")
        self.assertEqual(self.transport._tempDataBuffer, [b"queued"])

    def test_send_error(self) -> None:
        """Another send error is left for the transport to meet: the bytes are queued."""
        self.failing_send(errno.EPIPE)
        write(self.transport, b"queued")
        self.assertEqual(self.transport._tempDataBuffer, [b"queued"])

    @inlineCallbacks
    def test_closing(self) -> Any:
        """After loseConnection, bytes go the transport's way: queued, sent before the close."""
        self.transport.loseConnection()
        write(self.transport, b"late")
        self.assertEqual(self.transport._tempDataLen, 4)
        yield self.sender.lost
        yield self.collector.lost
        self.assertEqual(bytes(self.collector.received), b"late")

    @inlineCallbacks
    def test_aborted(self) -> Any:
        """After abortConnection, nothing more is sent."""
        self.transport.abortConnection()
        write(self.transport, b"late")
        yield self.sender.lost
        yield self.collector.lost
        self.assertEqual(bytes(self.collector.received), b"")


class OtherTransportTests(SynchronousTestCase):
    """Transports other than plain TCP get an ordinary write."""

    def test_string_transport(self) -> None:
        transport = StringTransport()
        write(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_empty(self) -> None:
        transport = StringTransport()
        write(transport, b"")
        self.assertEqual(transport.value(), b"")
