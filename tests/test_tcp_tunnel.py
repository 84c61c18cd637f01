"""
Tests for L{gatewaykit.tunnel.tcp}: C{tcp} listeners driven by hand over
fake transports and a fake reactor.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config import parse_config
from gatewaykit.gateway import Gateway
from gatewaykit.testing import TCPStringTransport
from gatewaykit.tunnel.tcp import CLOSE_GRACE_SECONDS, TargetSide, TCPProxyFactory, TCPTunnel

CONFIG = """
gateway: {node: test-node, access_log: {path: "off"}}
listeners:
  db:
    protocol: tcp
    bind: 127.0.0.1:15432
    upstream: pg
    idle_timeout: 30s
upstreams:
  pg:
    targets: [10.0.0.1:5432, 10.0.0.2:5432, 10.0.0.3:5432]
    timeouts: {connect: 3s}
"""

IDLE = 30.0


class Tunnels:
    """A tcp listener's factory on a fake reactor, for a config in YAML."""

    def __init__(self, text: str = CONFIG) -> None:
        self.reactor = MemoryReactorClock()
        self.config = parse_config(text)
        self.gateway = Gateway(self.config, self.reactor)
        self.factory = TCPProxyFactory(self.config.listeners["db"], self.gateway, self.reactor)
        self.upstream = self.gateway.upstreams["pg"]

    def connect(
        self, host: str = "192.0.2.7", port: int = 40000
    ) -> tuple[TCPTunnel, TCPStringTransport]:
        """A new client connection: its protocol and transport."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = TCPStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 15432),
            peerAddress=IPv4Address("TCP", host, port),
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def attempt(self, index: int = -1) -> tuple[str, int, float]:
        """Host, port and timeout of the C{index}th connection attempt."""
        host, port, _, timeout, _ = self.reactor.tcpClients[index]
        return host, port, timeout

    def accept(self, index: int = -1) -> tuple[TargetSide, TCPStringTransport]:
        """Complete the C{index}th connection attempt to a target."""
        factory: Any = self.reactor.tcpClients[index][2]
        side = factory.buildProtocol(None)
        transport = TCPStringTransport()
        side.makeConnection(transport)
        return side, transport

    def refuse(self, reason: Optional[Exception] = None, index: int = -1) -> None:
        """Fail the C{index}th connection attempt with C{reason} (default: refused)."""
        factory: Any = self.reactor.tcpClients[index][2]
        failure = Failure(reason or ConnectionRefusedError())
        factory.clientConnectionFailed(self.reactor.connectors[index], failure)

    def target(self, address: str) -> Any:
        return next(t for t in self.upstream.targets if t.address == address)


class Tunnel:
    """A client connection spliced to an accepted target connection."""

    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels = tunnels
        self.client, self.client_transport = tunnels.connect()
        self.side, self.target_transport = tunnels.accept()

    def lose_client(self) -> None:
        self.client.connectionLost(Failure(ConnectionDone()))

    def lose_target(self) -> None:
        self.side.connectionLost(Failure(ConnectionDone()))


class ConnectTests(SynchronousTestCase):
    """Opening the tunnel."""

    def test_reading_paused_until_connected(self):
        """The client is not read from until the target accepted."""
        tunnels = Tunnels()
        _, transport = tunnels.connect()
        self.assertEqual(transport.producerState, "paused")
        tunnels.accept()
        self.assertEqual(transport.producerState, "producing")

    def test_connects_to_picked_target(self):
        """The balancer's target is connected to with the upstream's connect timeout."""
        tunnels = Tunnels()
        tunnels.connect()
        self.assertEqual(tunnels.attempt(), ("10.0.0.1", 5432, 3.0))

    def test_early_bytes_sent_first(self):
        """Bytes read before the target was up reach it first, in order."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        client.dataReceived(b"one ")
        client.dataReceived(b"two ")
        _, target_transport = tunnels.accept()
        client.dataReceived(b"three")
        self.assertEqual(target_transport.value(), b"one two three")

    def test_no_delay(self):
        """Both sides get TCP_NODELAY."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        self.assertTrue(tunnel.client_transport.no_delay)
        self.assertTrue(tunnel.target_transport.no_delay)

    def test_pending_while_connecting(self):
        """The upstream counts the tunnel as pending until the target is up."""
        tunnels = Tunnels()
        tunnels.connect()
        self.assertEqual((tunnels.upstream.pending, tunnels.upstream.in_flight), (1, 1))
        tunnels.accept()
        self.assertEqual((tunnels.upstream.pending, tunnels.upstream.in_flight), (0, 1))

    def test_target_in_flight(self):
        """The target counts the tunnel in flight."""
        tunnels = Tunnels()
        Tunnel(tunnels)
        self.assertEqual(tunnels.target("10.0.0.1:5432").in_flight, 1)

    def test_balancer_sees_client_address(self):
        """The balancer gets a request naming the client and the listener."""
        tunnels = Tunnels()
        requests = []
        pick = tunnels.upstream.pick

        def spy(request, exclude=()):
            requests.append(request)
            return pick(request, exclude)

        self.patch(tunnels.upstream, "pick", spy)
        tunnels.connect(host="198.51.100.9", port=41234)
        request = requests[0]
        self.assertEqual(
            (request.client_ip, request.client_host, request.client_port, request.listener),
            ("198.51.100.9", "198.51.100.9", 41234, "db"),
        )

    def test_success_recorded(self):
        """A target that accepted is recorded as a success."""
        tunnels = Tunnels()
        records = []
        self.patch(
            tunnels.upstream,
            "record",
            lambda target, failure: records.append((target.address, failure)),
        )
        Tunnel(tunnels)
        self.assertEqual(records, [("10.0.0.1:5432", None)])

    def test_half_closeable(self):
        """Both sides provide IHalfCloseableProtocol."""
        tunnel = Tunnel(Tunnels())
        verifyObject(IHalfCloseableProtocol, tunnel.client)
        verifyObject(IHalfCloseableProtocol, tunnel.side)

    def test_idle_timeout_default(self):
        """A tcp listener without idle_timeout gets one hour."""
        config = parse_config(CONFIG.replace("    idle_timeout: 30s\n", ""))
        self.assertEqual(config.listeners["db"].idle_timeout, 3600.0)

    def test_hash_by_client_ip(self):
        """With balancer hash on hash_key ip, one client address always gets one target."""
        tunnels = Tunnels(
            CONFIG.replace(
                "    timeouts: {connect: 3s}\n",
                "    timeouts: {connect: 3s}\n    balancer: hash\n    hash_key: ip\n",
            )
        )
        for port in (40001, 40002, 40003, 40004):
            tunnels.connect(host="198.51.100.9", port=port)
        self.assertEqual(len({attempt[0] for attempt in tunnels.reactor.tcpClients}), 1)


class FailoverTests(SynchronousTestCase):
    """Targets that do not accept."""

    def test_refused_tries_next(self):
        """A refused connection is retried on the next target."""
        tunnels = Tunnels()
        tunnels.connect()
        tunnels.refuse()
        self.assertEqual(tunnels.attempt()[:2], ("10.0.0.2", 5432))

    def test_timeout_tries_next(self):
        """A connect timeout is retried on the next target."""
        tunnels = Tunnels()
        tunnels.connect()
        tunnels.refuse(TimeoutError())
        self.assertEqual(tunnels.attempt()[:2], ("10.0.0.2", 5432))

    def test_failure_recorded(self):
        """A failed target is recorded as a connect failure."""
        tunnels = Tunnels()
        records = []
        self.patch(
            tunnels.upstream,
            "record",
            lambda target, failure: records.append((target.address, failure)),
        )
        tunnels.connect()
        tunnels.refuse()
        tunnels.accept()
        self.assertEqual(records, [("10.0.0.1:5432", "connect_failure"), ("10.0.0.2:5432", None)])

    def test_early_bytes_survive_failover(self):
        """Bytes read before a failover reach the target that accepted."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        client.dataReceived(b"hello")
        tunnels.refuse()
        _, target_transport = tunnels.accept()
        self.assertEqual(target_transport.value(), b"hello")

    def test_all_failing_closes_client(self):
        """With every target refusing, the client connection is closed."""
        tunnels = Tunnels()
        _, transport = tunnels.connect()
        for _ in range(3):
            tunnels.refuse()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(tunnels.reactor.tcpClients), 3)

    def test_all_failing_releases_counts(self):
        """Once the client closed after every target failed, nothing stays counted."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        for _ in range(3):
            tunnels.refuse()
        client.connectionLost(Failure(ConnectionDone()))
        upstream = tunnels.upstream
        self.assertEqual((upstream.in_flight, upstream.pending), (0, 0))
        self.assertEqual([t.in_flight for t in upstream.targets], [0, 0, 0])
        self.assertEqual(tunnels.factory.connections, set())

    def test_client_leaves_while_connecting(self):
        """A client gone before the target accepted stops the attempt."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(tunnels.reactor.connectors[0].stoppedConnecting)
        upstream = tunnels.upstream
        self.assertEqual((upstream.in_flight, upstream.pending), (0, 0))
        self.assertEqual(tunnels.target("10.0.0.1:5432").in_flight, 0)

    def test_stopped_attempt_not_a_failure(self):
        """An attempt stopped because the client left is not the target's failure."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        client.connectionLost(Failure(ConnectionDone()))
        tunnels.refuse()
        self.assertEqual(tunnels.target("10.0.0.1:5432").failures, 0)
        self.assertEqual(len(tunnels.reactor.tcpClients), 1)

    def test_late_target_closed(self):
        """A target connection completing after the client left is closed."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        client.connectionLost(Failure(ConnectionDone()))
        _, target_transport = tunnels.accept()
        self.assertTrue(target_transport.disconnecting)


