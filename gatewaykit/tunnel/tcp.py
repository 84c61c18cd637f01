"""
C{tcp} listeners: each client connection is spliced to one target of the
listener's upstream, bytes in and bytes out.

Both sides are plain Twisted protocols. Once the target side is up, each
side's transport is registered as the streaming producer of the other's
(as in C{twisted.protocols.portforward}), so a slow reader pauses the fast
writer and nothing piles up in the gateway. Both protocols provide
C{IHalfCloseableProtocol}: an end of stream read on one side becomes a
write shutdown on the other, and the tunnel closes once both directions
have ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, cast

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import ListenerConfig
from gatewaykit.http.message import Request
from gatewaykit.tunnel.splice import CLOSE_GRACE_SECONDS, Splice  # noqa: F401 (re-exported)
from gatewaykit.upstream.cluster import Upstream
from gatewaykit.upstream.target import Target

if TYPE_CHECKING:
    from gatewaykit.gateway import Gateway

log = Logger()

# Bytes read per event and buffered per direction before the reader pauses.
# Twisted's 64 KiB costs a trip round the event loop per 64 KiB; bulk
# tunnels move a third more data with 256 KiB (bench/, tcp scenario).
TUNNEL_BUFFER = 256 * 1024


@implementer(IHalfCloseableProtocol)
class TCPTunnel(Protocol):
    """
    One client connection of a C{tcp} listener and its tunnel to a target.

    Reading from the client waits until a target accepted the connection;
    a target that refuses or does not answer in the upstream's connect
    timeout is reported to the upstream and the next one the balancer picks
    is tried. The tunnel keeps the L{Upstream} it started with through any
    reload.

    @ivar upstream: the upstream this tunnel counts against (C{None} if it
        was refused at once).
    @ivar target: the target connected to, or being connected to.
    @ivar target_side: the connection to C{target} once it is up.
    """

    # A TCP transport: ITCPTransport, IPushProducer and IConsumer at once.
    transport: Any

    def __init__(self, factory: TCPProxyFactory) -> None:
        self.factory = factory
        self.upstream: Optional[Upstream] = None
        self.target: Optional[Target] = None
        self.target_side: Optional[TargetSide] = None
        self._request: Optional[Request] = None
        self._tried: list[Target] = []
        self._connector: Any = None
        self._early: list[bytes] = []
        self._connecting = False
        self._client_eof = False  # before the splice exists
        self.splice: Optional[Splice] = None  # once a target is connected
        self._finished = False

    # -- the client side --------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        transport.setTcpNoDelay(True)
        transport.bufferSize = TUNNEL_BUFFER
        # Nothing is read until there is somewhere to send it.
        transport.pauseProducing()
        self.factory.connections.add(self)
        try:
            self._start(self.factory.listener.upstream)
        except Exception:
            log.failure(
                "tcp listener {listener}: tunnel from {client} failed to start",
                listener=self.factory.listener.name,
                client=self._client(),
            )
            transport.abortConnection()

    def _start(self, upstream_name: Optional[str]) -> None:
        """Count the tunnel against upstream C{upstream_name} and connect to a target."""
        factory = self.factory
        listener = factory.listener
        upstream = factory.gateway.upstreams.get(upstream_name or "")
        if upstream is None:
            log.error(
                "tcp listener {listener}: no upstream {upstream}",
                listener=listener.name,
                upstream=upstream_name,
            )
            self.transport.loseConnection()
            return
        overloaded = upstream.overloaded()
        if overloaded is not None:
            log.warn(
                "tcp listener {listener}: refused {client}: upstream {upstream} has {reason}",
                listener=listener.name,
                client=self._client(),
                upstream=upstream.name,
                reason=overloaded,
            )
            self.transport.loseConnection()
            return
        self.upstream = upstream
        upstream.in_flight += 1
        upstream.pending += 1
        self._connecting = True
        peer = self.transport.getPeer()
        self._request = Request(
            method="",
            target=b"",
            path="",
            scheme="tcp",
            client_host=getattr(peer, "host", ""),
            client_port=getattr(peer, "port", 0),
            server_port=getattr(self.transport.getHost(), "port", 0),
            listener=listener.name,
        )
        self._connect_next()

    def dataReceived(self, data: bytes) -> None:
        if self.splice is None:
            self._early.append(data)
        else:
            self.splice.client_data(data)

    def readConnectionLost(self) -> None:
        """The client will send nothing more: pass the end on to the target."""
        if self.splice is None:
            self._client_eof = True
        else:
            self.splice.client_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        if self.splice is not None:
            # The tunnel ends once the target side is gone as well.
            self.splice.client_lost()
            return
        connector, self._connector = self._connector, None
        self._end()
        if connector is not None:
            connector.stopConnecting()

    def drain(self) -> None:
        """
        Shutting down: nothing to do. A tunnel carries a protocol the gateway
        does not understand, so it runs until it ends or the drain timeout.
        """

    # -- connecting to a target ---------------------------------------------

    def _connect_next(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        tried = self._tried
        try:
            # The balancer chooses among the upstream's own Target objects.
            target = cast(Optional[Target], upstream.pick(self._request, exclude=tried))
        except Exception:
            log.failure("upstream {upstream}: the balancer failed", upstream=upstream.name)
            target = None
        # A balancer may hand back a tried target when nothing else is left.
        if target is None or target in tried:
            self._give_up()
            return
        tried.append(target)
        self.target = target
        target.in_flight += 1
        target.requests += 1
        self._connector = self.factory.reactor.connectTCP(
            target.host,
            target.port,
            _TargetFactory(self, target),
            timeout=upstream.config.timeouts.connect,
        )

    def connect_failed(self, target: Target, reason: Failure) -> None:
        """Connecting to C{target} failed (refused or timed out): try another."""
        self._connector = None
        if self._finished:
            return  # the client left, so we stopped connecting: not the target's fault
        assert self.upstream is not None
        target.in_flight -= 1
        self.target = None
        self.upstream.record(target, "connect_failure")
        log.warn(
            "tcp listener {listener}: could not connect to {target} of upstream"
            " {upstream}: {error}",
            listener=self.factory.listener.name,
            target=target.address,
            upstream=self.upstream.name,
            error=reason.getErrorMessage(),
        )
        self._connect_next()

    def _give_up(self) -> None:
        assert self.upstream is not None
        log.warn(
            "tcp listener {listener}: no target of upstream {upstream} took the"
            " connection from {client} ({tried} tried); closing it",
            listener=self.factory.listener.name,
            upstream=self.upstream.name,
            client=self._client(),
            tried=len(self._tried),
        )
        self.transport.loseConnection()

    def target_connected(self, side: TargetSide) -> None:
        """The target accepted: start splicing."""
        self._connector = None
        if self._finished:
            side.transport.loseConnection()
            return
        upstream, target = self.upstream, self.target
        assert upstream is not None and target is not None
        self.target_side = side
        self._connecting = False
        upstream.pending -= 1
        upstream.record(target, None)
        factory = self.factory
        factory.tunnels_active += 1
        server = side.transport
        server.setTcpNoDelay(True)
        early, self._early = self._early, []
        if early:
            factory.bytes_in += sum(len(data) for data in early)
            server.writeSequence(early)
        splice = self.splice = Splice(
            factory.reactor,
            factory.listener.idle_timeout,
            self._end,
            factory.count_bytes,
            on_idle=self._idle_expired,
        )
        splice.attach(self.transport, server)
        if self._client_eof:
            splice.client_eof()
        else:
            self.transport.resumeProducing()

    def _idle_expired(self) -> None:
        log.info(
            "tcp listener {listener}: closing the tunnel from {client} to {target}:"
            " no bytes for {timeout:g}s",
            listener=self.factory.listener.name,
            client=self._client(),
            target=self.target.address if self.target is not None else "-",
            timeout=self.factory.listener.idle_timeout,
        )

    def _end(self) -> None:
        """Both sides are gone: release what the tunnel counted."""
        if self._finished:
            return
        self._finished = True
        self._early = []
        upstream = self.upstream
        if upstream is None:
            return
        upstream.in_flight -= 1
        if self._connecting:
            self._connecting = False
            upstream.pending -= 1
        if self.target is not None:
            self.target.in_flight -= 1
        if self.splice is not None:
            self.factory.tunnels_active -= 1

    def _client(self) -> str:
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


@implementer(IHalfCloseableProtocol)
class TargetSide(Protocol):
    """A tunnel's connection to its target; the tunnel does the work."""

    transport: Any

    def __init__(self, tunnel: TCPTunnel) -> None:
        self.tunnel = tunnel

    def connectionMade(self) -> None:
        self.transport.bufferSize = TUNNEL_BUFFER
        self.tunnel.target_connected(self)

    def dataReceived(self, data: bytes) -> None:
        splice = self.tunnel.splice
        if splice is not None:
            splice.upstream_data(data)

    def readConnectionLost(self) -> None:
        splice = self.tunnel.splice
        if splice is not None:
            splice.upstream_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        splice = self.tunnel.splice
        if splice is not None:
            splice.upstream_lost()


