"""
Tests for L{gatewaykit.batched_write}: on real loopback TCP connections, since
what it changes is how bytes reach a real socket.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gatewaykit import batched_write
from gatewaykit.batched_write import write


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


class Connected(TestCase):
    """A plain TCP transport, C{self.transport}, to a L{Collector} on loopback."""

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

    def failing_send(self, errno: int) -> Any:
        """Make the transport's socket's C{send} fail with C{errno}; returns the undo."""
        real = self.transport.socket

        class Failing:
            def send(self, data: bytes) -> int:
                raise OSError(errno, os.strerror(errno))

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        self.transport.socket = Failing()
        return lambda: setattr(self.transport, "socket", real)

    @inlineCallbacks
    def kept_while_full(self, send: Any) -> Any:
        """
        C{send(data)} meeting EAGAIN leaves the bytes queued with the
        transport, which waits to write and sends them once it can.
        """
        undo = self.failing_send(errno.EAGAIN)
        send(b"queued")
        self.assertEqual(self.transport._tempDataBuffer + [self.transport.dataBuffer], [b"queued"])
        self.assertIn(self.transport, reactor.getWriters())
        undo()
        self.assertEqual((yield self.collector.expect(6)), b"queued")


class BatchedWriteTests(Connected):
    """L{write} on a plain TCP transport."""

    def next_turn(self) -> Deferred[None]:
        """Fires after the reactor's next iteration (after the batch is sent)."""
        return deferLater(reactor, 0, lambda: None)

    @inlineCallbacks
    def test_sent_at_end_of_iteration(self) -> Any:
        """Bytes wait in the transport's buffer, unregistered, and go out in one send."""
        write(self.transport, b"hel")
        write(self.transport, b"lo")
        self.assertEqual(self.transport._tempDataLen, 5)
        self.assertNotIn(self.transport, reactor.getWriters())
        yield self.next_turn()
        self.assertEqual((self.transport.dataBuffer, self.transport._tempDataLen), (b"", 0))
        self.assertNotIn(self.transport, reactor.getWriters())
        self.assertEqual((yield self.collector.expect(5)), b"hello")

    @inlineCallbacks
    def test_after_queued_bytes(self) -> Any:
        """Bytes queued by the transport first are not overtaken."""
        self.transport.write(b"first ")
        write(self.transport, b"second")
        self.assertEqual((yield self.collector.expect(12)), b"first second")

    @inlineCallbacks
    def test_before_other_writes(self) -> Any:
        """A direct transport.write after a batched one comes after it."""
        write(self.transport, b"first ")
        self.transport.write(b"second")
        self.assertEqual((yield self.collector.expect(12)), b"first second")

    @inlineCallbacks
    def test_more_than_the_socket_takes(self) -> Any:
        """What the socket does not take is left to the transport and follows in order."""
        data = bytes(range(256)) * (32 * 1024)  # 8 MiB, more than a loopback socket buffer
        write(self.transport, data)
        batched_write._flush()
        self.assertIn(self.transport, reactor.getWriters())
        write(self.transport, b"end")
        self.assertEqual((yield self.collector.expect(len(data) + 3)), data + b"end")

    def test_socket_full(self) -> Any:
        """EAGAIN from send: the bytes stay queued and the transport waits to write."""

        def send(data: bytes) -> None:
            write(self.transport, data)
            batched_write._flush()

        return self.kept_while_full(send)

    @inlineCallbacks
    def test_send_error(self) -> Any:
        """Another send error is met by the transport: the connection is reported lost."""
        self.failing_send(errno.EPIPE)
        write(self.transport, b"queued")
        yield self.sender.lost
        self.assertTrue(self.transport.disconnected)

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
    def test_closed_before_the_batch(self) -> Any:
        """Bytes batched, then loseConnection: sent before the close."""
        write(self.transport, b"early")
        self.transport.loseConnection()
        yield self.sender.lost
        yield self.collector.lost
        self.assertEqual(bytes(self.collector.received), b"early")

    @inlineCallbacks
    def test_aborted(self) -> Any:
        """After abortConnection, nothing more is sent."""
        self.transport.abortConnection()
        write(self.transport, b"late")
        yield self.sender.lost
        yield self.collector.lost
        self.assertEqual(bytes(self.collector.received), b"")


class SendNowTests(Connected):
    """L{batched_write.send_now}: a transport's own buffered writes, sent at once."""

    @inlineCallbacks
    def test_sent_now(self) -> Any:
        """What transport.write buffered is on the wire before the reactor polls again."""
        self.transport.write(b"command")
        self.assertIn(self.transport, reactor.getWriters())
        batched_write.send_now(self.transport)
        self.assertEqual((self.transport.dataBuffer, self.transport._tempDataLen), (b"", 0))
        self.assertNotIn(self.transport, reactor.getWriters())
        self.assertEqual((yield self.collector.expect(7)), b"command")

    def test_socket_full(self) -> Any:
        """EAGAIN: the bytes stay queued with the transport, which still waits to write."""

        def send(data: bytes) -> None:
            self.transport.write(data)
            batched_write.send_now(self.transport)

        return self.kept_while_full(send)

    @inlineCallbacks
    def test_send_error(self) -> Any:
        """Another send error is left to the transport: the connection is reported lost."""
        self.failing_send(errno.EPIPE)
        self.transport.write(b"queued")
        batched_write.send_now(self.transport)
        yield self.sender.lost
        self.assertTrue(self.transport.disconnected)

    @inlineCallbacks
    def test_closing(self) -> Any:
        """A closing transport is left alone: its bytes go before the close, as always."""
        self.transport.write(b"last")
        self.transport.loseConnection()
        batched_write.send_now(self.transport)
        self.assertEqual(self.transport._tempDataLen, 4)
        yield self.sender.lost
        yield self.collector.lost
        self.assertEqual(bytes(self.collector.received), b"last")

    def test_nothing_buffered(self) -> None:
        """With nothing buffered nothing happens (no write interest asked for)."""
        batched_write.send_now(self.transport)
        self.assertNotIn(self.transport, reactor.getWriters())


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
