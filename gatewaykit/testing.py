"""
Fakes and builders for tests, ours and plugin authors'.

L{GatewayHarness} runs the real downstream protocol and gateway over
C{StringTransport}s with a C{MemoryReactorClock}, so a unit test can send
raw request bytes and read the raw response without any socket.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import httptools
from twisted.internet.address import IPv4Address
from twisted.internet.error import NotConnectingError, UserError
from twisted.internet.interfaces import IConnector
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import (
    AccessLogConfig,
    Config,
    GatewayConfig,
    Limits,
    ListenerConfig,
    Match,
    PolicyConfig,
    RedisConfig,
    RouteConfig,
    TargetConfig,
    UpstreamConfig,
)
from gatewaykit.gateway import Gateway
from gatewaykit.http.message import Headers
from gatewaykit.listeners.http import HTTP11ServerFactory, HTTP11ServerProtocol


def make_config(
    routes: Iterable[RouteConfig] = (),
    upstreams: Iterable[UpstreamConfig] = (),
    limits: Limits = Limits(),
    listeners: Iterable[ListenerConfig] = (ListenerConfig("web", "http", "127.0.0.1", 0),),
    node: str = "test-node",
    trusted_proxies: tuple = (),
    access_log: AccessLogConfig = AccessLogConfig(path="off"),
    policies: Iterable[PolicyConfig] = (),
    redis: Optional[RedisConfig] = None,
) -> Config:
    """A whole L{Config} built in code, without YAML."""
    return Config(
        source="<test>",
        digest="0" * 64,
        gateway=GatewayConfig(
            node=node,
            limits=limits,
            trusted_proxies=trusted_proxies,
            access_log=access_log,
            redis=redis,
        ),
        listeners={listener.name: listener for listener in listeners},
        upstreams={upstream.name: upstream for upstream in upstreams},
        policies={policy.name: policy for policy in policies},
        routes=tuple(routes),
    )


def route(name: str, index: int = 0, listeners: tuple = ("web",), **kwargs: Any) -> RouteConfig:
    """A L{RouteConfig}; C{match} may be given as keyword arguments of L{Match}."""
    match = kwargs.pop("match", None)
    if match is None:
        names = {field.name for field in Match.__attrs_attrs__}
        match = Match(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
    return RouteConfig(name=name, index=index, listeners=listeners, match=match, **kwargs)


def upstream(name: str, *addresses: str, **kwargs: Any) -> UpstreamConfig:
    """An L{UpstreamConfig} with C{host:port} targets."""
    targets = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        targets.append(TargetConfig(host, int(port)))
    return UpstreamConfig(name=name, targets=tuple(targets), **kwargs)


@implementer(IConnector)
class StoppableConnector:
    """
    A connector that, like the real ones, tells its factory at once that the
    connection failed when it is stopped while connecting.
    """

    def __init__(self, address: Any, factory: Any) -> None:
        self._address = address
        self._factory = factory
        self.stopped_connecting = False

    def stopConnecting(self) -> None:
        if self.stopped_connecting:
            raise NotConnectingError()
        self.stopped_connecting = True
        self._factory.clientConnectionFailed(self, Failure(UserError()))

    def disconnect(self) -> None:
        self.stopConnecting()

    def connect(self) -> None:
        pass

    def getDestination(self) -> Any:
        return self._address


class GatewayReactor(MemoryReactorClock):
    """
    A C{MemoryReactorClock} whose C{connectTCP} connectors behave like real
    ones when stopped (the stock fake only records it).
    """

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None
    ) -> Any:
        super().connectTCP(host, port, factory, timeout, bindAddress)
        connector = StoppableConnector(IPv4Address("TCP", host, port), factory)
        self.connectors[-1] = connector
        return connector


class Response:
    """A parsed HTTP/1.1 response."""

    def __init__(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers!r} {self.body[:60]!r}>"


class _HeadOnly(Exception):
    """Stops the parser after a head that has no body."""


class _ResponseCollector:
    def __init__(self, head_request: bool) -> None:
        self.responses: list[Response] = []
        self._head_request = head_request
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if self._head_request and status >= 200:
            raise _HeadOnly()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.responses.append(
            Response(
                self.parser.get_status_code(),
                self._reason,
                Headers(self._fields),
                b"".join(self._body),
            )
        )
        self._reset()


def parse_responses(data: bytes, head_request: bool = False) -> list[Response]:
    """
    Every complete response in C{data}. Responses to HEAD have no body, which
    the bytes alone cannot tell: pass C{head_request=True} when they answer
    HEAD requests.
    """
    collector = _ResponseCollector(head_request)
    rest = data
    while rest:
        try:
            collector.parser.feed_data(rest)
            break
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _HeadOnly):
                raise
            collector.on_message_complete()
            rest = rest[rest.index(b"\r\n\r\n") + 4 :]
            collector.parser = httptools.HttpResponseParser(collector)
    return collector.responses


def parse_response(data: bytes, head_request: bool = False) -> Response:
    """The one response in C{data}."""
    responses = parse_responses(data, head_request)
    if len(responses) != 1:
        raise AssertionError(f"expected one response, got {len(responses)} in {data!r}")
    return responses[0]


def install_plugin_folder(case: Any, folder: str) -> None:
    """
    Make C{folder} (holding a package and its C{twisted/plugins/} folder)
    importable and its plugins found for the rest of test C{case}, as if a
    process had started with it on C{sys.path} (a third party's installed
    package). Undone at the test's cleanup.
    """
    import importlib
    import os
    import sys

    from twisted.plugin import pluginPackagePaths

    from twisted import plugins as twisted_plugins

    sys.path.append(folder)
    importlib.invalidate_caches()
    # twisted.plugins computes its __path__ (the folders getPlugins scans)
    # from sys.path when first imported: add what a fresh process would.
    search = twisted_plugins.__path__
    before = list(search)
    search.extend(p for p in pluginPackagePaths("twisted.plugins") if p not in before)

    def uninstall() -> None:
        sys.path.remove(folder)
        search[:] = before
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(folder + os.sep):
                del sys.modules[name]
                if name.startswith("twisted.plugins."):
                    delattr(twisted_plugins, name.rpartition(".")[2])

    case.addCleanup(uninstall)


class TCPStringTransport(StringTransport):
    """A C{StringTransport} with the TCP-only methods the codecs call."""

    no_delay = False
    write_closed = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class GatewayHarness:
    """
    A gateway for one config on a fake reactor; L{connect} opens a client
    connection on a C{StringTransport}.
    """

    def __init__(
        self,
        config: Config,
        listener: str = "web",
        policy_types: Any = None,
        store: Any = None,
    ) -> None:
        self.reactor = GatewayReactor()
        self.config = config
        self.gateway = Gateway(config, self.reactor, store=store, policy_types=policy_types)
        self.factory = HTTP11ServerFactory(
            config.listeners[listener], self.gateway, self.reactor
        )

    def connect(
        self, client: str = "127.0.0.1", client_port: int = 50000
    ) -> tuple[HTTP11ServerProtocol, TCPStringTransport]:
        """A new client connection: the protocol and its transport."""
        protocol = self.factory.buildProtocol(None)
        assert protocol is not None
        transport = TCPStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", client, client_port),
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def accept_upstream(self, index: int = -1) -> tuple[Any, TCPStringTransport]:
        """
        Complete the C{index}th connection attempt the gateway made to an
        upstream: the upstream-side protocol and the transport it writes to.
        """
        factory: Any = self.reactor.tcpClients[index][2]
        connection = factory.buildProtocol(None)
        transport = TCPStringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def refuse_upstream(self, reason: Exception, index: int = -1) -> None:
        """Fail the C{index}th connection attempt with C{reason}."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(reason))

    def request(self, data: bytes, head_request: bool = False) -> Response:
        """Send C{data} on a new connection and parse the one response."""
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        return parse_response(transport.value(), head_request)

