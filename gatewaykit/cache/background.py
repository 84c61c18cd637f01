"""
The response stream of a request the gateway sends for itself (a cache
refreshing an entry in the background): no client reads it, so whatever
is written goes nowhere, as fast as it comes. A wrapper around it (a
L{gatewaykit.cache.fill.CacheFill}) keeps what it needs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from zope.interface import implementer

from gatewaykit.http.message import Request
from gatewaykit.http.stream import ResponseMethods
from gatewaykit.interfaces import IResponseStream


@implementer(IResponseStream)
class BackgroundStream(ResponseMethods):
    """
    A stream without a client for C{request}; C{done()} is called once
    when the response ends (completely or not).
    """

    def __init__(
        self, request: Request, date: Callable[[], bytes], done: Callable[[], None]
    ) -> None:
        self.request = request
        self.status = 0
        self.head_sent = False
        self.finished = False
        self.lost = False
        self.handler: Any = None
        self.upstream_address = ""
        self.close_after = False
        self._date = date
        self._done: Optional[Callable[[], None]] = done
        self._producer: Any = None

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        self.head_sent = True
        self.status = status

    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        self.finished = True
        self._producer = None
        done, self._done = self._done, None
        if done is not None:
            done()

    def abort(self) -> None:
        self.finish()

    def date(self) -> bytes:
        return self._date()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # Never pause a push producer; pull a pull producer to its end.
        self._producer = producer
        while not streaming and self._producer is producer and not self.finished:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    # The request has no body.

    def attach_body_sink(self, sink: Any) -> None:
        sink.body_complete()

    def detach_body_sink(self) -> None:
        pass

    def pause_body(self) -> None:
        pass

    def resume_body(self) -> None:
        pass

    def send_continue(self) -> None:
        pass
