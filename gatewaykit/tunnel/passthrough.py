"""
C{tls_passthrough} listeners: TLS routed by server name, not terminated.

The gateway reads the client's first bytes until they hold a whole TLS
ClientHello (which may come over several TCP segments and several TLS
records), takes the server name (SNI) from it, picks the upstream the
listener's C{sni} mapping names for it (exact, then C{*.suffix}, then
C{*}), and from there on is a plain L{TCPTunnel}: the bytes it read are
sent to the target first, then everything both ways. The TLS session is
between the client and the target; the gateway never holds its keys.

A client that sends no TLS, no SNI, a ClientHello larger than
L{MAX_HELLO_BYTES}, or no whole ClientHello within the gateway's
C{header_timeout} goes to the C{*} upstream, or is closed when there is
none. A client that sends nothing at all in that time is closed.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewaykit.config.model import ListenerConfig
from gatewaykit.listeners.names import NameTable
from gatewaykit.timer import Timer
from gatewaykit.tunnel.tcp import TCPProxyFactory, TCPTunnel

log = Logger()

# Bytes read while looking for the ClientHello; a real one is a few hundred
# bytes (under 2 KiB with post-quantum key shares).
MAX_HELLO_BYTES = 16 * 1024

_HANDSHAKE = 22  # TLS record content type
_CLIENT_HELLO = 1  # handshake message type
_SERVER_NAME = 0  # extension type
_HOST_NAME = 0  # server name type
_MAX_RECORD = 2**14 + 2048  # the largest TLSCiphertext; a plaintext record is smaller
_HOST = re.compile(rb"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


class NeedMore(Exception):
    """The bytes so far end before the ClientHello does."""


class NotClientHello(Exception):
    """The bytes cannot be (the start of) a TLS ClientHello."""


class _Reader:
    """Reads big-endian fields from a ClientHello; overruns are malformed."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            raise NotClientHello("a ClientHello field runs past its end")
        piece = self._data[self._offset : end]
        self._offset = end
        return piece

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        """A field prefixed by its length in C{length_size} bytes."""
        return self.take(self.number(length_size))


def client_hello(data: bytes) -> bytes:
    """
    The body of the ClientHello at the start of C{data}, reassembled from
    its TLS records.

    @raise NeedMore: C{data} ends before the ClientHello does.
    @raise NotClientHello: C{data} does not start with one.
    """
    message = bytearray()
    offset = 0
    while True:
        header = data[offset : offset + 5]
        if len(header) < 5:
            _check_start(header)
            raise NeedMore()
        if header[0] != _HANDSHAKE or header[1] != 3:
            raise NotClientHello("not a TLS handshake record")
        length = int.from_bytes(header[3:5], "big")
        if not 0 < length <= _MAX_RECORD:
            raise NotClientHello(f"a TLS record of {length} bytes")
        if len(data) < offset + 5 + length:
            raise NeedMore()
        message += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                raise NotClientHello("the first handshake message is not a ClientHello")
            size = int.from_bytes(message[1:4], "big")
            if size > MAX_HELLO_BYTES:
                raise NotClientHello(f"a ClientHello of {size} bytes")
            if len(message) >= 4 + size:
                return bytes(message[4 : 4 + size])


def _check_start(header: bytes) -> None:
    """Refuse a record header already wrong in its first bytes."""
    if header[:1] and header[0] != _HANDSHAKE:
        raise NotClientHello("not a TLS handshake record")
    if header[1:2] and header[1] != 3:
        raise NotClientHello("not a TLS handshake record")


def hello_server_name(hello: bytes) -> Optional[str]:
    """
    The lower-case host name a ClientHello body asks for (SNI), or C{None}
    when it names none.

    @raise NotClientHello: the body is malformed.
    """
    reader = _Reader(hello)
    reader.take(2 + 32)  # client_version, random
    reader.vector(1)  # legacy_session_id
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    if reader.remaining == 0:
        return None  # no extensions at all
    extensions = _Reader(reader.vector(2))
    while extensions.remaining:
        kind = extensions.number(2)
        body = extensions.vector(2)
        if kind != _SERVER_NAME:
            continue
        names = _Reader(_Reader(body).vector(2))
        while names.remaining:
            name_type = names.number(1)
            name = names.vector(2)
            if name_type == _HOST_NAME:
                if not 0 < len(name) <= 253 or not _HOST.fullmatch(name):
                    raise NotClientHello("an invalid server name")
                return name.decode("ascii").lower().rstrip(".")
        return None
    return None