class RelayTests(SynchronousTestCase):
    """Bytes both ways."""

    def test_client_to_target(self):
        """What the client sends reaches the target."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.dataReceived(b"*1\r\n$4\r\nPING\r\n")
        self.assertEqual(tunnel.target_transport.value(), b"*1\r\n$4\r\nPING\r\n")

    def test_target_to_client(self):
        """What the target sends reaches the client."""
        tunnel = Tunnel(Tunnels())
        tunnel.side.dataReceived(b"+PONG\r\n")
        self.assertEqual(tunnel.client_transport.value(), b"+PONG\r\n")

    def test_tunnels_independent(self):
        """Two tunnels never see each other's bytes."""
        tunnels = Tunnels()
        first, second = Tunnel(tunnels), Tunnel(tunnels)
        first.client.dataReceived(b"first")
        second.side.dataReceived(b"second")
        self.assertEqual(
            (first.target_transport.value(), first.client_transport.value()), (b"first", b"")
        )
        self.assertEqual(
            (second.target_transport.value(), second.client_transport.value()), (b"", b"second")
        )


class BackpressureTests(SynchronousTestCase):
    """Each side's transport is the producer of the other's."""

    def test_full_target_pauses_client(self):
        """A target transport pausing its producer stops reading the client."""
        tunnel = Tunnel(Tunnels())
        self.assertIs(tunnel.target_transport.producer, tunnel.client_transport)
        tunnel.target_transport.producer.pauseProducing()
        self.assertEqual(tunnel.client_transport.producerState, "paused")

    def test_full_client_pauses_target(self):
        """A client transport pausing its producer stops reading the target."""
        tunnel = Tunnel(Tunnels())
        self.assertIs(tunnel.client_transport.producer, tunnel.target_transport)
        tunnel.client_transport.producer.pauseProducing()
        self.assertEqual(tunnel.target_transport.producerState, "paused")

    def test_streaming(self):
        """Both registrations are as streaming (push) producers."""
        tunnel = Tunnel(Tunnels())
        self.assertEqual(
            (tunnel.client_transport.streaming, tunnel.target_transport.streaming), (True, True)
        )


