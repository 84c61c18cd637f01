"""
The upstream HTTP/1.1 client connection: writes requests given by an
exchange, parses responses with httptools and hands them back piece by piece.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.http.wire import HOP_BY_HOP, hop_by_hop_fields

if TYPE_CHECKING:
    from gatewaykit.interfaces import ITarget
    from gatewaykit.upstream.pool import ConnectionPool

# An upstream response head larger than this is refused (502), as nginx's
# proxy_buffer_size and Envoy's max_response_headers_kb do.
MAX_RESPONSE_HEAD_BYTES = 64 * 1024


class InvalidResponse(Exception):
    """The upstream sent something that is not a valid HTTP/1.1 response."""


class _HeadResponseEnd(Exception):
    """Stops the parser after the head of a response to HEAD (it has no body)."""


@implementer(IPushProducer, IHalfCloseableProtocol)
class UpstreamConnection(Protocol):
    """
    One keep-alive connection to a target, serving one exchange at a time.

    The exchange (set as C{exchange} while a request is in progress) gets
    C{response_head(status, reason, fields, content_length, hop_by_hop)},
    C{response_body(data)}, C{response_complete()} or
    C{upstream_failed(reason)}, and C{touch()} when the client resumes
    reading. Each read is parsed between C{hold_response()} and
    C{release_response()}, so what it writes to its client can go as one.
    As an C{IPushProducer} the connection stops reading from the upstream
    while the client is slow.

    A C{101 Switching Protocols} answer ends its HTTP life: the exchange
    gets C{switched(connection, bytes_after_head)} and hands the connection
    to a tunnel (L{hand_over}); it is never pooled again.
    """

    # A TCP transport: ITCPTransport, IPushProducer and IConsumer at once.
    transport: Any

    def __init__(
        self,
        pool: ConnectionPool,
        target: ITarget,
        on_connect: Callable[[UpstreamConnection], None],
    ) -> None:
        self.pool = pool
        self.target = target
        self.exchange: Any = None
        self.reusable = True
        self.open = False
        self.idle_since = 0.0
        self._on_connect: Optional[Callable[[UpstreamConnection], None]] = on_connect
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._interim = False
        self._head_received = False
        self._until_close = False
        self._head_response_end = False
        self._paused = False
        self._switching = False
        self.tunnel: Any = None  # after a 101: gets upstream_data/eof/lost

    # -- connection -----------------------------------------------------

    def connectionMade(self) -> None:
        self.open = True
        self.transport.setTcpNoDelay(True)
        on_connect, self._on_connect = self._on_connect, None
        if on_connect is not None:
            on_connect(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.open = False
        self.reusable = False
        del self._parser  # it holds our bound methods
        if self.tunnel is not None:
            self.tunnel.upstream_lost()
            return
        self.pool.connection_lost(self)
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if self._until_close and self._head_received and reason.check(ConnectionDone):
            exchange.response_complete()
        else:
            exchange.upstream_failed(reason)

    def close(self) -> None:
        """Close the connection (it will not be reused)."""
        self.reusable = False
        if self.open:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent data."""
        self.reusable = False
        self.exchange = None
        if self.open:
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        """The upstream will send nothing more (it shut its side down)."""
        if self.tunnel is not None:
            self.tunnel.upstream_eof()
        else:
            # An HTTP response can end by the connection closing; done then.
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def hand_over(self, tunnel: Any, early: bytes) -> None:
        """Carry C{tunnel}'s bytes from now on, starting with C{early}."""
        self.tunnel = tunnel
        self.exchange = None
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if early:
            tunnel.upstream_data(early)

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.upstream_data(data)
            return
        exchange = self.exchange
        if exchange is None:
            # Bytes nobody asked for: the connection is not safe to reuse.
            self.reusable = False
            self.transport.loseConnection()
            return
        # Whatever this read makes the exchange write to its client (a head
        # and the body that came with it) leaves in one piece.
        exchange.hold_response()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._switching and self.exchange is not None:
                self.exchange.switched(self, data[exc.args[0] :])
            else:
                self._invalid("unexpected protocol switch from upstream")
        except httptools.HttpParserError as exc:
            if self._head_response_end:
                self._head_response_end = False
                self._parser = httptools.HttpResponseParser(self)
                # Anything after the head would be a body a HEAD response must
                # not have; then the connection's framing is unknown.
                if not data.endswith(b"\r\n\r\n"):
                    self.reusable = False
                self._message_done()
            else:
                reason = exc.__context__ if isinstance(exc.__context__, InvalidResponse) else exc
                self._invalid(str(reason) or "malformed response")
        finally:
            exchange.release_response()

    def _invalid(self, message: str) -> None:
        exchange = self.exchange
        self.abort()
        if exchange is not None:
            exchange.upstream_failed(Failure(InvalidResponse(message)))

    # -- IPushProducer: the client's transport pauses us ------------------

    def pauseProducing(self) -> None:
        if self.open:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.open:
            self._paused = False
            self.transport.resumeProducing()
            if self.exchange is not None:
                self.exchange.touch()

    def stopProducing(self) -> None:
        self.abort()

    # -- parser callbacks -----------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise InvalidResponse("response head too large")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            raise InvalidResponse(f"status {status} out of range")
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise InvalidResponse(f"HTTP version {parser.get_http_version()} in the status line")
        if status == 101:
            # The exchange decides whether it asked for this switch.
            self._switching = True
            self.reusable = False
        elif status < 200:
            # Interim responses (100 Continue, 103 Early Hints) are dropped:
            # the gateway answered the client's 100-continue itself.
            self._interim = True
            self._reason = b""
            self._fields = []
            self._head_bytes = 0
            return
        content_length: Optional[int] = None
        chunked = False
        connection: Optional[list[bytes]] = None
        for name, value in self._fields:
            lower = name.lower()
            if lower == b"content-length":
                content_length = int(value)
            elif lower == b"transfer-encoding":
                if value.strip().lower() != b"chunked" or chunked:
                    # A coding the gateway cannot undo would reach the
                    # client unannounced (nginx answers 502 too).
                    raise InvalidResponse(f"unsupported Transfer-Encoding {value!r}")
                chunked = True
            elif lower == b"connection":
                if connection is None:
                    connection = []
                connection.append(value)
        exchange = self.exchange
        head_request = exchange.method == "HEAD"
        no_body = head_request or status in (204, 304)
        self._head_received = True
        if not no_body and not chunked and content_length is None:
            self._until_close = True
            self.reusable = False
        exchange.response_head(
            status,
            self._reason,
            self._fields,
            None if chunked else content_length,
            HOP_BY_HOP if connection is None else hop_by_hop_fields(connection),
        )
        if head_request:
            self._head_response_end = True
            raise _HeadResponseEnd()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._switching:
            return  # the bytes that follow are another protocol's
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._message_done()

    def _message_done(self) -> None:
        if self._paused:
            # The client's backpressure was for this response only; the
            # connection must read again before it is reused (unregistering
            # a producer does not resume it).
            self._paused = False
            self.transport.resumeProducing()
        exchange = self.exchange
        self.exchange = None
        self._reason = b""
        self._fields = []
        self._head_bytes = 0
        self._head_received = False
        self._until_close = False
        if exchange is not None:
            exchange.response_complete()
