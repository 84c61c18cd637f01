"""
The downstream HTTP/1.1 codec: a Twisted protocol parsing requests with
httptools and writing responses, one L{HTTP11Stream} per request.

Requests are answered in order. A pipelined request waits (its body buffered,
reading paused) until the one before it is answered. Nothing here knows about
routes or upstreams: each complete request head is handed to the listener's
current L{gatewaykit.gateway.Gateway}.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

import httptools
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.batched_write import write as batched_write
from gatewaykit.config.model import ListenerConfig
from gatewaykit.http.errors import GatewayError, bad_request
from gatewaykit.http.forwarding import client_ip, is_sane_request_id, new_request_id
from gatewaykit.http.message import Headers, Request
from gatewaykit.http.stream import ResponseMethods
from gatewaykit.http.wire import (
    HOP_BY_HOP,
    LAST_CHUNK,
    chunk,
    connection_tokens,
    hop_by_hop_fields,
    reason_for,
    serialize_fields,
)
from gatewaykit.interfaces import IResponseStream
from gatewaykit.routing.paths import BadPath, normalise_path
from gatewaykit.timer import Timer

if TYPE_CHECKING:
    from gatewaykit.gateway import Gateway

log = Logger()

# After the last response of a connection whose request body was not read,
# keep reading (and discarding) this long so the client sees the response
# instead of a reset (nginx's lingering close).
LINGER_SECONDS = 5.0
# A request body left unread after its response is read and thrown away when
# it is at most this long, so the connection can be kept; else the
# connection closes.
DISCARD_BODY_BYTES = 64 * 1024
# Body bytes buffered for a request whose handler is not ready for them yet.
BODY_BUFFER_BYTES = 64 * 1024

_HOST = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?$")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing with an error answer."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error)
        self.error = error


@implementer(IConsumer, IResponseStream)
class HTTP11Stream(ResponseMethods):
    """
    One request on an HTTP/1.1 connection and the response written to it.

    C{lost} tells whether the client went away.

    Handlers (route actions) use: L{attach_body_sink}, L{pause_body},
    L{resume_body}, L{send_continue} for the request body; L{write_head},
    L{write}, L{finish}, L{abort}, L{send_error}, L{respond} and the
    C{IConsumer} methods for the response; and set C{handler} to an object
    with C{stream_lost()} to learn that the client went away.
    """

    def __init__(
        self,
        protocol: HTTP11ServerProtocol,
        request: Request,
        error: Optional[GatewayError] = None,
    ) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self.request = request
        self.error = error
        self.status = 0
        self.bytes_sent = 0
        self.head_sent = False
        self.finished = False
        self.lost = False
        self.body_done = not request.has_body
        self.body_bytes = 0
        self.close_after = error is not None and error.close
        self.handler: Any = None
        self.upstream_address = ""
        self.gateway: Optional[Gateway] = None
        self._sink: Any = None
        self._buffer: Optional[list[bytes]] = None
        self._buffered = 0
        self._body_error: Optional[GatewayError] = None
        self._chunked = False
        self._no_body = False
        self._producing = False
        self._held: Optional[list[bytes]] = None  # see hold()

    # -- request body ---------------------------------------------------

    def attach_body_sink(self, sink: Any) -> None:
        """
        Deliver the request body to C{sink}: C{body_received(data)} per
        piece, then C{body_complete()}, or C{body_failed(GatewayError)}.
        Pieces that arrived earlier are delivered at once.
        """
        self._sink = sink
        buffered, self._buffer = self._buffer, None
        if buffered:
            self._buffered = 0
            self._protocol._resume("buffer")
            for data in buffered:
                sink.body_received(data)
        if self._body_error is not None:
            sink.body_failed(self._body_error)
        elif self.body_done:
            sink.body_complete()

    def detach_body_sink(self) -> None:
        """Deliver no more of the request body (it is discarded)."""
        self._sink = None

    def pause_body(self) -> None:
        """Stop reading the request body from the client for now."""
        self._protocol._pause("sink")

    def resume_body(self) -> None:
        """Read the request body again."""
        self._protocol._resume("sink")

    def send_continue(self) -> None:
        """Send C{100 Continue} if the client waits for it before its body."""
        request = self.request
        if request.expect_continue and not self.head_sent and not self.body_done:
            request.expect_continue = False
            self._send(_CONTINUE)
            self._protocol._await_body()

    def _body_received(self, data: bytes) -> None:
        self.body_bytes += len(data)
        sink = self._sink
        if sink is not None:
            sink.body_received(data)
        elif not self.finished:
            if self._buffer is None:
                self._buffer = []
            self._buffer.append(data)
            self._buffered += len(data)
            if self._buffered > BODY_BUFFER_BYTES:
                self._protocol._pause("buffer")

    def _body_complete(self) -> None:
        self.body_done = True
        if self._sink is not None:
            self._sink.body_complete()

    def _body_failed(self, error: GatewayError) -> None:
        self._body_error = error
        self.close_after = True
        if self._sink is not None:
            self._sink.body_failed(error)
        elif self.handler is None and not self.head_sent:
            # Not yet handed to a handler: answer the error when dispatched.
            self.error = error

    # -- response -------------------------------------------------------

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        """
        Send the status line and C{fields} (which must not hold framing
        fields). C{content_length} C{None} means the length is unknown: the
        body is sent chunked (or close-delimited to an HTTP/1.0 client).
        """
        if self.head_sent or self.lost:
            return
        self.head_sent = True
        self.status = status
        request = self.request
        protocol = self._protocol
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_for(status))]
        if status == 101:
            # Switching protocols: no body and no framing; the caller gives
            # Connection and Upgrade, and the connection leaves HTTP.
            self._no_body = True
            lines.append(serialize_fields(fields))
            lines.append(b"\r\n")
            self._send(b"".join(lines))
            return
        if request.method == "HEAD" or status in (204, 304) or status < 200:
            self._no_body = True
            if content_length is not None and status != 204:
                lines.append(b"Content-Length: %d\r\n" % content_length)
        elif content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % content_length)
        elif request.version == "1.1":
            self._chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.close_after = True
        if self.close_after or not request.keep_alive or protocol.draining:
            self.close_after = True
            lines.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(serialize_fields(fields))
        lines.append(protocol.factory.added_fields)
        lines.append(b"\r\n")
        self._send(b"".join(lines))

    def write(self, data: bytes) -> None:
        """Send a piece of the response body."""
        if self._no_body or self.lost or not data:
            return
        self.bytes_sent += len(data)
        if self._chunked:
            self._send(b"".join(chunk(data)))
        else:
            self._send(data)

    def finish(self) -> None:
        """End the response."""
        if self.finished:
            return
        self.finished = True
        if self.lost:
            return
        self.unregisterProducer()
        if self._chunked:
            self._send(LAST_CHUNK)
        self.release()
        self._protocol._stream_finished(self)

    def abort(self) -> None:
        """
        End a response that cannot be completed: the connection closes after
        what was written, so the client sees it cut short.
        """
        self.close_after = True
        if self.finished:
            return
        self.finished = True
        if not self.lost:
            self.release()
            self.unregisterProducer()
            self._protocol._stream_finished(self, complete=False)

    def hand_over(self, tunnel: Any) -> None:
        """After a 101 went out, this connection carries C{tunnel}'s bytes."""
        self.release()
        self.unregisterProducer()
        self._protocol.hand_over(self, tunnel)

    @property
    def client_transport(self) -> Any:
        """The client connection's transport (for a tunnel to join)."""
        return self._transport

    @property
    def factory(self) -> HTTP11ServerFactory:
        """The listener's factory (its counters)."""
        return self._protocol.factory

    def date(self) -> bytes:
        """The current C{Date} value (formatted once a second)."""
        return self._protocol.factory.date()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.lost:
            # As Twisted's transports do: a producer for a gone consumer
            # is stopped at once, so it releases what it holds.
            producer.stopProducing()
            return
        self._producing = True
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producing:
            self._producing = False
            if not self.lost:
                self._transport.unregisterProducer()

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            batched_write(self._transport, held[0] if len(held) == 1 else b"".join(held))

    def _send(self, data: bytes) -> None:
        held = self._held
        if held is None:
            batched_write(self._transport, data)
        else:
            held.append(data)

    def _connection_lost(self) -> None:
        self.lost = True
        self._held = None
        if self.finished:
            return
        handler = self.handler
        if handler is not None:
            handler.stream_lost()
        if self.gateway is not None:
            # Answered or not, the request is over: account for it (logged
            # as 499, nginx's "client closed request", if nothing was sent).
            self.finished = True
            if not self.head_sent:
                self.status = 499
            self._protocol.factory.stream_finished(self)


