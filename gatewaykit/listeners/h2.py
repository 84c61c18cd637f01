"""
HTTP/2 downstream (RFC 9113): a Twisted protocol driving the C{h2} library's
state machine, one L{H2Stream} per request.

An L{H2Stream} offers route actions and policies exactly what an
L{HTTP11Stream} does (L{IResponseStream}, the request-body methods, the
C{IConsumer} methods and the attributes the access log and metrics read),
and its L{Request} is built by the same L{build_request} as HTTP/1.1's: the
router, policies and actions cannot tell the two apart. Upstreams stay
HTTP/1.1.

Flow control goes both ways:

 - request bodies: received data is acknowledged (the client's window
   reopened) only as the stream's body sink takes it; while the sink has
   called C{pause_body}, or before one is attached, data is held unacknowledged
   and the client's window for that stream closes (at most
   L{INITIAL_WINDOW_SIZE} bytes held per stream);
 - responses: body bytes go out within the stream's and the connection's
   send windows; what the windows hold back is kept per stream, and past
   L{STREAM_BUFFER_BYTES} the producer registered on the stream (the upstream
   connection) is paused until a C{WINDOW_UPDATE} drains it. When the
   transport's own buffer is full it pauses this protocol: nothing more is
   sent (nor read) until it resumes.

This module is installed by L{gatewaykit.listeners.factories}: https
listeners then offer C{h2} in ALPN and L{h2_protocol} serves the connections
that choose it.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING, Any, Optional, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.http.errors import GatewayError, bad_request
from gatewaykit.http.message import Request
from gatewaykit.http.stream import ResponseMethods
from gatewaykit.interfaces import IResponseStream
from gatewaykit.listeners.http import (
    BODY_BUFFER_BYTES,
    LINGER_SECONDS,
    HTTP11ServerFactory,
    build_request,
    fallback_request,
)
from gatewaykit.timer import Timer

if TYPE_CHECKING:
    from gatewaykit.gateway import Gateway

log = Logger()

# Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
# more are refused one by one with REFUSED_STREAM, which clients retry.
MAX_CONCURRENT_STREAMS = 100
# A client opening this many streams at once, far past what it was told,
# gets a connection error from h2 itself.
STREAM_CEILING = 2 * MAX_CONCURRENT_STREAMS
# Each stream's receive window: the request body bytes held for a stream
# whose sink is not taking them (HTTP/1.1 buffers as much per request).
INITIAL_WINDOW_SIZE = BODY_BUFFER_BYTES
# Response bytes kept per stream beyond what the send windows allow, before
# the stream's producer is paused.
STREAM_BUFFER_BYTES = 64 * 1024
# A client resetting this many streams before their answer, and at least
# half of those it opened, is sent away (GOAWAY ENHANCE_YOUR_CALM): each
# costs the gateway a routed request and an upstream attempt ("rapid
# reset", CVE-2023-44487), as Envoy and nginx guard against.
RESET_LIMIT = 100

# Fields RFC 9113 8.2.2 forbids: connection-specific ones.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Response fields never sent: connection-specific ones, and framing (ours).
_NOT_SENT = _CONNECTION_SPECIFIC | {b"te", b"content-length"}
# Response fields with a new value nearly every time, kept out of the HPACK
# dynamic table they would only churn; set-cookie also carries secrets,
# which RFC 7541 7.1.3 says to send never-indexed.
_NEVER_INDEXED = frozenset({b"x-request-id", b"set-cookie"})
_FIELD_NAME = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
_METHOD = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")

_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    # Malformed requests are stream errors (RFC 9113 8.1.1): checked here,
    # since h2's own checks fail the whole connection.
    validate_inbound_headers=False,
    # Response fields are lower-cased and filtered here.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class _LocalSettings(Settings):
    """
    The SETTINGS we advertise; h2 enforces C{max_concurrent_streams} as a
    connection error, so it is told only the far L{STREAM_CEILING} and the
    advertised limit is kept by refusing single streams (RFC 9113 5.1.2).
    """

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return STREAM_CEILING


class _Encoder(Encoder):
    """
    HPACK without Huffman coding, which in pure Python costs about as much
    as the rest of a header block's encoding to save a few bytes of it.
    """

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman)


class Malformed(Exception):
    """A request RFC 9113 calls malformed: answered with RST_STREAM(PROTOCOL_ERROR)."""


@implementer(IConsumer, IResponseStream)
class H2Stream(ResponseMethods):
    """
    One request on an HTTP/2 connection and the response written to it: the
    same API as L{gatewaykit.listeners.http.HTTP11Stream}.

    Handlers use L{attach_body_sink}, L{pause_body}, L{resume_body} and
    L{send_continue} for the request body; L{write_head}, L{write},
    L{finish}, L{abort}, L{send_error}, L{respond} and the C{IConsumer}
    methods for the response; and set C{handler} to an object with
    C{stream_lost()} to learn that the client went away (or reset the
    stream).
    """

    def __init__(
        self,
        protocol: H2ServerProtocol,
        stream_id: int,
        request: Request,
        error: Optional[GatewayError] = None,
    ) -> None:
        self._protocol = protocol
        self.stream_id = stream_id
        self.request = request
        self.error = error
        self.status = 0
        self.bytes_sent = 0
        self.head_sent = False
        self.finished = False
        self.lost = False
        self.body_done = not request.has_body
        self.body_bytes = 0
        # Read by wrappers and send_error; one stream's error never closes
        # an HTTP/2 connection.
        self.close_after = False
        self.handler: Any = None
        self.upstream_address = ""
        self.gateway: Optional[Gateway] = None
        # request body
        self._sink: Any = None
        self._sink_told = False  # body_complete or body_failed given
        self._held: deque[bytes] = deque()  # received, not yet given to the sink
        self._body_paused = False
        self._body_error: Optional[GatewayError] = None
        self._unacked = 0  # flow-controlled bytes received and not acknowledged
        self._body_timer: Optional[Timer] = None  # see _watch_body
        # response body
        self._no_body = False
        self._pending: deque[bytes | memoryview] = deque()  # held back by the windows
        self._pending_bytes = 0
        self._end_pending = False  # END_STREAM to send once _pending is out
        self._producer: Any = None
        self._streaming = False
        self._producer_paused = False
        self._pull_call: Any = None

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} {self.request!r}>"

    # -- request body ---------------------------------------------------

    def attach_body_sink(self, sink: Any) -> None:
        """
        Deliver the request body to C{sink}: C{body_received(data)} per
        piece, then C{body_complete()}, or C{body_failed(GatewayError)}.
        Pieces that arrived earlier are delivered at once.
        """
        self._sink = sink
        self._deliver()
        self._protocol._flush()

    def detach_body_sink(self) -> None:
        """Deliver no more of the request body (it is discarded)."""
        self._sink = None

    def pause_body(self) -> None:
        """Stop taking the request body: the client's window for it closes."""
        self._body_paused = True
        self._watch_body()

    def resume_body(self) -> None:
        """Take the request body again (and reopen the client's window)."""
        if self._body_paused:
            self._body_paused = False
            self._deliver()
            self._protocol._flush()

    def send_continue(self) -> None:
        """Send C{100 Continue} if the client waits for it before its body."""
        request = self.request
        if request.expect_continue and not self.head_sent and not self.body_done:
            request.expect_continue = False
            self._protocol._send_headers(self, [(b":status", b"100")])
            self._watch_body()

    def _data_received(self, data: bytes, limit: int) -> None:
        self._unacked += len(data)
        if self.finished or self._body_error is not None:
            return  # nobody wants it; released when the stream closes
        self.body_bytes += len(data)
        if self.body_bytes > limit:
            self._body_failed(
                GatewayError(413, "body_too_large", "request body larger than allowed")
            )
            return
        self._held.append(data)
        self._deliver()

    def _body_complete(self) -> None:
        self.body_done = True
        self._deliver()

    def _body_failed(self, error: GatewayError) -> None:
        self._body_error = error
        self._held.clear()
        self._deliver()

    def _deliver(self) -> None:
        """Give the sink what it may take now, acknowledging it to the client."""
        held = self._held
        protocol = self._protocol
        while held and self._sink is not None and not self._body_paused:
            data = held.popleft()
            protocol._acknowledge(self, len(data))
            self._sink.body_received(data)
        self._watch_body()
        sink = self._sink
        if sink is None or self._sink_told or held:
            return
        if self._body_error is not None:
            self._sink_told = True
            sink.body_failed(self._body_error)
        elif self.body_done:
            self._sink_told = True
            sink.body_complete()

    def _watch_body(self) -> None:
        """
        Each piece of a request body the client owes must come within
        C{body_timeout} (408), as over HTTP/1.1. The clock runs only while
        the client is free to send: not while the gateway holds back what
        came (a paused or not yet attached sink keeps the window shut) nor
        before a C{100 Continue} it waits for.
        """
        timer = self._body_timer
        if self.body_done or self.finished or self.lost or self._body_error is not None:
            self._stop_watching_body()
            return
        if self._body_paused or self._held or self.request.expect_continue:
            if timer is not None:
                timer.clear()
            return
        if timer is None:
            timer = self._body_timer = Timer(self._protocol.factory.reactor, self._body_late)
        timer.set(self._protocol.factory.gateway.limits.body_timeout)

    def _stop_watching_body(self) -> None:
        timer, self._body_timer = self._body_timer, None
        if timer is not None:
            timer.cancel()

    def _body_late(self) -> None:
        self._body_failed(
            GatewayError(408, "request_timeout", "request body not received in time")
        )

    # -- response -------------------------------------------------------

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        """
        Send the C{HEADERS} of the response: C{:status}, C{fields} with
        lower-cased names (connection-specific and framing fields left out)
        and C{content-length} when known. HTTP/2 has no reason phrase.
        """
        if self.head_sent or self.lost:
            return
        self.head_sent = True
        self.status = status
        self._no_body = self.request.method == "HEAD" or status in (204, 304) or status < 200
        headers = [(b":status", b"%d" % status)]
        if content_length is not None and status != 204:
            headers.append((b"content-length", b"%d" % content_length))
        for name, value in fields:
            lower = name.lower()
            if lower in _NEVER_INDEXED:
                headers.append(NeverIndexedHeaderTuple(lower, value))
            elif lower not in _NOT_SENT:
                headers.append((lower, value))
        protocol = self._protocol
        headers.extend(protocol._added_fields())
        protocol._send_headers(self, headers)

    def write(self, data: bytes) -> None:
        """Send a piece of the response body (as the windows allow)."""
        if self._no_body or self.lost or self.finished or not data:
            return
        self.bytes_sent += len(data)
        self._protocol._queue(self, data)

    def finish(self) -> None:
        """End the response (C{END_STREAM} once everything written is out)."""
        if self.finished:
            return
        self.finished = True
        if self.lost:
            return
        self.unregisterProducer()
        protocol = self._protocol
        protocol._stream_finished(self)
        protocol._end_stream(self)

    def abort(self) -> None:
        """
        End a response that cannot be completed: the stream is reset
        (C{RST_STREAM INTERNAL_ERROR}), so the client sees it cut short;
        the connection and its other streams carry on.
        """
        if self.finished:
            return
        self.finished = True
        if self.lost:
            return
        self.unregisterProducer()
        protocol = self._protocol
        protocol._stream_finished(self)
        protocol._reset(self, ErrorCodes.INTERNAL_ERROR)

    def date(self) -> bytes:
        """The current C{Date} value (formatted once a second)."""
        return self._protocol.factory.date()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.lost:
            # As Twisted's transports do: a producer for a gone consumer
            # is stopped at once, so it releases what it holds.
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        self._protocol._producer_check(self)

    def unregisterProducer(self) -> None:
        # Unregistering does not resume a producer we paused (as with
        # Twisted's transports): the upstream connection resumes itself.
        self._producer = None
        self._producer_paused = False
        call, self._pull_call = self._pull_call, None
        if call is not None and call.active():
            call.cancel()

    # -- endings --------------------------------------------------------

    def _lost(self) -> None:
        """The client reset the stream or the connection went away."""
        self.lost = True
        self._pending.clear()
        self._pending_bytes = 0
        self._held.clear()
        self._watch_body()
        producer = self._producer
        self.unregisterProducer()
        if self.finished:
            return
        handler = self.handler
        if handler is not None:
            handler.stream_lost()
        if producer is not None:
            producer.stopProducing()
        if self.gateway is not None:
            # Answered or not, the request is over: account for it (logged
            # as 499, nginx's "client closed request", if nothing was sent).
            self.finished = True
            if not self.head_sent:
                self.status = 499
            self._protocol._stream_finished(self)


