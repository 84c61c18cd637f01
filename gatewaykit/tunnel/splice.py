"""
Two connections joined byte for byte: what a WebSocket becomes after its
handshake (and what any tunnel is once both ends are up).

Each side's transport is the streaming producer of the other's, so a slow
reader pauses the fast writer. An end of stream on one side becomes a write
shutdown on the other (where the transport can half-close; TLS cannot, so
there it closes once written). The splice ends when both sides are gone.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from gatewaykit.timer import Timer

# After an idle timeout closes both sides gracefully, a side still open this
# much later (a peer that reads nothing) is aborted.
CLOSE_GRACE_SECONDS = 10.0


class Side:
    """One end of a splice: its transport and what happened to it."""

    __slots__ = ("transport", "eof", "lost", "feeding")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.eof = False  # it will send nothing more
        self.lost = False  # its connection is gone
        self.feeding = False  # registered as the other side's producer


class Splice:
    """
    Bytes between the client side C{a} and the upstream side C{b}.

    The two connections' protocols call L{client_data}/L{upstream_data}
    with what they read, L{client_eof}/L{upstream_eof} when their peer
    half-closes and L{client_lost}/L{upstream_lost} when their connection
    is gone; C{on_end()} runs once both are gone.

    @ivar bytes_in: bytes from the client to the upstream so far.
    @ivar bytes_out: bytes from the upstream to the client so far.
    """

    def __init__(
        self,
        clock: Any,
        idle_timeout: float,
        on_end: Callable[[], None],
        count: Optional[Callable[[int, int], None]] = None,
        on_idle: Optional[Callable[[], None]] = None,
    ) -> None:
        self._idle_timeout = idle_timeout
        self._idle = Timer(clock, self._idle_expired)
        self._on_end = on_end
        self._count = count
        self._on_idle = on_idle
        self._closing = False
        self.a: Optional[Side] = None
        self.b: Optional[Side] = None
        self.bytes_in = 0
        self.bytes_out = 0

    def attach(self, a: Any, b: Any) -> None:
        """Join client transport C{a} and upstream transport C{b} (both connected)."""
        self.a, self.b = Side(a), Side(b)
        a.registerProducer(b, True)
        self.b.feeding = True
        b.registerProducer(a, True)
        self.a.feeding = True
        self._idle.set(self._idle_timeout)

    # -- data -------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        assert self.b is not None
        self.bytes_in += len(data)
        self._idle.set(self._idle_timeout)
        if self._count is not None:
            self._count(len(data), 0)
        if not self.b.lost:
            self.b.transport.write(data)

    def upstream_data(self, data: bytes) -> None:
        assert self.a is not None
        self.bytes_out += len(data)
        self._idle.set(self._idle_timeout)
        if self._count is not None:
            self._count(0, len(data))
        if not self.a.lost:
            self.a.transport.write(data)

    # -- endings ----------------------------------------------------------

    def client_eof(self) -> None:
        self._eof(self.a, self.b)

    def upstream_eof(self) -> None:
        self._eof(self.b, self.a)

    def client_lost(self) -> None:
        self._lost(self.a, self.b)

    def upstream_lost(self) -> None:
        self._lost(self.b, self.a)

    def _eof(self, ended: Optional[Side], other: Optional[Side]) -> None:
        if ended is None or other is None or ended.eof:
            return
        ended.eof = True
        # An ended reader must not be resumed (it would read the end again).
        self._stop_feeding(ended, other)
        if not other.lost:
            _shut_write(other.transport)
        if ended.eof and other.eof:
            self._close_both()

    def _lost(self, gone: Optional[Side], other: Optional[Side]) -> None:
        if gone is None or other is None or gone.lost:
            return
        gone.lost = True
        self._stop_feeding(gone, other)
        self._stop_feeding(other, gone)
        if other.lost:
            self._end()
        else:
            other.transport.loseConnection()

    def _stop_feeding(self, producer: Side, consumer: Side) -> None:
        """Unregister C{producer}'s transport from C{consumer}'s."""
        if producer.feeding:
            producer.feeding = False
            if not consumer.lost:
                consumer.transport.unregisterProducer()

    def _close_both(self) -> None:
        assert self.a is not None and self.b is not None
        for producer, consumer in ((self.a, self.b), (self.b, self.a)):
            self._stop_feeding(producer, consumer)
        for side in (self.a, self.b):
            if not side.lost:
                side.transport.loseConnection()

    def _idle_expired(self) -> None:
        if self._closing:
            # A peer that reads nothing keeps its side open: drop it.
            for side in (self.a, self.b):
                if side is not None and not side.lost:
                    side.transport.abortConnection()
            return
        self._closing = True
        if self._on_idle is not None:
            self._on_idle()
        self._close_both()
        self._idle.set(CLOSE_GRACE_SECONDS)

    def _end(self) -> None:
        self._idle.cancel()
        on_end, self._on_end = self._on_end, _nothing
        on_end()


def _nothing() -> None:
    pass


def _shut_write(transport: Any) -> None:
    """Half-close C{transport} if it can; else close it once written."""
    try:
        transport.loseWriteConnection()
    except (AttributeError, NotImplementedError):
        transport.loseConnection()