@implementer(IHalfCloseableProtocol)
class HTTP11ServerProtocol(Protocol):
    """
    One client connection speaking HTTP/1.1.

    Reading is paused for several independent reasons (a pipelined request
    waiting, a slow upstream, a full body buffer); it resumes only when none
    is left.
    """

    # A TCP transport: ITCPTransport, IPushProducer and IConsumer at once.
    transport: Any
    # On an https listener, the connection's TLSInfo (set before
    # connectionMade); every request carries it as request.tls.
    tls: Any = None

    def __init__(self, factory: HTTP11ServerFactory) -> None:
        self.factory = factory
        self.draining = False
        self._parser = httptools.HttpRequestParser(self)
        self._streams: deque[HTTP11Stream] = deque()
        self._current: Optional[HTTP11Stream] = None  # whose body is being parsed
        self._discarding: Optional[HTTP11Stream] = None  # answered, body still arriving
        self._accepting = True  # False once no further request will be read
        self._closing = False
        self._paused: set[str] = set()
        self._timer = Timer(factory.reactor, self._timed_out)
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_raw = 0
        self._in_head = False
        self._limits = factory.gateway.limits
        self._refusal: Optional[GatewayError] = None
        self._tunnel: Any = None  # once switched to another protocol
        self._after_upgrade = b""  # bytes that followed an upgrade request
        self._read_closed = False
        self._client_host = ""
        self._client_port = 0
        self._server_port = 0

    # -- connection -----------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        transport.setTcpNoDelay(True)
        peer = transport.getPeer()
        self._client_host = getattr(peer, "host", "")
        self._client_port = getattr(peer, "port", 0)
        self._server_port = getattr(transport.getHost(), "port", 0)
        self.factory.connection_made(self)
        self._timer.set(self._limits.idle_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._timer.cancel()
        self._accepting = False
        if self._tunnel is not None:
            self._tunnel.client_lost()
            self.factory.connection_lost(self)
            return
        del self._parser  # it holds our bound methods
        streams = list(self._streams)
        if self._current is not None and self._current not in streams:
            streams.append(self._current)
        self._streams.clear()
        self._current = self._discarding = None
        for stream in streams:
            stream._connection_lost()
        self.factory.connection_lost(self)

    def dataReceived(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.client_data(data)
            return
        if not self._accepting:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # An Upgrade (or CONNECT) request was parsed to its end. What
            # follows belongs to the new protocol if the route switches to
            # it (a WebSocket tunnel); otherwise the request is answered as a
            # plain one and nothing more is read from this connection.
            self._accepting = False
            self._after_upgrade = data[exc.args[0] :]
            self._pause("upgrade")
        except httptools.HttpParserError as exc:
            if self._refusal is None and not self._accepting:
                return  # bytes after a request that ended the connection
            self._parse_failed(self._refusal or bad_request(_describe(exc)))
            return
        if self._in_head:
            # httptools buffers an unfinished field itself, out of sight of
            # on_header's count: bound what an unfinished head may take.
            self._head_raw += len(data)
            if self._head_raw > self._limits.max_header_bytes + BODY_BUFFER_BYTES:
                self._parse_failed(
                    GatewayError(431, "headers_too_large", "request head too large", close=True)
                )

    def readConnectionLost(self) -> None:
        """The client will send nothing more (it shut its side down)."""
        self._read_closed = True
        if self._tunnel is not None:
            self._tunnel.client_eof()
            return
        self._accepting = False
        if self._closing:
            self.transport.loseConnection()
        elif not self._streams and self._current is None:
            self._close()

    def writeConnectionLost(self) -> None:
        pass

    def hand_over(self, stream: HTTP11Stream, tunnel: Any) -> None:
        """
        After C{stream}'s switching answer (101) went out, this connection
        carries C{tunnel}'s bytes: C{tunnel.client_data}, C{client_eof},
        C{client_lost} are called from now on.
        """
        self._tunnel = tunnel
        self._timer.cancel()
        if self._streams and self._streams[0] is stream:
            self._streams.popleft()
        stream.finished = True
        self.factory.stream_finished(stream)
        early, self._after_upgrade = self._after_upgrade, b""
        self._paused.clear()
        self.transport.resumeProducing()
        if early:
            tunnel.client_data(early)
        if self._read_closed:
            tunnel.client_eof()

    def drain(self) -> None:
        """
        Finish the request in progress, then close; close now if idle. A
        tunnel is left to end by itself (or at the drain timeout).
        """
        self.draining = True
        idle = not self._streams and not self._in_head and self._current is None
        if idle and self._tunnel is None:
            self._close()

    # -- pausing --------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def _resume(self, *reasons: str) -> None:
        paused = self._paused
        if not paused:
            return
        for reason in reasons:
            paused.discard(reason)
        if not paused and not self._closing:
            self.transport.resumeProducing()

    # -- parser callbacks -----------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._fields = []
        self._head_bytes = 0
        self._head_raw = 0
        self._limits = limits = self.factory.gateway.limits
        self._timer.set(limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_uri_bytes:
            self._refuse(GatewayError(414, "uri_too_long", "request target too long", close=True))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes + len(self._url) > self._limits.max_header_bytes:
            self._refuse(
                GatewayError(431, "headers_too_large", "request head too large", close=True)
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._timer.clear()
        gateway = self.factory.gateway
        try:
            request = self._build_request(gateway)
            error = None
        except GatewayError as exc:
            request = self._fallback_request()
            error = exc
        stream = HTTP11Stream(self, request, error)
        if error is None and request.content_length is not None:
            if request.content_length > self._limits.max_body_bytes:
                stream.error = GatewayError(
                    413, "body_too_large", "request body larger than allowed", close=True
                )
                stream.close_after = True
        if not request.keep_alive or stream.close_after:
            self._accepting = False
        self._current = stream
        self._streams.append(stream)
        if not stream.body_done and not request.expect_continue:
            self._await_body()
        if len(self._streams) == 1:
            self._dispatch(stream)
        else:
            self._pause("pipeline")
        if stream.error is not None:
            self._refuse(stream.error)

    def on_body(self, body: bytes) -> None:
        stream = self._current
        if stream is None:
            return
        self._timer.set(self._limits.body_timeout)
        if stream.body_bytes + len(body) > self._limits.max_body_bytes:
            self._refuse(
                GatewayError(413, "body_too_large", "request body larger than allowed", close=True)
            )
        stream._body_received(body)

    def on_message_complete(self) -> None:
        stream = self._current
        self._current = None
        if stream is None:
            return
        if stream.request.has_body:
            self._timer.clear()  # the body timeout's
        stream._body_complete()
        if stream is self._discarding:
            self._discarding = None
            self._after_response(stream)

    def _refuse(self, error: GatewayError) -> None:
        self._refusal = error
        raise _Refused(error)

    def _await_body(self) -> None:
        """The request body is due: each piece must come within body_timeout."""
        self._timer.set(self._limits.body_timeout)

    # -- requests -------------------------------------------------------

    def _build_request(self, gateway: Gateway) -> Request:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise GatewayError(
                505, "http_version_not_supported", f"HTTP/{version} is not spoken here", close=True
            )
        return build_request(
            self.factory,
            gateway,
            parser.get_method().decode("ascii"),
            self._url,
            version,
            self._fields,
            parser.should_keep_alive(),
            self._client_host,
            self._client_port,
            self._server_port,
            self.tls,
        )

    def _fallback_request(self) -> Request:
        """A request good enough to answer and log when the head was refused."""
        try:
            method = self._parser.get_method().decode("ascii")
        except Exception:
            method = "-"
        return fallback_request(
            self.factory,
            method,
            self._url,
            self._fields,
            self._client_host,
            self._client_port,
            self._server_port,
        )

    def _dispatch(self, stream: HTTP11Stream) -> None:
        if stream.error is not None:
            stream.send_error(stream.error)
            return
        self.factory.gateway.dispatch(stream)

    def _parse_failed(self, error: GatewayError) -> None:
        """The bytes read cannot be parsed further: answer, then close."""
        self._accepting = False
        self._in_head = False
        stream = self._current
        if stream is not None and not stream.body_done:
            # The body of a request already under way is broken.
            stream._body_failed(error)
            self._current = None
            if stream is self._discarding:
                self._discarding = None
                self._close()
            return
        if self._refusal is not None and stream is not None and stream.error is error:
            return  # already queued as that request's answer
        stream = HTTP11Stream(self, self._fallback_request(), error)
        stream.close_after = True
        self._streams.append(stream)
        if len(self._streams) == 1:
            self._dispatch(stream)

    # -- responses ------------------------------------------------------

    def _stream_finished(self, stream: HTTP11Stream, complete: bool = True) -> None:
        if not self._streams or self._streams[0] is not stream:
            log.error("response finished out of order: {stream!r}", stream=stream)
            self.transport.abortConnection()
            return
        self._streams.popleft()
        self._resume("sink", "buffer")
        self.factory.stream_finished(stream)
        if not complete:
            self._close()
            return
        if not stream.body_done:
            remaining = stream.request.content_length
            if (
                stream.close_after
                or remaining is None
                or remaining - stream.body_bytes > DISCARD_BODY_BYTES
                or not self._accepting
            ):
                self._close()
                return
            # Read the rest of the body (and throw it away) before going on.
            self._discarding = stream
            self._resume("pipeline")
            self._await_body()
            return
        self._after_response(stream)

    def _after_response(self, stream: HTTP11Stream) -> None:
        if stream.close_after or not stream.request.keep_alive or self.draining:
            self._close()
            return
        if self._streams:
            following = self._streams[0]
            if len(self._streams) == 1:
                self._resume("pipeline")
            self._dispatch(following)
            return
        if not self._accepting:
            self._close()
            return
        self._resume("pipeline")
        if not self._in_head:
            self._timer.set(self._limits.idle_timeout)

    def _close(self) -> None:
        """Close after what was written; linger if the client may still send."""
        if self._closing:
            return
        self._closing = True
        self._accepting = False
        transport = self.transport
        if self._read_closed:
            transport.loseConnection()  # nothing more can come to discard
            return
        transport.loseWriteConnection()
        # Keep reading (and discarding) so unread request bytes don't make
        # the kernel reset the connection before the client reads our answer.
        self._paused.clear()
        transport.resumeProducing()
        self._timer.set(LINGER_SECONDS)

    def _timed_out(self) -> None:
        if self._closing:
            self.transport.abortConnection()
        elif self._in_head:
            self._parse_failed(
                GatewayError(
                    408, "request_timeout", "request head not received in time", close=True
                )
            )
        elif self._current is not None and not self._current.body_done:
            if self._paused:
                # We stopped reading (a pipelined request waits its turn, or
                # the upstream is slow to take the body): not the client's delay.
                self._await_body()
            else:
                self._parse_failed(
                    GatewayError(
                        408, "request_timeout", "request body not received in time", close=True
                    )
                )
        elif not self._streams:
            self.transport.loseConnection()


# -- requests, for every downstream codec ---------------------------------------------


def _check_transfer_codings(codings: list[bytes], version: str) -> None:
    """
    Refuse a request body framing other than C{Transfer-Encoding: chunked}
    alone (RFC 9112 6.1, 6.3): an upstream might frame it otherwise.
    """
    if version == "1.0":
        raise bad_request("Transfer-Encoding in an HTTP/1.0 request")
    if codings[-1] != b"chunked":
        raise bad_request("the final transfer coding is not chunked")
    if codings != [b"chunked"]:
        raise GatewayError(
            501,
            "not_implemented",
            "transfer codings other than chunked are not supported",
            close=True,
        )


def build_request(
    factory: HTTP11ServerFactory,
    gateway: Gateway,
    method: str,
    target: bytes,
    version: str,
    fields: list[tuple[bytes, bytes]],
    keep_alive: bool,
    client_host: str,
    client_port: int,
    server_port: int,
    tls: Any,
) -> Request:
    """
    The L{Request} for a parsed head (HTTP/1.1 and HTTP/2 alike): C{Host}
    (or an absolute-form target's authority, which replaces C{Host} in
    C{fields}), path normalisation, C{Expect}, C{X-Request-ID}, the client
    address and the C{Connection} options. Raises L{GatewayError} for a
    head to refuse.
    """
    host_value: Optional[bytes] = None
    hosts = 0
    content_length: Optional[int] = None
    chunked = False
    codings: list[bytes] = []
    expect = False
    request_id: Optional[bytes] = None
    connection: Optional[list[bytes]] = None
    forwarded_for: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower == b"host":
            hosts += 1
            host_value = value
        elif lower == b"content-length":
            content_length = int(value)
        elif lower == b"transfer-encoding":
            chunked = True
            codings += (coding.strip().lower() for coding in value.split(b","))
        elif lower == b"expect":
            if value.lower() != b"100-continue":
                raise GatewayError(417, "expectation_failed", "only 100-continue is supported")
            expect = True
        elif lower == b"x-request-id":
            request_id = value
        elif lower == b"connection":
            if connection is None:
                connection = []
            connection.append(value)
        elif lower == b"x-forwarded-for":
            forwarded_for.append(value)
    if hosts > 1:
        raise bad_request("more than one Host field")
    if chunked:
        _check_transfer_codings(codings, version)
    upgrade: Optional[str] = None
    if connection is not None and b"upgrade" in connection_tokens(connection):
        offered = Headers(fields).get(b"upgrade")
        if offered is not None:
            upgrade = offered.split(b",")[0].strip().lower().decode("latin-1")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        # absolute-form: its authority replaces Host (RFC 9112 3.2.2)
        rest = target.split(b"//", 1)[1]
        end = len(rest)
        for sep in (b"/", b"?"):
            index = rest.find(sep)
            if index != -1 and index < end:
                end = index
        authority, rest = rest[:end], rest[end:]
        if b"@" in authority:
            raise bad_request("user information in the request target")
        path, _, query = rest.partition(b"?")
        path = path or b"/"
        host_value = authority
        fields[:] = [(n, authority if n.lower() == b"host" else v) for n, v in fields]
        if hosts == 0:
            fields.append((b"Host", authority))
    elif target == b"*" and method == "OPTIONS":
        path, query = b"*", b""
    else:
        raise bad_request("malformed request target")
    if host_value is None:
        if version != "1.0":
            raise bad_request("missing Host field")
        host, port = "", None
    else:
        host, port = _split_host(host_value)
    if path != b"*":
        try:
            normal_path = normalise_path(path)
        except BadPath as exc:
            raise bad_request(str(exc)) from None
    else:
        normal_path = "*"
    if request_id is None or not is_sane_request_id(request_id):
        rid = new_request_id()
    else:
        rid = request_id.decode("ascii")
    return Request(
        method=method,
        target=target,
        path=normal_path,
        query=query.decode("latin-1"),
        version=version,
        headers=Headers(fields),
        host=host,
        port=port,
        server_port=server_port,
        scheme=factory.scheme,
        client_host=client_host,
        client_port=client_port,
        client_ip=client_ip(client_host, forwarded_for, gateway.trusted_proxies),
        listener=factory.listener.name,
        request_id=rid,
        keep_alive=keep_alive,
        content_length=None if chunked else content_length,
        chunked=chunked,
        expect_continue=expect,
        received_at=factory.reactor.seconds(),
        hop_by_hop=HOP_BY_HOP if connection is None else hop_by_hop_fields(connection),
        upgrade=upgrade,
        tls=tls,
    )


def fallback_request(
    factory: HTTP11ServerFactory,
    method: str,
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    client_host: str,
    client_port: int,
    server_port: int,
    tls: Any = None,
) -> Request:
    """A request good enough to answer and log when a head was refused."""
    return Request(
        method=method,
        target=target,
        path="-",
        headers=Headers(fields),
        server_port=server_port,
        scheme=factory.scheme,
        client_host=client_host,
        client_port=client_port,
        listener=factory.listener.name,
        request_id=new_request_id(),
        keep_alive=False,
        received_at=factory.reactor.seconds(),
        tls=tls,
    )


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"malformed request: {text}"


# _split_host by Host value: a listener sees few distinct ones.
_HOSTS: dict[bytes, tuple[str, Optional[int]]] = {}
_MAX_HOSTS = 1024


def _split_host(value: bytes) -> tuple[str, Optional[int]]:
    """The lower-case host name and the port of a C{Host} value; 400 if invalid."""
    split = _HOSTS.get(value)
    if split is None:
        split = _parse_host(value)
        if len(_HOSTS) >= _MAX_HOSTS:
            _HOSTS.clear()  # made-up names must not grow it: start over
        _HOSTS[value] = split
    return split


def _parse_host(value: bytes) -> tuple[str, Optional[int]]:
    if not _HOST.match(value):
        raise bad_request("invalid Host field")
    port: Optional[int] = None
    if value.startswith(b"["):
        end = value.index(b"]")
        host = value[1:end]
        rest = value[end + 1 :]
        if rest.startswith(b":") and len(rest) > 1:
            port = int(rest[1:])
    else:
        host, sep, port_bytes = value.partition(b":")
        if sep and port_bytes:
            port = int(port_bytes)
    if port is not None and port > 65535:
        raise bad_request("invalid port in Host field")
    return host.decode("ascii").lower().rstrip("."), port


class HTTP11ServerFactory(Factory):
    """
    Builds L{HTTP11ServerProtocol}s for one listener and keeps track of its
    open connections (for draining on shutdown).

    @ivar gateway: the L{Gateway} new requests are dispatched to; replaced
        on reload.
    """

    def __init__(
        self,
        listener: ListenerConfig,
        gateway: Gateway,
        reactor: Any,
        scheme: str = "http",
        on_stream_finished: Optional[Callable[[HTTP11Stream], None]] = None,
    ) -> None:
        from gatewaykit.http.wire import HTTPDate

        self.listener = listener
        self.gateway = gateway
        self.reactor = reactor
        self.scheme = scheme
        # Serialised fields added to every response head (an https
        # listener's Strict-Transport-Security).
        self.added_fields = b""
        self.date = HTTPDate(reactor.seconds)
        self.connections: set[HTTP11ServerProtocol] = set()
        # WebSocket tunnels open now, and the bytes through them each way.
        self.tunnels_active = 0
        self.tunnel_bytes_in = 0
        self.tunnel_bytes_out = 0
        self._on_stream_finished = on_stream_finished

    noisy = False

    def logPrefix(self) -> str:
        return f"gatewaykit/{self.listener.name}"

    def buildProtocol(self, addr: Any) -> HTTP11ServerProtocol:
        return HTTP11ServerProtocol(self)

    def count_tunnel_bytes(self, inbound: int, outbound: int) -> None:
        """Count bytes a tunnel moved (from the client, to the client)."""
        self.tunnel_bytes_in += inbound
        self.tunnel_bytes_out += outbound

    def connection_made(self, protocol: HTTP11ServerProtocol) -> None:
        self.connections.add(protocol)

    def connection_lost(self, protocol: HTTP11ServerProtocol) -> None:
        self.connections.discard(protocol)

    def stream_finished(self, stream: HTTP11Stream) -> None:
        gateway = stream.gateway or self.gateway
        gateway.stream_finished(stream)