class HalfCloseTests(SynchronousTestCase):
    """The end of one direction passed on, the other kept open."""

    def test_client_eof_shuts_target_writing(self):
        """The client's end of stream shuts down writing to the target."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.readConnectionLost()
        self.assertTrue(tunnel.target_transport.write_closed)
        self.assertFalse(tunnel.target_transport.disconnecting)

    def test_target_still_answers(self):
        """After the client's end of stream, the target's bytes still reach it."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.readConnectionLost()
        tunnel.side.dataReceived(b"answer")
        self.assertEqual(tunnel.client_transport.value(), b"answer")
        self.assertFalse(tunnel.client_transport.disconnecting)

    def test_target_eof_shuts_client_writing(self):
        """The target's end of stream shuts down writing to the client."""
        tunnel = Tunnel(Tunnels())
        tunnel.side.readConnectionLost()
        self.assertTrue(tunnel.client_transport.write_closed)
        self.assertFalse(tunnel.client_transport.disconnecting)

    def test_client_still_sends(self):
        """After the target's end of stream, the client's bytes still reach it."""
        tunnel = Tunnel(Tunnels())
        tunnel.side.readConnectionLost()
        tunnel.client.dataReceived(b"more")
        self.assertEqual(tunnel.target_transport.value(), b"more")

    def test_ended_reader_no_longer_producer(self):
        """A side whose input ended is no longer the other's producer (never resumed)."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.readConnectionLost()
        self.assertIsNone(tunnel.target_transport.producer)
        self.assertIs(tunnel.client_transport.producer, tunnel.target_transport)

    def test_both_ended_closes(self):
        """Once both directions ended, both connections close."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.readConnectionLost()
        tunnel.side.readConnectionLost()
        self.assertTrue(tunnel.client_transport.disconnecting)
        self.assertTrue(tunnel.target_transport.disconnecting)

    def test_eof_before_connected(self):
        """A client that ended before the target was up: its bytes, then the end."""
        tunnels = Tunnels()
        client, client_transport = tunnels.connect()
        client.dataReceived(b"last words")
        client.readConnectionLost()
        _, target_transport = tunnels.accept()
        self.assertEqual(target_transport.value(), b"last words")
        self.assertTrue(target_transport.write_closed)
        self.assertEqual(client_transport.producerState, "paused")


