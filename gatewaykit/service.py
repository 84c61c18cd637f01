"""
The gateway as a Twisted service: binds the listeners, serves with the
current L{Gateway}, and drains connections on stop.
"""

from __future__ import annotations

from typing import Any, Optional, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from gatewaykit.accesslog import AccessLog
from gatewaykit.config.model import Config, ListenerConfig
from gatewaykit.gateway import Gateway
from gatewaykit.listeners.http import HTTP11ServerFactory
from gatewaykit.state import open_store

log = Logger()


class GatewayService(Service):
    """
    Runs one gateway configuration.

    Listening happens in C{privilegedStartService} (before twistd drops
    privileges, so ports below 1024 work); a port that cannot be bound stops
    the start with a one-line error.

    @ivar ports: the listening ports by listener name (their C{getHost()}
        tells the port the OS chose for C{:0}).
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.gateway: Optional[Gateway] = None
        self.store: Any = None
        self.access_log: Optional[AccessLog] = None
        self.factories: dict[str, Any] = {}  # HTTP11ServerFactory or TCPProxyFactory
        self.ports: dict[str, IListeningPort] = {}
        self._listening = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        config = self.config
        if config.gateway.workers not in (1, "1"):
            log.warn(
                "gateway.workers is {workers}, but worker processes are not available "
                "yet: running one process",
                workers=config.gateway.workers,
            )
        if config.gateway.access_log.path != "off":
            self.access_log = AccessLog(config.gateway.access_log, self.reactor)
        self.store = open_store(config.gateway.redis, self.reactor)
        self.gateway = Gateway(config, self.reactor, self.access_log, self.store)
        for listener in config.listeners.values():
            factory = self._factory(listener, self.gateway)
            try:
                port = self._bind(listener, factory)
            except CannotListenError as exc:
                self._stop_ports()
                raise SystemExit(
                    f"gatewaykit: listener {listener.name} cannot bind "
                    f"{listener.host or '*'}:{listener.port}: {exc.socketError}"
                ) from None
            self.factories[listener.name] = factory
            self.ports[listener.name] = port
            address = cast(IPv4Address, port.getHost())
            log.info(
                "gatewaykit listener {name} ({protocol}) on {host}:{port}",
                name=listener.name,
                protocol=listener.protocol,
                host=address.host,
                port=address.port,
            )
        self.gateway.start()

    def _factory(self, listener: ListenerConfig, gateway: Gateway) -> Any:
        """The protocol factory serving C{listener}."""
        if listener.protocol == "tcp":
            from gatewaykit.tunnel.tcp import TCPProxyFactory

            return TCPProxyFactory(listener, gateway, self.reactor)
        return HTTP11ServerFactory(listener, gateway, self.reactor)

    def _bind(self, listener: ListenerConfig, factory: Any) -> IListeningPort:
        interface = listener.host or "::"
        try:
            return self.reactor.listenTCP(listener.port, factory, backlog=1024, interface=interface)
        except CannotListenError:
            if listener.host:
                raise
            # No IPv6 on this machine: every IPv4 interface instead.
            return self.reactor.listenTCP(listener.port, factory, backlog=1024, interface="0.0.0.0")

    def port_of(self, listener: str) -> int:
        """The TCP port listener C{listener} is bound to."""
        return cast(IPv4Address, self.ports[listener].getHost()).port

    def _stop_ports(self) -> list[defer.Deferred]:
        ports, self.ports = self.ports, {}
        return [defer.maybeDeferred(port.stopListening) for port in ports.values()]

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop accepting, let requests in flight finish, then close."""
        super().stopService()
        yield defer.gatherResults(self._stop_ports())
        connections = [c for f in self.factories.values() for c in f.connections]
        if connections:
            log.info(
                "draining {count} connections (up to {timeout}s)",
                count=len(connections),
                timeout=self.config.gateway.drain_timeout,
            )
        for connection in connections:
            connection.drain()
        yield self._wait_for_connections(self.config.gateway.drain_timeout)
        for factory in self.factories.values():
            for connection in list(factory.connections):
                cast(Any, connection.transport).abortConnection()
        if self.gateway is not None:
            self.gateway.close()
        if self.store is not None:
            yield self.store.close()
        if self.access_log is not None:
            self.access_log.close()
        # twistd re-raises the signal that stopped the reactor once it has
        # shut down, so the process would end "killed by SIGTERM". After a
        # graceful drain the contract (like nginx) is a plain exit status 0.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None

    def _wait_for_connections(self, timeout: float) -> defer.Deferred:
        """Fires when every connection closed, or after C{timeout} seconds."""
        done: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + timeout

        def check() -> None:
            open_count = sum(len(f.connections) for f in self.factories.values())
            if open_count == 0 or self.reactor.seconds() >= deadline:
                done.callback(open_count)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return done