@implementer(IPushProducer)
class H2ServerProtocol(Protocol):
    """
    One client connection speaking HTTP/2 over TLS.

    As the transport's producer it is paused when the client does not read:
    then no body bytes are sent and nothing is read until it resumes.
    """

    # A TLS transport: IConsumer, IPushProducer and ITransport at once.
    transport: Any

    def __init__(self, factory: HTTP11ServerFactory, tls: Any = None) -> None:
        self.factory = factory
        self.tls = tls
        self.draining = False
        self._conn = H2Connection(config=_CONFIG)
        self._streams: dict[int, H2Stream] = {}
        # Streams with response bytes the windows hold back, in turn order.
        self._waiting: dict[H2Stream, None] = {}
        self._write_paused = False
        self._goaway_sent = False
        self._closing = False
        self._gone = False  # the connection is lost
        self._timer = Timer(factory.reactor, self._timed_out)
        self._timer_for = ""  # "idle", "head" or "busy"
        self._added_raw: Optional[bytes] = None
        self._added: list[tuple[bytes, bytes]] = []
        self._client_host = ""
        self._client_port = 0
        self._server_port = 0
        self._opened = 0  # streams dispatched
        self._cancelled = 0  # of those, reset by the client before their answer

    # -- connection -----------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        peer = transport.getPeer()
        self._client_host = getattr(peer, "host", "")
        self._client_port = getattr(peer, "port", 0)
        self._server_port = getattr(transport.getHost(), "port", 0)
        # The factory's connection_made/_lost take any protocol with drain().
        self.factory.connection_made(cast(Any, self))
        limits = self.factory.gateway.limits
        # Past max_header_bytes a request is answered 431; h2 refuses a
        # header block this much larger as a connection error.
        header_cap = limits.max_header_bytes + BODY_BUFFER_BYTES
        conn = self._conn
        conn.local_settings = _LocalSettings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW_SIZE,
                SettingCodes.MAX_HEADER_LIST_SIZE: header_cap,
            },
        )
        conn.decoder.max_header_list_size = header_cap
        conn.encoder = _Encoder()
        conn.initiate_connection()
        # Per-stream windows are the backpressure on request bodies: the
        # connection's window is as large as all of them together, so one
        # stalled upload cannot hold up the others.
        conn.increment_flow_control_window(
            MAX_CONCURRENT_STREAMS * INITIAL_WINDOW_SIZE - conn.inbound_flow_control_window
        )
        transport.registerProducer(self, True)
        self._flush()
        self._update_timer()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self._gone = True
        self._timer.cancel()
        streams = list(self._streams.values())
        self._streams.clear()
        self._waiting.clear()
        for stream in streams:
            stream._lost()
        self.factory.connection_lost(cast(Any, self))

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self._conn.receive_data(data)
        except ProtocolError as exc:
            # h2 has queued a GOAWAY with the error code.
            log.info(
                "HTTP/2 protocol error from {client}: {error}",
                client=self._client_host,
                error=str(exc) or type(exc).__name__,
            )
            self._close()
            return
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                self._data_received(cast(DataReceived, event))
            elif kind is RequestReceived:
                self._request_received(cast(RequestReceived, event))
            elif kind is StreamEnded:
                self._stream_ended(cast(StreamEnded, event))
            elif kind is WindowUpdated:
                self._window_updated(cast(WindowUpdated, event))
            elif kind is StreamReset:
                self._stream_reset(cast(StreamReset, event))
            elif kind is RemoteSettingsChanged:
                changed = cast(RemoteSettingsChanged, event).changed_settings
                if SettingCodes.INITIAL_WINDOW_SIZE in changed:
                    self._push_all()
            elif kind is ConnectionTerminated:
                # The client's GOAWAY: h2 sends nothing more after it.
                self._close()
                return
            if self._closing:
                return
        self._flush()
        # Bytes that completed nothing are part of a frame or header block.
        self._update_timer(partial=not events)

    def drain(self) -> None:
        """
        Send GOAWAY: streams already opened finish, new ones are refused;
        close once none is left (now, if idle).
        """
        self.draining = True
        if not self._goaway_sent and not self._closing:
            self._goaway_sent = True
            self._flush()
            # Written past h2, whose state machine would refuse to send
            # anything more (even on open streams) after its own GOAWAY.
            goaway = GoAwayFrame(
                stream_id=0, last_stream_id=self._conn.highest_inbound_stream_id, error_code=0
            )
            self.transport.write(goaway.serialize())
        if not self._streams:
            self._close()

    def _close(self) -> None:
        """Close after what was written (aborted if the client does not take it)."""
        if self._closing:
            return
        self._closing = True
        self._flush()
        self.transport.loseConnection()
        self._timer.set(LINGER_SECONDS)
        self._timer_for = "closing"

    def _timed_out(self) -> None:
        if self._closing:
            self.transport.abortConnection()
        elif not self._streams:
            # Idle too long, or a request head not complete in time.
            self.drain()

    def _update_timer(self, partial: bool = False) -> None:
        """
        No stream open: the idle timeout runs, or the header timeout from
        the first bytes of an incomplete frame or request head on.
        """
        if self._closing:
            return
        state = "busy" if self._streams else "head" if partial else "idle"
        if state == self._timer_for:
            return
        self._timer_for = state
        limits = self.factory.gateway.limits
        if state == "busy":
            self._timer.clear()
        elif state == "head":
            self._timer.set(limits.header_timeout)
        else:
            self._timer.set(limits.idle_timeout)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and not self._gone:
            self.transport.write(data)

    # -- IPushProducer: the transport pauses us ---------------------------

    def pauseProducing(self) -> None:
        if not self._write_paused:
            self._write_paused = True
            # A client that does not read must not make us answer more
            # (PINGs, SETTINGS, new streams) into a full buffer.
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._write_paused:
            self._write_paused = False
            if not self._closing:
                self.transport.resumeProducing()
            self._push_all()
            self._flush()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    # -- requests -------------------------------------------------------

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        conn = self._conn
        if self._goaway_sent or len(self._streams) >= MAX_CONCURRENT_STREAMS:
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        factory = self.factory
        gateway = factory.gateway
        try:
            request, error = self._request(event.headers or [], gateway, event.stream_ended is None)
        except Malformed as exc:
            log.debug(
                "malformed HTTP/2 request from {client}: {error}",
                client=self._client_host,
                error=str(exc),
            )
            conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = H2Stream(self, stream_id, request, error)
        # Whether a body follows is known exactly here, whatever the fields say.
        stream.body_done = event.stream_ended is not None
        self._streams[stream_id] = stream
        self._opened += 1
        if error is not None:
            stream.send_error(error)
        else:
            gateway.dispatch(stream)
            stream._watch_body()

    def _request(
        self, headers: list[Any], gateway: Gateway, body_follows: bool
    ) -> tuple[Request, Optional[GatewayError]]:
        """
        The request for a HEADERS block (with the error to answer instead,
        if any); L{Malformed} for one RFC 9113 calls malformed.
        """
        method = scheme = path = authority = None
        fields: list[tuple[bytes, bytes]] = []
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name[:1] == b":":
                if fields:
                    raise Malformed("pseudo-header field after a regular field")
                if name == b":method" and method is None:
                    method = value
                elif name == b":path" and path is None:
                    path = value
                elif name == b":scheme" and scheme is None:
                    scheme = value
                elif name == b":authority" and authority is None:
                    authority = value
                else:
                    raise Malformed(f"unexpected or repeated pseudo-header field {name!r}")
                continue
            if name in _CONNECTION_SPECIFIC:
                raise Malformed(f"connection-specific field {name!r}")
            if name == b"te" and value != b"trailers":
                raise Malformed("te other than trailers")
            if not _FIELD_NAME.match(name):
                raise Malformed(f"invalid field name {name!r}")
            if _BAD_VALUE.search(value):
                raise Malformed(f"invalid value of field {name!r}")
            fields.append((name, value))
        if method is None or not _METHOD.match(method):
            raise Malformed("missing or invalid :method")
        if method == b"CONNECT":
            # No :scheme nor :path; a tunnel the gateway does not offer.
            path = path or b""
        elif scheme is None or not path:
            raise Malformed("missing :scheme or :path")
        elif path[:1] != b"/" and path != b"*":
            raise Malformed(":path is neither origin-form nor *")
        if authority is not None:
            hosts = [value for name, value in fields if name == b"host"]
            if not hosts:
                fields.insert(0, (b"host", authority))
            elif hosts != [authority]:
                error = bad_request("Host differs from :authority")
                return self._fallback(method, path, fields), error
        factory = self.factory
        limits = gateway.limits
        if size > limits.max_header_bytes:
            error = GatewayError(431, "headers_too_large", "request head too large")
            return self._fallback(method, path, fields), error
        if len(path) > limits.max_uri_bytes:
            error = GatewayError(414, "uri_too_long", "request target too long")
            return self._fallback(method, path, fields), error
        try:
            request = build_request(
                factory,
                gateway,
                method.decode("ascii"),
                path,
                "2.0",
                fields,
                True,
                self._client_host,
                self._client_port,
                self._server_port,
                self.tls,
            )
        except GatewayError as exc:
            return self._fallback(method, path, fields), exc
        if body_follows:
            if request.content_length is None:
                # Upstream (HTTP/1.1) the body is sent chunked.
                request.chunked = True
        elif request.content_length:
            raise Malformed("content-length without a body")
        if request.content_length is not None and request.content_length > limits.max_body_bytes:
            error = GatewayError(413, "body_too_large", "request body larger than allowed")
            return request, error
        return request, None

    def _fallback(self, method: bytes, path: bytes, fields: list[tuple[bytes, bytes]]) -> Request:
        request = fallback_request(
            self.factory,
            method.decode("ascii"),
            path,
            fields,
            self._client_host,
            self._client_port,
            self._server_port,
            self.tls,
        )
        request.version = "2.0"
        return request

    def _data_received(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        data = event.data or b""
        padding = (event.flow_controlled_length or 0) - len(data)
        stream = self._streams.get(stream_id)
        if stream is None:
            # A stream already answered and closed: only the connection's
            # window is still owed.
            self._conn.acknowledge_received_data(len(data) + padding, stream_id)
            return
        if padding:
            self._conn.acknowledge_received_data(padding, stream_id)
        stream._data_received(data, self.factory.gateway.limits.max_body_bytes)

    def _stream_ended(self, event: StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._body_complete()

    def _stream_reset(self, event: StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        self._forget(stream)
        if not stream.finished:
            self._cancelled += 1
        stream._lost()
        if self._cancelled >= RESET_LIMIT and 2 * self._cancelled >= self._opened:
            log.info(
                "HTTP/2 client {client} reset {count} of {opened} streams: closing",
                client=self._client_host,
                count=self._cancelled,
                opened=self._opened,
            )
            self._conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            self._close()

    def _acknowledge(self, stream: H2Stream, size: int) -> None:
        """The body sink took C{size} bytes of C{stream}: reopen the client's windows."""
        stream._unacked -= size
        self._conn.acknowledge_received_data(size, stream.stream_id)

    # -- responses ------------------------------------------------------

    def _added_fields(self) -> list[tuple[bytes, bytes]]:
        """The listener's added response fields (HSTS), as HTTP/2 fields."""
        raw = self.factory.added_fields
        if raw is not self._added_raw:
            self._added_raw = raw
            lines = (line.partition(b":") for line in raw.split(b"\r\n") if line)
            self._added = [(name.strip().lower(), value.strip()) for name, _, value in lines]
        return self._added

    def _send_headers(self, stream: H2Stream, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            self._conn.send_headers(stream.stream_id, headers)
        except StreamClosedError:
            return
        self._flush()

    def _queue(self, stream: H2Stream, data: bytes) -> None:
        """Send C{data} on C{stream} as the windows allow; keep the rest."""
        stream._pending.append(data)
        stream._pending_bytes += len(data)
        self._push(stream)
        self._flush()
        self._producer_check(stream)

    def _push(self, stream: H2Stream, frames: int = -1) -> bool:
        """
        Send up to C{frames} DATA frames (all that fit when negative) of
        C{stream}'s held-back bytes; whether any went out.
        """
        conn = self._conn
        stream_id = stream.stream_id
        pending = stream._pending
        sent = False
        while pending and frames and not self._write_paused:
            try:
                window = conn.local_flow_control_window(stream_id)
            except StreamClosedError:
                return sent
            if window <= 0:
                break
            size = min(window, conn.max_outbound_frame_size)
            data = pending.popleft()
            if len(data) > size:
                view = memoryview(data)
                pending.appendleft(view[size:])
                data = view[:size]
            stream._pending_bytes -= len(data)
            conn.send_data(stream_id, data)
            sent = True
            frames -= 1
        if pending:
            self._waiting[stream] = None
        else:
            self._waiting.pop(stream, None)
            if stream._end_pending:
                stream._end_pending = False
                self._send_end(stream)
        return sent

    def _push_all(self) -> None:
        """Send what the windows allow, one frame per stream in turn."""
        while self._waiting and not self._write_paused:
            progressed = False
            for stream in list(self._waiting):
                if self._push(stream, 1):
                    progressed = True
            if not progressed:
                break
        for stream in list(self._streams.values()):
            self._producer_check(stream)

    def _producer_check(self, stream: H2Stream) -> None:
        """Pause C{stream}'s producer while too much is held back; else let it go on."""
        producer = stream._producer
        if producer is None:
            return
        full = stream._pending_bytes > STREAM_BUFFER_BYTES
        if stream._streaming:
            if full and not stream._producer_paused:
                stream._producer_paused = True
                producer.pauseProducing()
            elif not full and stream._producer_paused:
                stream._producer_paused = False
                producer.resumeProducing()
        elif not full and not self._write_paused and stream._pull_call is None:
            # A pull producer is asked for more on a later turn of the
            # reactor, so the transport can pause us in between.
            stream._pull_call = self.factory.reactor.callLater(0, self._pull, stream)

    def _pull(self, stream: H2Stream) -> None:
        stream._pull_call = None
        producer = stream._producer
        if producer is None or stream.lost or stream._streaming:
            return
        if self._write_paused or stream._pending_bytes > STREAM_BUFFER_BYTES:
            return  # asked again once the windows or the transport let us
        producer.resumeProducing()

    def _window_updated(self, event: WindowUpdated) -> None:
        if not event.stream_id:
            self._push_all()
            return
        stream = self._streams.get(event.stream_id)
        if stream is not None and stream._pending:
            self._push(stream)
            self._producer_check(stream)

    def _end_stream(self, stream: H2Stream) -> None:
        if stream._pending:
            stream._end_pending = True
            return
        self._send_end(stream)
        self._flush()

    def _send_end(self, stream: H2Stream) -> None:
        """The response is all out: END_STREAM, and close the stream."""
        conn = self._conn
        stream_id = stream.stream_id
        try:
            conn.end_stream(stream_id)
            if not stream.body_done:
                # Answered before the whole request body came: ask the
                # client to stop sending it (RFC 9113 8.1).
                conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        except StreamClosedError:
            pass
        self._forget(stream)

    def _reset(self, stream: H2Stream, code: ErrorCodes) -> None:
        stream._pending.clear()
        stream._pending_bytes = 0
        try:
            self._conn.reset_stream(stream.stream_id, code)
        except StreamClosedError:
            pass
        self._forget(stream)
        self._flush()

    def _forget(self, stream: H2Stream) -> None:
        """C{stream} is closed both ways: drop it and what it held of the windows."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self._waiting.pop(stream, None)
        stream._held.clear()
        stream._stop_watching_body()
        unacked, stream._unacked = stream._unacked, 0
        if unacked:
            # The stream is closed, so this reopens the connection's window only.
            self._conn.acknowledge_received_data(unacked, stream.stream_id)
        if not self._streams:
            if self._goaway_sent:
                self._close()
            elif not self._closing:
                self._update_timer()

    def _stream_finished(self, stream: H2Stream) -> None:
        self.factory.stream_finished(cast(Any, stream))


def h2_protocol(https_factory: Any, tls: Any) -> H2ServerProtocol:
    """
    The protocol for one https connection that negotiated C{h2}: what
    L{gatewaykit.listeners.tls.register_h2_protocol_factory} installs.
    """
    return H2ServerProtocol(https_factory.http, tls)
