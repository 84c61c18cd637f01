"""
Proxying one request to an upstream, streaming both ways with backpressure.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.http.errors import GatewayError
from gatewaykit.http.forwarding import UpstreamHeadBuilder, downstream_fields
from gatewaykit.http.message import Request
from gatewaykit.http.wire import LAST_CHUNK, chunk
from gatewaykit.interfaces import IRouteAction
from gatewaykit.timer import Timer
from gatewaykit.upstream.cluster import Upstream
from gatewaykit.upstream.connection import InvalidResponse, UpstreamConnection

# Methods a stale pooled connection may be retried for (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@implementer(IRouteAction)
class ProxyAction:
    """The C{upstream} route action: proxy each request to C{upstream}."""

    def __init__(
        self,
        upstream: Upstream,
        head_builder: UpstreamHeadBuilder,
        clock: Any,
        via: bytes,
        response_timeout: Optional[float] = None,
    ) -> None:
        self.upstream = upstream
        self.head_builder = head_builder
        self.clock = clock
        self.via = via
        timeouts = upstream.config.timeouts
        self.response_timeout = (
            response_timeout if response_timeout is not None else timeouts.response
        )
        self.idle_timeout = timeouts.idle

    def handle(self, request: Request, stream: Any) -> None:
        ProxyExchange(self, stream).start()


@implementer(IPushProducer)
class ProxyExchange:
    """
    One request on its way to a target and its response on the way back.

    As an C{IPushProducer} registered with the upstream connection, it stops
    reading the client's body while the upstream is slow to take it.
    """

    def __init__(self, action: ProxyAction, stream: Any) -> None:
        self._action = action
        self._stream = stream
        self._request: Request = stream.request
        self.method = self._request.method
        self.target: Any = None
        self._connection: Optional[UpstreamConnection] = None
        self._connector: Any = None
        self._reused = False
        self._retried = False
        self._request_sent = False
        self._response_started = False
        self._done = False
        self._sent_at = 0.0
        self._idle = Timer(action.clock, self._idle_expired)
        self._response_timer = Timer(action.clock, self._response_expired)

    def start(self) -> None:
        """Choose a target and connect to it."""
        stream = self._stream
        stream.handler = self
        upstream = self._action.upstream
        target = upstream.balancer.pick(self._request)
        if target is None:
            self._done = True
            stream.send_error(
                GatewayError(
                    503, "no_healthy_upstream", f"no target of {upstream.name} is available"
                )
            )
            return
        self.target = target
        target.in_flight += 1
        target.requests += 1
        stream.upstream_address = target.address
        self._idle.set(self._action.idle_timeout)
        self._connector = upstream.pool.acquire(target, self)

    def touch(self) -> None:
        """Note progress, postponing the idle timeout."""
        self._idle.set(self._action.idle_timeout)

    # -- the pool's waiter ----------------------------------------------

    def connected(self, connection: UpstreamConnection, reused: bool) -> None:
        self._connector = None
        if self._done:
            self._action.upstream.pool.release(connection)
            return
        self._connection = connection
        self._reused = reused
        connection.exchange = self
        request = self._request
        uri = request.uri.encode("latin-1")
        transport = connection.transport
        transport.write(self._action.head_builder.build(request, uri, None))
        self._sent_at = self._action.clock.seconds()
        if request.has_body:
            transport.registerProducer(self, True)
            self._stream.send_continue()
            self._stream.attach_body_sink(self)
        else:
            self._request_sent = True
            self._response_timer.set(self._action.response_timeout)

    def connect_failed(self, reason: Failure) -> None:
        self._connector = None
        if self._done:
            return
        address = self.target.address
        if reason.check(ConnectTimeout):
            error = GatewayError(504, "upstream_timeout", f"connecting to {address} timed out")
        else:
            error = GatewayError(502, "bad_gateway", f"could not connect to {address}")
        self.target.failures += 1
        self._fail(error)

    # -- the request body (this is the stream's body sink) ----------------

    def body_received(self, data: bytes) -> None:
        connection = self._connection
        if self._done or connection is None:
            return
        self._idle.set(self._action.idle_timeout)
        if self._request.chunked:
            connection.transport.writeSequence(chunk(data))
        else:
            connection.transport.write(data)

    def body_complete(self) -> None:
        connection = self._connection
        if self._done or connection is None:
            return
        if self._request.chunked:
            connection.transport.write(LAST_CHUNK)
        connection.transport.unregisterProducer()
        self._request_sent = True
        if not self._response_started:
            self._response_timer.set(self._action.response_timeout)

    def body_failed(self, error: GatewayError) -> None:
        if not self._done:
            self._fail(error)

    def pauseProducing(self) -> None:
        self._stream.pause_body()

    def resumeProducing(self) -> None:
        self._stream.resume_body()

    def stopProducing(self) -> None:
        pass

    # -- the response, from the upstream connection -----------------------

    def response_head(
        self,
        status: int,
        reason: bytes,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int],
        hop_by_hop: frozenset[bytes],
    ) -> None:
        self._response_started = True
        self._response_timer.clear()
        self._idle.set(self._action.idle_timeout)
        self.target.record_latency(self._action.clock.seconds() - self._sent_at)
        stream = self._stream
        stream.write_head(
            status,
            downstream_fields(fields, self._request.request_id, self._action.via, hop_by_hop),
            content_length,
            reason or None,
        )
        stream.registerProducer(self._connection, True)

    def response_body(self, data: bytes) -> None:
        self._idle.set(self._action.idle_timeout)
        self._stream.write(data)

    def response_complete(self) -> None:
        connection = self._connection
        self._connection = None
        if connection is not None:
            if not self._request_sent:
                # Answered before the whole body went up: the connection's
                # request framing is unfinished, so it cannot be reused.
                connection.transport.unregisterProducer()
                connection.reusable = False
            self._action.upstream.pool.release(connection)
        self._end()
        self._stream.finish()

    def upstream_failed(self, reason: Failure) -> None:
        self._connection = None
        if self._done:
            return
        request = self._request
        if (
            self._reused
            and not self._retried
            and not self._response_started
            and not request.has_body
            and request.method in IDEMPOTENT
        ):
            # A kept-alive connection the upstream had already closed: the
            # request never got there, so try once on a new connection.
            self._retried = True
            self._connector = self._action.upstream.pool.acquire(self.target, self, fresh=True)
            return
        self.target.failures += 1
        address = self.target.address
        if reason.check(InvalidResponse):
            detail = f"invalid response from {address}: {reason.getErrorMessage()}"
        else:
            detail = f"{address} closed the connection before the response was complete"
        self._fail(GatewayError(502, "bad_gateway", detail))

    # -- the client's side ------------------------------------------------

    def stream_lost(self) -> None:
        """The client went away: drop the upstream side too."""
        if not self._done:
            self._drop_upstream()
            self._end()

    # -- endings ----------------------------------------------------------

    def _idle_expired(self) -> None:
        if self._done:
            return
        self._fail(
            GatewayError(
                504,
                "upstream_timeout",
                f"no progress from {self.target.address} for {self._action.idle_timeout:g}s",
            )
        )

    def _response_expired(self) -> None:
        if self._done or self._response_started:
            return
        self._fail(
            GatewayError(
                504,
                "upstream_timeout",
                f"{self.target.address} did not answer within {self._action.response_timeout:g}s",
            )
        )

    def _fail(self, error: GatewayError) -> None:
        self._drop_upstream()
        self._end()
        self._stream.send_error(error)

    def _drop_upstream(self) -> None:
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.stopConnecting()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        self._idle.cancel()
        self._response_timer.cancel()
        # The stream no longer needs us: let both be freed by refcount.
        self._stream.handler = None
        self._stream.detach_body_sink()
        if self.target is not None:
            self.target.in_flight -= 1
