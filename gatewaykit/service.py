"""
The gateway as a Twisted service: binds the listeners, serves with the
current L{Gateway}, reloads its configuration without dropping anything,
and drains connections on stop.
"""

from __future__ import annotations

import signal
import socket
from typing import Any, Callable, Optional, cast

from attrs import frozen
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from gatewaykit.accesslog import AccessLog
from gatewaykit.config import ConfigError, load_config
from gatewaykit.config.model import Config, ListenerConfig
from gatewaykit.gateway import Gateway
from gatewaykit.listeners.factories import listener_factory
from gatewaykit.state import open_store

log = Logger()


@frozen
class ReloadResult:
    """
    What a reload did: C{ok} with the new config's C{digest}, or the
    C{problems} (C{PATH:LINE:COL: message} lines) that kept the old one.
    """

    ok: bool
    digest: str = ""
    problems: tuple[str, ...] = ()


def listener_key(listener: ListenerConfig) -> tuple[str, str, int]:
    """What must stay the same for a listener to be kept across a reload."""
    return (listener.protocol, listener.host, listener.port)


class GatewayService(Service):
    """
    Runs the gateway for a configuration file, reloadable.

    Listening happens in C{privilegedStartService} (before twistd drops
    privileges, so ports below 1024 work); a port that cannot be bound stops
    the start with a one-line error.

    @ivar ports: the listening ports by listener name (their C{getHost()}
        tells the port the OS chose for C{:0}).
    @ivar reloads: how many reloads succeeded (C{ok}) and failed (C{failed}).
    @param sockets: listening sockets opened beforehand (a worker's, see
        L{gatewaykit.workers}), as C{{listener name: (file descriptor,
        address family)}}; without them the service binds its own.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        sockets: Optional[dict[str, tuple[int, int]]] = None,
        metrics: Any = None,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.metrics = metrics
        self.gateway: Optional[Gateway] = None
        self.store: Any = None
        self.access_log: Optional[AccessLog] = None
        self.factories: dict[str, Any] = {}  # HTTP11ServerFactory or TCPProxyFactory
        self.ports: dict[str, IListeningPort] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.started_at = 0.0
        # Called with the new Config after each successful reload.
        self.on_reloaded: list[Callable[[Config], Any]] = []
        self._sockets = sockets
        self._handle_signals = handle_signals
        self._listening = False
        self._reloading: Optional[defer.Deferred[ReloadResult]] = None

    # -- starting -------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()
        if self._handle_signals:
            self._install_signal_handlers()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        config = self.config
        self.started_at = self.reactor.seconds()
        log_warnings(config)
        if config.gateway.access_log.path != "off":
            self.access_log = AccessLog(config.gateway.access_log, self.reactor)
        self.store = open_store(config.gateway.redis, self.reactor)
        self.gateway = self._gateway(config, self.store)
        try:
            for listener in config.listeners.values():
                self._open(listener, self.gateway)
        except CannotListenError as exc:
            for name in list(self.ports):
                self._close(name)
            raise SystemExit(f"gatewaykit: {exc}") from None
        self.gateway.start()

    def _gateway(self, config: Config, store: Any) -> Gateway:
        return Gateway(config, self.reactor, self.access_log, store, metrics=self.metrics)

    def _install_signal_handlers(self) -> None:
        def on_hup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload)

        def on_usr1(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reopen_logs)

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, on_usr1)

    # -- listeners --------------------------------------------------------------

    def _factory(self, listener: ListenerConfig, gateway: Gateway) -> Any:
        """The protocol factory serving C{listener}."""
        return listener_factory(listener, gateway, self.reactor)

    def _open(self, listener: ListenerConfig, gateway: Gateway) -> None:
        """Listen for C{listener} now; raises C{CannotListenError} with a clear message."""
        _, port, factory = self._listen_for(listener, gateway)
        self.factories[listener.name] = factory
        self.ports[listener.name] = port

    def _listen_for(self, listener: ListenerConfig, gateway: Gateway) -> tuple[str, Any, Any]:
        """Bind C{listener} with a new factory; C{(name, port, factory)}."""
        factory = self._factory(listener, gateway)
        try:
            port = self._bind(listener, factory)
        except CannotListenError as exc:
            raise CannotListenError(
                listener.host,
                listener.port,
                f"listener {listener.name} cannot bind"
                f" {listener.host or '*'}:{listener.port}: {exc.socketError}",
            ) from None
        address = cast(IPv4Address, port.getHost())
        log.info(
            "gatewaykit listener {name} ({protocol}) on {host}:{port}",
            name=listener.name,
            protocol=listener.protocol,
            host=address.host,
            port=address.port,
        )
        return listener.name, port, factory

    def _bind(self, listener: ListenerConfig, factory: Any) -> IListeningPort:
        opened = (self._sockets or {}).get(listener.name)
        if opened is not None:
            fd, family = opened
            return cast(IListeningPort, self.reactor.adoptStreamPort(fd, family, factory))
        interface = listener.host or "::"
        try:
            return self.reactor.listenTCP(listener.port, factory, backlog=1024, interface=interface)
        except CannotListenError:
            if listener.host:
                raise
            # No IPv6 on this machine: every IPv4 interface instead.
            return self.reactor.listenTCP(listener.port, factory, backlog=1024, interface="0.0.0.0")

    def _close(self, name: str) -> None:
        """Stop accepting on listener C{name}; its connections drain."""
        port = self.ports.pop(name, None)
        factory = self.factories.pop(name, None)
        if port is not None:
            port.stopListening()
        if factory is not None:
            for connection in list(factory.connections):
                connection.drain()

    def port_of(self, listener: str) -> int:
        """The TCP port listener C{listener} is bound to."""
        return cast(IPv4Address, self.ports[listener].getHost()).port

    # -- reload -------------------------------------------------------------------

    def reload(self) -> defer.Deferred[ReloadResult]:
        """
        Read the config file again. If it is valid, new requests use it at
        once; requests and tunnels in flight finish on the old one. If not,
        nothing changes. Fires with a L{ReloadResult}.
        """
        if self._reloading is not None:
            return self._reloading  # one at a time: this one reads the file anyway
        reloading = self._reloading = defer.maybeDeferred(self._reload)
        reloading.addBoth(self._reloaded)
        return reloading

    def _reloaded(self, result: Any) -> Any:
        self._reloading = None
        return result

    def _reload(self) -> ReloadResult:
        source = self.config.source
        try:
            config = load_config(source)
        except ConfigError as exc:
            return self._failed([str(problem) for problem in exc.problems])
        old_config, old_gateway = self.config, self.gateway
        assert old_gateway is not None
        log_warnings(config)
        store = self.store
        new_store = config.gateway.redis != old_config.gateway.redis
        if new_store:
            store = open_store(config.gateway.redis, self.reactor)
        access_log = self.access_log
        if config.gateway.access_log != old_config.gateway.access_log:
            access_log = (
                AccessLog(config.gateway.access_log, self.reactor)
                if config.gateway.access_log.path != "off"
                else None
            )
        try:
            gateway = Gateway(config, self.reactor, access_log, store, metrics=self.metrics)
        except Exception as exc:
            log.failure("building the new configuration failed")
            return self._failed([f"{source}: {exc}"])
        # Listeners added or changed are opened before anything is swapped,
        # so a port that cannot be bound leaves the old config running.
        kept: dict[str, ListenerConfig] = {}
        opened: list[tuple[str, Any, Any]] = []
        try:
            for name, listener in config.listeners.items():
                old = old_config.listeners.get(name)
                if old is not None and listener_key(old) == listener_key(listener):
                    kept[name] = listener
                    continue
                if old is not None and old.port == listener.port != 0:
                    self._close(name)  # same port, other protocol or host: rebind
                opened.append(self._listen_for(listener, gateway))
        except CannotListenError as exc:
            for _, port, _ in opened:
                port.stopListening()
            gateway.close()
            return self._failed([f"{source}: {exc.socketError}"])
        for name in list(self.factories):
            if name not in config.listeners:
                self._close(name)
        for name, port, factory in opened:
            self.ports[name] = port
            self.factories[name] = factory
        for name, listener in kept.items():
            factory = self.factories[name]
            factory.listener = listener
            factory.gateway = gateway
        gateway.adopt_state(old_gateway)
        self.config, self.gateway = config, gateway
        gateway.start()
        retired = old_gateway.retire()
        if new_store:
            old_store = self.store
            self.store = store
            retired.addCallback(lambda _: old_store.close())
        if access_log is not self.access_log:
            old_log, self.access_log = self.access_log, access_log
            if old_log is not None:
                retired.addCallback(lambda _: old_log.close())
        self.reloads["ok"] += 1
        log.info(
            "configuration reloaded from {source} (digest {digest})",
            source=source,
            digest=config.digest[:12],
        )
        for hook in self.on_reloaded:
            hook(config)
        return ReloadResult(True, config.digest)

    def _failed(self, problems: list[str]) -> ReloadResult:
        self.reloads["failed"] += 1
        log.error(
            "configuration not reloaded; still running the previous one:\n{problems}",
            problems="\n".join(problems),
        )
        return ReloadResult(False, problems=tuple(problems))

    def reopen_logs(self) -> None:
        """Reopen the access log file (after logrotate moved it)."""
        if self.access_log is not None:
            self.access_log.reopen()
            log.info("access log reopened")

    # -- stopping -------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop accepting, let requests in flight finish, then close."""
        super().stopService()
        ports, self.ports = self.ports, {}
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports.values()])
        connections = [c for f in self.factories.values() for c in f.connections]
        if connections:
            log.info(
                "draining {count} connections (up to {timeout}s)",
                count=len(connections),
                timeout=self.config.gateway.drain_timeout,
            )
        for connection in connections:
            connection.drain()
        yield self._wait_for(self._open_connections, self.config.gateway.drain_timeout)
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

    def _open_connections(self) -> int:
        return sum(len(f.connections) for f in self.factories.values())

    def _wait_for(self, remaining: Callable[[], int], timeout: float) -> defer.Deferred:
        """Fires when C{remaining()} is 0, or after C{timeout} seconds."""
        done: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + timeout

        def check() -> None:
            left = remaining()
            if left == 0 or self.reactor.seconds() >= deadline:
                done.callback(left)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return done


