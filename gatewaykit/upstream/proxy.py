"""
Proxying one request to an upstream, streaming both ways with backpressure.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.batched_write import write as batched_write
from gatewaykit.config.model import WebSocketConfig
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.forwarding import UpstreamHeadBuilder, downstream_fields
from gatewaykit.http.message import Headers, Request
from gatewaykit.http.wire import LAST_CHUNK, chunk
from gatewaykit.interfaces import IRouteAction
from gatewaykit.timer import SPENT
from gatewaykit.tunnel.splice import Splice
from gatewaykit.upstream.cluster import Upstream
from gatewaykit.upstream.connection import InvalidResponse, UpstreamConnection
from gatewaykit.upstream.sticky import StickySession
from gatewaykit.upstream.target import Target

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
        metrics: Any = None,
        websocket: Optional[WebSocketConfig] = None,
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.websocket = websocket
        self.tunnels = 0  # WebSocket tunnels open through this route
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
    One request on its way to a target and its response on the way back,
    over one or more attempts (retries go to another target when there is
    one).

    As an C{IPushProducer} registered with the upstream connection, it stops
    reading the client's body while the upstream is slow to take it.
    """

    def __init__(self, action: ProxyAction, stream: Any) -> None:
        self._action = action
        self._upstream = action.upstream
        # Whether this request asks to become a WebSocket tunnel and may.
        self._upgrade = action.websocket is not None and stream.request.upgrade == "websocket"
        self._retries = action.upstream.config.retries
        self._stream = stream
        self._request: Request = stream.request
        self.method = self._request.method
        self.target: Any = None
        self._tried: list[Any] = []
        self._connection: Optional[UpstreamConnection] = None
        self._connector: Any = None
        self._waiting = False  # counted in upstream.pending
        self._reused = False
        self._fresh_retry = False
        self._sticky: Optional[StickySession] = None
        self._body_attached = False
        self._request_sent = False
        self._response_started = False
        self._done = False
        self._sent_at = 0.0
        timers = action.upstream.timers
        self._idle = timers.take(self._idle_expired)
        self._response_timer = timers.take(self._response_expired)

    def start(self) -> None:
        """Refuse at once if the upstream is overloaded, else make the first attempt."""
        stream = self._stream
        stream.handler = self
        upstream = self._upstream
        overload = upstream.overloaded()
        if overload is not None:
            self._done = True
            stream.send_error(
                GatewayError(503, "circuit_open", f"upstream {upstream.name}: {overload}")
            )
            return
        websocket = self._action.websocket
        if self._upgrade and websocket is not None and websocket.max_tunnels:
            if self._action.tunnels >= websocket.max_tunnels:
                self._done = True
                stream.send_error(
                    GatewayError(
                        503,
                        "circuit_open",
                        f"this route already has {websocket.max_tunnels} WebSocket tunnels",
                    )
                )
                return
        upstream.in_flight += 1
        upstream.retry_budget.request()
        if upstream.config.sticky is not None:
            self._sticky = StickySession(upstream, self._request)
            self._sticky.lookup().addCallback(self._attempt)
        else:
            self._attempt()

    def touch(self) -> None:
        """Note progress, postponing the idle timeout."""
        self._idle.set(self._action.idle_timeout)

    # -- attempts -------------------------------------------------------------

    def _attempt(self, preferred: Optional[Target] = None) -> None:
        if self._done:
            return  # the client left during the sticky lookup
        upstream = self._upstream
        if preferred is not None and preferred.available:
            target: Any = preferred
        else:
            target = upstream.pick(self._request, self._tried)
        if target is None and self._tried:
            # No other target: the retry goes to one already tried.
            target = upstream.pick(self._request)
        if target is None:
            self._fail(
                GatewayError(
                    503, "no_healthy_upstream", f"no target of {upstream.name} is available"
                )
            )
            return
        self.target = target
        self._tried.append(target)
        target.in_flight += 1
        target.requests += 1
        self._stream.upstream_address = target.address
        self._idle.set(self._action.idle_timeout)
        per_try = self._retries.per_try_timeout
        if per_try:
            self._response_timer.set(per_try)
        self._connect(fresh=False)

    def _connect(self, fresh: bool) -> None:
        self._waiting = True
        self._upstream.pending += 1
        self._connector = self._upstream.pool.acquire(self.target, self, fresh=fresh)

    def _attempt_failed(self, failure: str, error: GatewayError) -> None:
        """
        The attempt on the current target failed with C{failure}
        (C{connect_failure}, C{reset}, C{timeout} or a status as text): retry
        if allowed, else answer C{error}.
        """
        self._upstream.record(self.target, failure)
        self._drop_upstream()
        self._release_target()
        if self._may_retry(failure):
            self._response_timer.clear()
            self._attempt()
        else:
            self._fail(error)

    def _may_retry(self, failure: str) -> bool:
        retries = self._retries
        condition: Any = int(failure) if failure.isdigit() else failure
        if len(self._tried) > retries.attempts or condition not in retries.on:
            return False
        if self._stream.head_sent or self._stream.lost:
            return False
        # Safe to send again: nothing of the request went out yet, or it
        # is idempotent and has no body (a body is streamed, not kept).
        request = self._request
        nothing_sent = failure == "connect_failure" and not self._body_attached
        if nothing_sent:
            # The failed try never reached a server: retrying adds no load,
            # so it spends no budget.
            return True
        if request.has_body or request.method not in IDEMPOTENT:
            return False
        return self._upstream.retry_budget.allow_retry()

    def _release_target(self) -> None:
        target = self.target
        if target is not None:
            target.in_flight -= 1
            self.target = None

    # -- the pool's waiter ----------------------------------------------------

    def connected(self, connection: UpstreamConnection, reused: bool) -> None:
        self._connector = None
        self._stop_waiting()
        if self._done:
            self._upstream.pool.release(connection)
            return
        self._connection = connection
        self._reused = reused
        connection.exchange = self
        request = self._request
        uri = request.uri.encode("latin-1")
        transport = connection.transport
        host = self._upstream.config.host_field
        if host is None and request.host == "":
            # HTTP/1.0 without Host: HTTP/1.1 upstream needs one (as nginx's $proxy_host).
            host = self.target.address.encode("ascii")
        head = self._action.head_builder.build(request, uri, host, self._upgrade)
        batched_write(transport, head)
        self._sent_at = self._action.clock.seconds()
        if request.has_body:
            self._body_attached = True
            transport.registerProducer(self, True)
            self._stream.send_continue()
            self._stream.attach_body_sink(self)
        else:
            self._request_sent = True
            self._expect_response()

    def connect_failed(self, reason: Failure) -> None:
        self._connector = None
        self._stop_waiting()
        if self._done:
            return
        address = self.target.address
        if reason.check(ConnectTimeout):
            error = GatewayError(504, "upstream_timeout", f"connecting to {address} timed out")
        else:
            error = GatewayError(502, "bad_gateway", f"could not connect to {address}")
        self._attempt_failed("connect_failure", error)

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self._upstream.pending -= 1

    def _expect_response(self) -> None:
        """The request is all sent: the response timeout starts."""
        if not self._response_started:
            timeout = self._action.response_timeout
            per_try = self._retries.per_try_timeout
            if not per_try or per_try > timeout:
                self._response_timer.set(timeout)

    # -- the request body (this is the stream's body sink) ----------------------

    def body_received(self, data: bytes) -> None:
        connection = self._connection
        if self._done or connection is None:
            return
        self._idle.set(self._action.idle_timeout)
        if self._request.chunked:
            batched_write(connection.transport, b"".join(chunk(data)))
        else:
            batched_write(connection.transport, data)

    def body_complete(self) -> None:
        connection = self._connection
        if self._done or connection is None:
            return
        if self._request.chunked:
            batched_write(connection.transport, LAST_CHUNK)
        connection.transport.unregisterProducer()
        self._request_sent = True
        self._expect_response()

    def body_failed(self, error: GatewayError) -> None:
        if not self._done:
            self._fail(error)

    def pauseProducing(self) -> None:
        self._stream.pause_body()

    def resumeProducing(self) -> None:
        self._stream.resume_body()

    def stopProducing(self) -> None:
        pass

    # -- the response, from the upstream connection -----------------------------

    def response_head(
        self,
        status: int,
        reason: bytes,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int],
        hop_by_hop: frozenset[bytes],
    ) -> None:
        target = self.target
        if status == 101:
            self._switching(reason, fields)
            return
        if status in (502, 503, 504):
            error = GatewayError(status, "bad_gateway", f"{target.address} answered {status}")
            if self._may_retry(str(status)):
                # Drop this answer (and its connection) and try elsewhere.
                self._attempt_failed(str(status), error)
                return
            self._upstream.record(target, str(status))
        else:
            self._upstream.record(target, None)
        self._response_started = True
        self._response_timer.clear()
        self._idle.set(self._action.idle_timeout)
        latency = self._action.clock.seconds() - self._sent_at
        target.record_latency(latency)
        metrics = self._action.metrics
        if metrics is not None:
            metrics.upstream_response(self._upstream.name, latency)
        stream = self._stream
        out = downstream_fields(fields, self._request.request_id, self._action.via, hop_by_hop)
        if self._sticky is not None:
            self._sticky.served_by(target, out)
        stream.write_head(status, out, content_length, reason or None)
        stream.registerProducer(self._connection, True)

    def _switching(self, reason: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        """A 101 from the upstream: relay it if the client asked to switch."""
        if not self._upgrade:
            self._upstream.record(self.target, "reset")
            self._fail(
                GatewayError(
                    502, "bad_gateway", f"{self.target.address} switched protocols unasked"
                )
            )
            return
        self._upstream.record(self.target, None)
        self._response_started = True
        self._response_timer.clear()
        upgrade = Headers(fields).get(b"upgrade") or self._request.headers.get(b"upgrade") or b""
        out = downstream_fields(fields, self._request.request_id, self._action.via)
        out.append((b"Connection", b"Upgrade"))
        out.append((b"Upgrade", upgrade))
        self._stream.write_head(101, out, None, reason or None)

    def switched(self, connection: UpstreamConnection, early: bytes) -> None:
        """
        The upstream switched protocols: from now on the client's and the
        upstream's connections are one byte tunnel, outside HTTP (and
        outside this config version: a reload leaves it alone).
        """
        self._connection = None
        stream, action, target = self._stream, self._action, self.target
        if self._done or stream.lost:
            connection.abort()
            return
        websocket = action.websocket
        assert websocket is not None
        factory = stream.factory
        action.tunnels += 1
        factory.tunnels_active += 1

        def ended() -> None:
            action.tunnels -= 1
            factory.tunnels_active -= 1
            target.in_flight -= 1

        tunnel = Splice(action.clock, websocket.idle_timeout, ended, factory.count_tunnel_bytes)
        tunnel.attach(stream.client_transport, connection.transport)
        self.target = None  # the tunnel holds the target's in-flight count now
        self._end()
        stream.hand_over(tunnel)
        connection.hand_over(tunnel, early)

    def response_body(self, data: bytes) -> None:
        self._idle.set(self._action.idle_timeout)
        self._stream.write(data)

    def hold_response(self) -> None:
        self._stream.hold()

    def release_response(self) -> None:
        self._stream.release()

    def response_complete(self) -> None:
        connection = self._connection
        self._connection = None
        if connection is not None:
            if not self._request_sent:
                # Answered before the whole body went up: the connection's
                # request framing is unfinished, so it cannot be reused.
                connection.transport.unregisterProducer()
                connection.reusable = False
            self._upstream.pool.release(connection)
        self._end()
        self._stream.finish()

    def upstream_failed(self, reason: Failure) -> None:
        self._connection = None
        if self._done:
            return
        request = self._request
        if (
            self._reused
            and not self._fresh_retry
            and not self._response_started
            and not request.has_body
            and request.method in IDEMPOTENT
        ):
            # A kept-alive connection the upstream had already closed: the
            # request never got there, so try the same target once on a new
            # connection (not counted as a retry).
            self._fresh_retry = True
            self._connect(fresh=True)
            return
        address = self.target.address
        if self._response_started:
            # Too late for another answer: the client's response is cut.
            self._upstream.record(self.target, "reset")
            self._fail(GatewayError(502, "bad_gateway", f"{address} broke off the response"))
            return
        if reason.check(InvalidResponse):
            detail = f"invalid response from {address}: {reason.getErrorMessage()}"
        else:
            detail = f"{address} closed the connection before the response was complete"
        self._attempt_failed("reset", GatewayError(502, "bad_gateway", detail))

    # -- the client's side ------------------------------------------------------

    def stream_lost(self) -> None:
        """The client went away: drop the upstream side too."""
        if not self._done:
            self._drop_upstream()
            self._end()

    # -- endings ----------------------------------------------------------------

    def _idle_expired(self) -> None:
        if self._done:
            return
        error = GatewayError(
            504,
            "upstream_timeout",
            f"no progress from {self.target.address} for {self._action.idle_timeout:g}s",
        )
        if self._response_started:
            self._fail(error)
        else:
            self._attempt_failed("timeout", error)

    def _response_expired(self) -> None:
        if self._done or self._response_started:
            return
        timeout = self._retries.per_try_timeout or self._action.response_timeout
        self._attempt_failed(
            "timeout",
            GatewayError(
                504,
                "upstream_timeout",
                f"{self.target.address} did not answer within {timeout:g}s",
            ),
        )

    def _fail(self, error: GatewayError) -> None:
        self._drop_upstream()
        self._end()
        self._stream.send_error(error)

    def _drop_upstream(self) -> None:
        attempt, self._connector = self._connector, None
        if attempt is not None:
            attempt.cancel()
        self._stop_waiting()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        timers = self._upstream.timers
        timers.give_back(self._idle)
        timers.give_back(self._response_timer)
        self._idle = self._response_timer = SPENT
        # The stream no longer needs us: let both be freed by refcount.
        self._stream.handler = None
        self._stream.detach_body_sink()
        self._release_target()
        self._upstream.in_flight -= 1