class _TargetFactory(ClientFactory):
    """One connection attempt of a tunnel to one target."""

    noisy = False

    def __init__(self, tunnel: TCPTunnel, target: Target) -> None:
        self.tunnel = tunnel
        self.target = target

    def buildProtocol(self, addr: Any) -> TargetSide:
        return TargetSide(self.tunnel)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.tunnel.connect_failed(self.target, reason)


class TCPProxyFactory(Factory):
    """
    Builds a L{TCPTunnel} per client connection of one C{tcp} listener.

    @ivar gateway: the L{Gateway} whose upstream new tunnels use; replaced
        on reload (tunnels already open keep theirs).
    @ivar connections: the client connections open now.
    @ivar bytes_in: bytes relayed from clients to targets so far.
    @ivar bytes_out: bytes relayed from targets to clients so far.
    @ivar tunnels_active: tunnels connected to a target now.
    """

    noisy = False

    def __init__(self, listener: ListenerConfig, gateway: Gateway, reactor: Any) -> None:
        self.listener = listener
        self.gateway = gateway
        self.reactor = reactor
        self.connections: set[TCPTunnel] = set()
        self.bytes_in = 0
        self.bytes_out = 0
        self.tunnels_active = 0

    def count_bytes(self, inbound: int, outbound: int) -> None:
        """Count bytes tunnelled (client to target, target to client)."""
        self.bytes_in += inbound
        self.bytes_out += outbound

    def logPrefix(self) -> str:
        return f"gatewaykit/{self.listener.name}"

    def buildProtocol(self, addr: Any) -> TCPTunnel:
        return TCPTunnel(self)