class LossTests(SynchronousTestCase):
    """One side gone closes the other, after what is buffered for it."""

    def test_client_lost_closes_target(self):
        """The client gone, the target connection closes."""
        tunnel = Tunnel(Tunnels())
        tunnel.lose_client()
        self.assertTrue(tunnel.target_transport.disconnecting)
        self.assertFalse(tunnel.target_transport.disconnected)

    def test_target_lost_closes_client(self):
        """The target gone, the client connection closes."""
        tunnel = Tunnel(Tunnels())
        tunnel.lose_target()
        self.assertTrue(tunnel.client_transport.disconnecting)
        self.assertFalse(tunnel.client_transport.disconnected)

    def test_target_lost_unregisters_producer(self):
        """The gone target is no longer the client transport's producer."""
        tunnel = Tunnel(Tunnels())
        tunnel.lose_target()
        self.assertIsNone(tunnel.client_transport.producer)

    def test_counts_released(self):
        """With both sides gone, every count is back to zero."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        tunnel.lose_target()
        tunnel.lose_client()
        upstream = tunnels.upstream
        self.assertEqual((upstream.in_flight, upstream.pending), (0, 0))
        self.assertEqual(tunnels.target("10.0.0.1:5432").in_flight, 0)
        self.assertEqual(tunnels.factory.tunnels_active, 0)
        self.assertEqual(tunnels.factory.connections, set())

    def test_counted_until_both_gone(self):
        """The tunnel stays counted while one side is still flushing."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        tunnel.lose_client()
        self.assertEqual((tunnels.upstream.in_flight, tunnels.factory.tunnels_active), (1, 1))


