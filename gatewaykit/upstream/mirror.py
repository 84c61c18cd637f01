"""
The C{mirror} of a route: copies of its requests sent to a shadow upstream,
their answers read and dropped.

The client's request never waits for its copy and never fails because of
it. L{MirrorAction} wraps the route's own action: it decides (by a hash of
the request id, so the choice is reproducible) whether a request is copied,
starts a L{MirrorExchange} on the shadow upstream's own pool, and hands the
request to the wrapped action unchanged. A request body reaches the copy
through a tee: the client's stream is wrapped (L{MirroredStream}) so that
the body sink the proxy attaches also feeds the copy, piece by piece, as
the body passes on its way to the real upstream. The copy never applies
backpressure; it takes at most C{max_body_bytes} of body (a larger body is
not mirrored), which bounds what it can hold (waiting for its connection,
or in its connection's send buffer), and at most C{max_in_flight} copies run at once (more are
dropped), so mirror traffic costs bounded memory and connections.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import MirrorConfig
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.forwarding import (
    UpstreamHeadBuilder,
    is_valid_traceparent,
    new_traceparent,
)
from gatewaykit.http.message import Request
from gatewaykit.http.stream import StreamWrapper
from gatewaykit.http.wire import LAST_CHUNK, chunk
from gatewaykit.interfaces import IRouteAction
from gatewaykit.timer import Timer
from gatewaykit.upstream.balancers import hash64
from gatewaykit.upstream.cluster import Upstream
from gatewaykit.upstream.connection import UpstreamConnection
from gatewaykit.upstream.proxy import IDEMPOTENT

log = Logger()

RESULTS = ("ok", "error", "dropped", "too_large")
"""How a copy can end: the shadow answered (any status), it failed (connect,
reset, timeout, the client's body broke off), or it was never sent: too
many copies in flight (or the shadow's circuit breaker open), body too large."""

_SALT = "mirror:"
_SCALE = 10_000  # percent has two decimals


@implementer(IRouteAction)
class MirrorAction:
    """
    The route's C{action}, plus a copy of C{config.percent} of its requests
    sent to C{shadow}.

    @ivar counts: copies by result (see L{RESULTS}).
    @ivar in_flight: copies in progress.
    """

    def __init__(
        self,
        route: str,
        config: MirrorConfig,
        shadow: Upstream,
        head_builder: UpstreamHeadBuilder,
        clock: Any,
        action: IRouteAction,
        metrics: Any = None,
    ) -> None:
        self.route = route
        self.config = config
        self.shadow = shadow
        self.head_builder = head_builder
        self.clock = clock
        self.action = action
        self.metrics = metrics
        self.timeout = shadow.config.timeouts.response
        self.in_flight = 0
        self.counts = dict.fromkeys(RESULTS, 0)
        self._threshold = round(config.percent * _SCALE / 100)

    def selects(self, request: Request) -> bool:
        """Whether C{request} is copied: the same request id always gets the same answer."""
        threshold = self._threshold
        if threshold >= _SCALE:
            return True
        return threshold > 0 and hash64(_SALT + request.request_id) % _SCALE < threshold

    def handle(self, request: Request, stream: Any) -> None:
        # An upgrade (WebSocket) becomes a tunnel: nothing a copy could replay.
        if self.selects(request) and b"upgrade" not in request.headers:
            copy = self._copy(request)
            if copy is not None and request.has_body:
                stream = MirroredStream(stream, copy)
        self.action.handle(request, stream)

    def _copy(self, request: Request) -> Optional[MirrorExchange]:
        """Start a copy of C{request}, unless a bound says no; never raises."""
        try:
            config = self.config
            length = request.content_length
            if length is not None and length > config.max_body_bytes:
                self.count("too_large")
                return None
            if self.in_flight >= config.max_in_flight or self.shadow.overloaded() is not None:
                self.count("dropped")
                return None
            target = self.shadow.pick(request)
            if target is None:
                self.count("error")
                return None
            traceparent = request.headers.get(b"traceparent")
            if traceparent is None or not is_valid_traceparent(traceparent):
                # Started here rather than by each head built: the copy and
                # the request share one trace, and the same head.
                request.headers.set(b"traceparent", new_traceparent())
            copy = MirrorExchange(self, request, target)
            copy.start()
            return copy
        except Exception:
            log.failure(
                "mirror of route {route} failed on {request!r}", route=self.route, request=request
            )
            return None

    def count(self, result: str) -> None:
        """Count one copy that ended with C{result}."""
        self.counts[result] += 1
        if self.metrics is not None:
            self.metrics.mirror_result(self.route, self.shadow.name, result)


class MirrorExchange:
    """
    One copy of a request on its way to a target of the shadow upstream.

    It is the pool's waiter and the upstream connection's exchange (as
    L{gatewaykit.upstream.proxy.ProxyExchange} is), and the tee's second
    sink. Body pieces that arrive before the connection is up wait in
    C{_pending} (bounded by C{max_body_bytes}). As the proxy does, a copy
    without body of an idempotent request whose kept-alive connection the
    shadow had closed is sent again, once, on a new connection.
    """

    def __init__(self, mirror: MirrorAction, request: Request, target: Any) -> None:
        self._mirror = mirror
        self._shadow = mirror.shadow
        self._target = target
        self.method = request.method
        self._chunked = request.chunked
        self._head = mirror.head_builder.build(request, request.uri.encode("latin-1"), None)
        self._pending: list[bytes] = [self._head]
        self._replayable = not request.has_body and request.method in IDEMPOTENT
        self._body_left = request.has_body
        self._body_bytes = 0
        self._connection: Optional[UpstreamConnection] = None
        self._connector: Any = None
        self._reused = False
        self._response_started = False
        self._done = False
        self._sent_at = 0.0
        self._timer = Timer(mirror.clock, self._expired)

    def start(self) -> None:
        """Count the copy in flight and ask the shadow's pool for a connection."""
        self._mirror.in_flight += 1
        self._shadow.in_flight += 1
        self._target.in_flight += 1
        self._target.requests += 1
        self._timer.set(self._mirror.timeout)
        self._connector = self._shadow.pool.acquire(self._target, self)

    # -- the pool's waiter ----------------------------------------------------

    def connected(self, connection: UpstreamConnection, reused: bool) -> None:
        self._connector = None
        if self._done:
            self._shadow.pool.release(connection)
            return
        self._connection = connection
        self._reused = reused
        connection.exchange = self
        pending, self._pending = self._pending, []
        connection.transport.writeSequence(pending)
        if not self._body_left:
            self._request_sent()

    def connect_failed(self, reason: Failure) -> None:
        self._connector = None
        if not self._done:
            self._shadow.record(self._target, "connect_failure")
            self._end("error")

    # -- the request body, from the tee ----------------------------------------

    def body_received(self, data: bytes) -> None:
        if self._done or not data:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._mirror.config.max_body_bytes:
            self._abort("too_large")
            return
        self._write(chunk(data) if self._chunked else (data,))

    def body_complete(self) -> None:
        if self._done:
            return
        self._body_left = False
        if self._chunked:
            self._write((LAST_CHUNK,))
        if self._connection is not None:
            self._request_sent()

    def abandon(self) -> None:
        """The client's body stopped coming before its end: the copy cannot be whole."""
        if not self._done and self._body_left:
            self._abort("error")

    def _write(self, pieces: Sequence[bytes]) -> None:
        connection = self._connection
        if connection is not None:
            connection.transport.writeSequence(pieces)
        else:
            self._pending.extend(pieces)
        self._timer.set(self._mirror.timeout)

    def _request_sent(self) -> None:
        self._sent_at = self._mirror.clock.seconds()
        self._timer.set(self._mirror.timeout)

    # -- the response, read and dropped ----------------------------------------

    def response_head(
        self,
        status: int,
        reason: bytes,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int],
        hop_by_hop: frozenset[bytes],
    ) -> None:
        self._response_started = True
        self._shadow.record(self._target, str(status) if status in (502, 503, 504) else None)
        metrics = self._mirror.metrics
        if metrics is not None and self._sent_at:
            latency = self._mirror.clock.seconds() - self._sent_at
            metrics.upstream_response(self._shadow.name, latency)
        self.touch()

    def response_body(self, data: bytes) -> None:
        self.touch()

    # Nothing is written anywhere: nothing to hold.

    def hold_response(self) -> None:
        pass

    def release_response(self) -> None:
        pass

    def response_complete(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            if self._body_left:
                # Answered before the whole body went: the framing is unfinished.
                connection.reusable = False
            self._shadow.pool.release(connection)
        self._end("ok")

    def upstream_failed(self, reason: Failure) -> None:
        self._connection = None
        if self._done:
            return
        if self._reused and self._replayable and not self._response_started:
            # A kept-alive connection the shadow had closed: once more on a new one.
            self._replayable = False
            self._pending = [self._head]
            self._connector = self._shadow.pool.acquire(self._target, self, fresh=True)
            return
        self._shadow.record(self._target, "reset")
        self._end("error")

    def touch(self) -> None:
        """Note progress, postponing the timeout."""
        self._timer.set(self._mirror.timeout)

    # -- endings ----------------------------------------------------------------

    def _expired(self) -> None:
        if not self._done:
            self._shadow.record(self._target, "timeout")
            self._abort("error")

    def _abort(self, result: str) -> None:
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        self._end(result)

    def _end(self, result: str) -> None:
        if self._done:
            return
        self._done = True
        self._pending = []
        self._timer.cancel()
        self._target.in_flight -= 1
        self._shadow.in_flight -= 1
        mirror = self._mirror
        mirror.in_flight -= 1
        mirror.count(result)


class BodyTee:
    """A body sink passing every piece to C{sink}, then to C{copy}."""

    __slots__ = ("sink", "copy")

    def __init__(self, sink: Any, copy: MirrorExchange) -> None:
        self.sink = sink
        self.copy = copy

    def body_received(self, data: bytes) -> None:
        self.sink.body_received(data)
        self.copy.body_received(data)

    def body_complete(self) -> None:
        self.sink.body_complete()
        self.copy.body_complete()

    def body_failed(self, error: GatewayError) -> None:
        self.sink.body_failed(error)
        self.copy.abandon()


class MirroredStream(StreamWrapper):
    """
    The client's stream as the route's action sees it when the request is
    copied: the body sink it attaches is teed into the copy, and the copy
    learns when the body stops coming (the sink detached, the answer ended).
    """

    def __init__(self, inner: Any, copy: MirrorExchange) -> None:
        super().__init__(inner)
        self._copy = copy

    def attach_body_sink(self, sink: Any) -> None:
        self.inner.attach_body_sink(BodyTee(sink, self._copy))

    def detach_body_sink(self) -> None:
        self.inner.detach_body_sink()
        self._copy.abandon()

    def finish(self) -> None:
        self.inner.finish()
        self._copy.abandon()

    def abort(self) -> None:
        self.inner.abort()
        self._copy.abandon()