def server_name(data: bytes) -> Optional[str]:
    """
    The SNI host name of the ClientHello at the start of C{data}, or
    C{None} when it has none.

    @raise NeedMore: C{data} ends before the ClientHello does.
    @raise NotClientHello: C{data} does not start with a ClientHello.
    """
    return hello_server_name(client_hello(data))


class PassthroughTunnel(TCPTunnel):
    """
    One client connection of a C{tls_passthrough} listener: the ClientHello
    is read (and kept), the upstream chosen by its server name, and the
    connection tunnelled to a target of it like a C{tcp} listener's.

    @ivar server_name: the name the client asked for (C{None} until read,
        or when it sent none).
    """

    def __init__(self, factory: PassthroughFactory) -> None:
        super().__init__(factory)
        self._passthrough = factory  # self.factory, typed as what it is
        self.server_name: Optional[str] = None
        self._hello = bytearray()
        self._routed = False
        self._hello_timer = Timer(factory.reactor, self._hello_timed_out)

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.factory.connections.add(self)
        self._hello_timer.set(self.factory.gateway.limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._routed:
            super().dataReceived(data)
            return
        self._hello += data
        try:
            name = server_name(bytes(self._hello))
        except NeedMore:
            if len(self._hello) > MAX_HELLO_BYTES:
                self._route(None, f"no ClientHello in the first {MAX_HELLO_BYTES} bytes")
            return
        except NotClientHello as e:
            self._route(None, str(e))
            return
        self._route(name, None if name is not None else "no server name (SNI)")

    def _route(self, name: Optional[str], problem: Optional[str]) -> None:
        """Tunnel to the upstream for C{name}, or to C{*} when there is a C{problem}."""
        self._routed = True
        self._hello_timer.cancel()
        self.server_name = name
        names = self._passthrough.names
        upstream = names.default if problem is not None else names.lookup(name)
        if upstream is None:
            log.info(
                "tls_passthrough listener {listener}: closing {client}: {reason}"
                " and no upstream for \"*\"",
                listener=self.factory.listener.name,
                client=self._client(),
                reason=problem or f"no upstream for server name {name!r}",
            )
            self.transport.loseConnection()
            return
        # What was read is sent first once a target is connected.
        self.transport.pauseProducing()
        self._early.append(bytes(self._hello))
        self._hello = bytearray()
        try:
            self._start(upstream)
        except Exception:
            log.failure(
                "tls_passthrough listener {listener}: tunnel from {client} failed to start",
                listener=self.factory.listener.name,
                client=self._client(),
            )
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        if not self._routed:
            # The client ended its side before a whole ClientHello.
            self._routed = True
            self._hello_timer.cancel()
            self.transport.loseConnection()
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._hello_timer.cancel()
        self._hello = bytearray()
        super().connectionLost(reason)

    def _hello_timed_out(self) -> None:
        if self._routed:
            return
        if not self._hello:
            self._routed = True
            self.transport.abortConnection()
            return
        self._route(None, "no whole ClientHello in time")


class PassthroughFactory(TCPProxyFactory):
    """
    Builds a L{PassthroughTunnel} per client connection of one
    C{tls_passthrough} listener.

    @ivar names: the upstream name for each server name (the listener's
        C{sni} mapping; its C{*} entry is the default), rebuilt whenever
        C{listener} is set.
    """

    names: NameTable[str]

    @property
    def listener(self) -> ListenerConfig:
        return self._listener

    @listener.setter
    def listener(self, listener: ListenerConfig) -> None:
        # Set by the base class, and by a reload: new connections are routed
        # by the new mapping.
        self._listener = listener
        self.names = NameTable(
            ((name, upstream) for name, upstream in listener.sni if name != "*"),
            default=dict(listener.sni).get("*"),
        )

    def reconfigure(self, listener: ListenerConfig) -> None:
        """Route new connections by C{listener}'s C{sni} mapping from now on."""
        self.listener = listener

    def buildProtocol(self, addr: Any) -> PassthroughTunnel:
        return PassthroughTunnel(self)