class IdleTimeoutTests(SynchronousTestCase):
    """C{idle_timeout}: no bytes either way closes the tunnel."""

    def test_idle_closes_both(self):
        """After idle_timeout without bytes, both sides close."""
        tunnel = Tunnel(Tunnels())
        tunnel.tunnels.reactor.advance(IDLE)
        self.assertTrue(tunnel.client_transport.disconnecting)
        self.assertTrue(tunnel.target_transport.disconnecting)

    def test_not_before(self):
        """Just before idle_timeout, the tunnel is open."""
        tunnel = Tunnel(Tunnels())
        tunnel.tunnels.reactor.advance(IDLE - 0.1)
        self.assertFalse(tunnel.client_transport.disconnecting)

    def test_client_bytes_postpone(self):
        """Bytes from the client restart the idle time."""
        tunnel = Tunnel(Tunnels())
        reactor = tunnel.tunnels.reactor
        reactor.advance(IDLE - 1)
        tunnel.client.dataReceived(b"x")
        reactor.advance(IDLE - 1)
        self.assertFalse(tunnel.client_transport.disconnecting)

    def test_target_bytes_postpone(self):
        """Bytes from the target restart the idle time."""
        tunnel = Tunnel(Tunnels())
        reactor = tunnel.tunnels.reactor
        reactor.advance(IDLE - 1)
        tunnel.side.dataReceived(b"x")
        reactor.advance(IDLE - 1)
        self.assertFalse(tunnel.target_transport.disconnecting)

    def test_stuck_side_aborted(self):
        """A side still open a grace period after the idle close is aborted."""
        tunnel = Tunnel(Tunnels())
        reactor = tunnel.tunnels.reactor
        reactor.advance(IDLE)
        self.assertFalse(tunnel.target_transport.disconnected)
        reactor.advance(CLOSE_GRACE_SECONDS)
        self.assertTrue(tunnel.client_transport.disconnected)
        self.assertTrue(tunnel.target_transport.disconnected)

    def test_timer_cancelled_at_end(self):
        """A tunnel that ended leaves no timer behind."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        tunnel.lose_client()
        tunnel.lose_target()
        self.assertEqual(tunnels.reactor.getDelayedCalls(), [])


class CounterTests(SynchronousTestCase):
    """The factory's byte and tunnel counters."""

    def test_bytes_in(self):
        """bytes_in counts client to target bytes."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        tunnel.client.dataReceived(b"12345")
        tunnel.client.dataReceived(b"678")
        self.assertEqual((tunnels.factory.bytes_in, tunnels.factory.bytes_out), (8, 0))

    def test_bytes_out(self):
        """bytes_out counts target to client bytes."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        tunnel.side.dataReceived(b"1234")
        self.assertEqual((tunnels.factory.bytes_in, tunnels.factory.bytes_out), (0, 4))

    def test_early_bytes_counted(self):
        """Bytes kept until the target was up count once, when sent."""
        tunnels = Tunnels()
        client, _ = tunnels.connect()
        client.dataReceived(b"abc")
        self.assertEqual(tunnels.factory.bytes_in, 0)
        tunnels.accept()
        self.assertEqual(tunnels.factory.bytes_in, 3)

    def test_tunnels_active(self):
        """tunnels_active counts tunnels connected to a target."""
        tunnels = Tunnels()
        tunnels.connect()
        self.assertEqual(tunnels.factory.tunnels_active, 0)
        tunnels.accept()
        Tunnel(tunnels)
        self.assertEqual(tunnels.factory.tunnels_active, 2)

    def test_connections(self):
        """connections holds every open client connection."""
        tunnels = Tunnels()
        connecting, _ = tunnels.connect()
        tunnel = Tunnel(tunnels)
        self.assertEqual(tunnels.factory.connections, {connecting, tunnel.client})


