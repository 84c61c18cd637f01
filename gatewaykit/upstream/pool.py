"""
Keep-alive connections to the targets of one upstream.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.error import NotConnectingError
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from gatewaykit.config.model import UpstreamConfig
from gatewaykit.interfaces import ITarget
from gatewaykit.timer import Timer
from gatewaykit.upstream.connection import UpstreamConnection
from gatewaykit.upstream.tls import UpstreamTLS


class ConnectAttempt(ClientFactory):
    """One outgoing connection for one waiter, which may give up on it."""

    noisy = False

    def __init__(self, pool: ConnectionPool, target: ITarget, waiter: Any) -> None:
        self.pool = pool
        self.target = target
        self.waiter = waiter
        self.connector: Optional[IConnector] = None

    def cancel(self) -> None:
        """
        Give up: the waiter hears nothing more (stopping a connector reports
        a failure at once, which must not reach a waiter that moved on).
        """
        self.waiter = None
        connector, self.connector = self.connector, None
        if connector is not None:
            try:
                connector.stopConnecting()
            except NotConnectingError:
                pass

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        tls = self.pool.tls
        if tls is not None:
            return tls.connection(self.pool, self.target, self._connected, self._failed)
        return UpstreamConnection(self.pool, self.target, self._connected)

    def _connected(self, connection: UpstreamConnection) -> None:
        self.pool.connections_opened += 1
        self.connector = None
        waiter, self.waiter = self.waiter, None
        if waiter is None:
            self.pool.release(connection)  # nobody waits: keep it for later
        else:
            waiter.connected(connection, False)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._failed(reason)

    def _failed(self, reason: Failure) -> None:
        """No connection: refused, timed out, or (https) its TLS handshake failed."""
        self.connector = None
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.connect_failed(reason)


class ConnectionPool:
    """
    Hands out connections to a target: an idle kept-alive one when there is
    one (most recently used first), else a new one.

    A waiter gets C{connected(connection, reused)} or
    C{connect_failed(reason)}.
    """

    def __init__(self, reactor: Any, config: UpstreamConfig) -> None:
        self._reactor = reactor
        self._connect_timeout = config.timeouts.connect
        self._max_idle = config.pool.max_idle_per_target
        self._idle_timeout = config.pool.idle_timeout
        self._idle: dict[ITarget, list[UpstreamConnection]] = {}
        self._sweeper = Timer(reactor, self._sweep)
        self.connections_opened = 0
        # scheme https: connections are made over TLS (and pooled the same).
        self.tls: Optional[UpstreamTLS] = (
            UpstreamTLS(config, reactor) if config.scheme == "https" else None
        )

    def acquire(
        self, target: ITarget, waiter: Any, fresh: bool = False
    ) -> Optional[ConnectAttempt]:
        """
        Get a connection to C{target} for C{waiter}; C{fresh} skips idle ones.

        @return: the attempt while a new connection is being made (to
            L{ConnectAttempt.cancel} if the waiter gives up), else C{None}.
        """
        if not fresh:
            idle = self._idle.get(target)
            if idle:
                oldest_usable = self._reactor.seconds() - self._idle_timeout
                while idle:
                    connection = idle.pop()
                    if connection.open and connection.idle_since > oldest_usable:
                        waiter.connected(connection, True)
                        return None
                    connection.close()
        attempt = ConnectAttempt(self, target, waiter)
        factory = attempt if self.tls is None else self.tls.wrap(attempt, target)
        attempt.connector = self._reactor.connectTCP(
            target.host, target.port, factory, timeout=self._connect_timeout
        )
        return attempt

    def release(self, connection: UpstreamConnection) -> None:
        """Take back a connection after an exchange: keep it idle or close it."""
        if connection.reusable and connection.open:
            idle = self._idle.setdefault(connection.target, [])
            if len(idle) < self._max_idle:
                connection.exchange = None
                connection.idle_since = self._reactor.seconds()
                idle.append(connection)
                if not self._sweeper.armed:
                    self._sweeper.set(self._idle_timeout)
                return
        connection.close()

    def connection_lost(self, connection: UpstreamConnection) -> None:
        """Forget a connection that closed."""
        idle = self._idle.get(connection.target)
        if idle and connection in idle:
            idle.remove(connection)

    def close_idle(self, target: ITarget) -> None:
        """Close the idle connections to C{target} (it went bad)."""
        for connection in self._idle.pop(target, ()):
            connection.close()

    def idle_count(self, target: ITarget) -> int:
        """How many idle connections to C{target} are kept."""
        return len(self._idle.get(target, ()))

    def _sweep(self) -> None:
        oldest_usable = self._reactor.seconds() - self._idle_timeout
        next_expiry: Optional[float] = None
        for idle in self._idle.values():
            for connection in list(idle):
                if connection.idle_since <= oldest_usable:
                    idle.remove(connection)
                    connection.close()
                elif next_expiry is None or connection.idle_since < next_expiry:
                    next_expiry = connection.idle_since
        if next_expiry is not None:
            self._sweeper.set(next_expiry - oldest_usable)

    def close(self) -> None:
        """Close every idle connection and stop the sweeper."""
        self._sweeper.cancel()
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