def log_warnings(config: Config) -> None:
    """Log what the config check warned about (it still loaded)."""
    for warning in getattr(config, "warnings", ()):
        log.warn("{warning}", warning=str(warning))


def bound_socket(
    listener: ListenerConfig, reuse_port: bool = False, port: Optional[int] = None
) -> socket.socket:
    """
    A socket bound to C{listener}'s address (or to C{port} on its host),
    not yet listening. With C{reuse_port} several processes may bind the
    same address, and the kernel spreads connections over those listening.
    """
    host = listener.host
    port = listener.port if port is None else port
    families = [socket.AF_INET6, socket.AF_INET] if not host else [
        socket.AF_INET6 if ":" in host else socket.AF_INET
    ]
    for family in families:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            any_address = "::" if family == socket.AF_INET6 else "0.0.0.0"
            sock.bind((host or any_address, port))
            return sock
        except OSError:
            sock.close()
            if family == families[-1]:
                raise
    raise AssertionError("unreachable")


def listening_socket(
    listener: ListenerConfig, reuse_port: bool = False, port: Optional[int] = None
) -> socket.socket:
    """A non-blocking listening socket for C{listener} (see L{bound_socket})."""
    sock = bound_socket(listener, reuse_port, port)
    sock.listen(1024)
    sock.setblocking(False)
    return sock