class DrainTests(SynchronousTestCase):
    """Shutting down."""

    def test_drain_leaves_tunnel_open(self):
        """drain() closes nothing: tunnels run until the drain timeout."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.drain()
        self.assertFalse(tunnel.client_transport.disconnecting)
        self.assertFalse(tunnel.target_transport.disconnecting)

    def test_abort_closes_target(self):
        """The client connection aborted after the drain timeout closes the target."""
        tunnel = Tunnel(Tunnels())
        tunnel.client.transport.abortConnection()
        tunnel.lose_client()
        self.assertTrue(tunnel.target_transport.disconnecting)


class OverloadTests(SynchronousTestCase):
    """The upstream's circuit breaker."""

    def config(self) -> str:
        return CONFIG.replace(
            "    timeouts: {connect: 3s}\n",
            "    timeouts: {connect: 3s}\n    circuit_breaker: {max_requests: 1, max_pending: 5}\n",
        )

    def test_overloaded_closed_at_once(self):
        """A connection over max_requests is closed without connecting anywhere."""
        tunnels = Tunnels(self.config())
        Tunnel(tunnels)
        _, transport = tunnels.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(tunnels.reactor.tcpClients), 1)

    def test_refused_not_counted(self):
        """A refused connection leaves the upstream's counts as they were."""
        tunnels = Tunnels(self.config())
        Tunnel(tunnels)
        client, _ = tunnels.connect()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((tunnels.upstream.in_flight, tunnels.upstream.pending), (1, 0))


class ReloadTests(SynchronousTestCase):
    """A tunnel keeps the upstream it started with."""

    def new_gateway(self, tunnels: Tunnels) -> Gateway:
        text = CONFIG.replace("10.0.0.", "10.9.9.")
        gateway = Gateway(parse_config(text), tunnels.reactor)
        tunnels.factory.gateway = gateway
        return gateway

    def test_failover_stays_on_old_upstream(self):
        """A failover after a reload picks from the tunnel's own upstream."""
        tunnels = Tunnels()
        tunnels.connect()
        self.new_gateway(tunnels)
        tunnels.refuse()
        self.assertEqual(tunnels.attempt()[:2], ("10.0.0.2", 5432))

    def test_old_upstream_released(self):
        """The tunnel's end is counted on its own upstream, not the new one."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        gateway = self.new_gateway(tunnels)
        tunnel.lose_client()
        tunnel.lose_target()
        self.assertEqual(tunnels.upstream.in_flight, 0)
        self.assertEqual(gateway.upstreams["pg"].in_flight, 0)

    def test_new_tunnels_use_new_upstream(self):
        """A connection after the reload goes to the new upstream's targets."""
        tunnels = Tunnels()
        self.new_gateway(tunnels)
        tunnels.connect()
        self.assertEqual(tunnels.attempt()[:2], ("10.9.9.1", 5432))


class ErrorTests(SynchronousTestCase):
    """An error in one tunnel stays in that tunnel."""

    def test_balancer_error_closes_client(self):
        """A balancer that raises closes that client, and is logged."""
        tunnels = Tunnels()

        def broken(request, exclude=()):
            raise RuntimeError("broken balancer")

        self.patch(tunnels.upstream, "pick", broken)
        _, transport = tunnels.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_other_tunnels_unaffected(self):
        """A failing tunnel leaves an open one relaying."""
        tunnels = Tunnels()
        tunnel = Tunnel(tunnels)
        pick = tunnels.upstream.pick
        self.patch(tunnels.upstream, "pick", lambda request, exclude=(): 1 / 0)
        tunnels.connect()
        self.flushLoggedErrors(ZeroDivisionError)
        self.patch(tunnels.upstream, "pick", pick)
        tunnel.client.dataReceived(b"still here")
        self.assertEqual(tunnel.target_transport.value(), b"still here")
