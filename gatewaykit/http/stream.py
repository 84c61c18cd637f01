"""
What every response stream offers beyond its protocol's own methods, and
the base for policies that wrap a stream to see or change a response.
"""

from __future__ import annotations

from typing import Any, Optional

from zope.interface import implementer

from gatewaykit.http.errors import GatewayError, problem_body
from gatewaykit.interfaces import IResponseStream


class ResponseMethods:
    """
    C{respond} and C{send_error} in terms of C{write_head}, C{write} and
    C{finish}, so that whatever wraps those sees every response.
    """

    request: Any
    head_sent: bool

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def date(self) -> bytes:
        """The C{Date} value for a response made by the gateway."""
        raise NotImplementedError

    def hold(self) -> None:
        """
        Keep what is written from now on and send it as one piece at
        L{release} (or when the response ends): an upstream connection holds
        its client's stream while it parses one read, so a response head and
        the body that came with it leave in one C{send}. Streams that send
        nothing themselves ignore it.
        """

    def release(self) -> None:
        """Send what was kept since L{hold}."""

    def respond(
        self, status: int, fields: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> None:
        """Send a whole response with a fixed body, adding C{Date}."""
        fields.append((b"Date", self.date()))
        self.write_head(status, fields, len(body))
        self.write(body)
        self.finish()

    def send_error(self, error: GatewayError) -> None:
        """Answer with C{error}'s problem body, or cut the response if started."""
        if self.head_sent:
            self.abort()
            return
        if error.close:
            self.close_after = True
        request = self.request
        body, content_type = problem_body(
            error, request.request_id, request.headers.get(b"accept")
        )
        fields = [
            (b"Content-Type", content_type),
            (b"X-Request-ID", request.request_id.encode("ascii")),
        ]
        fields.extend(error.headers)
        self.respond(error.status, fields, body)


@implementer(IResponseStream)
class StreamWrapper(ResponseMethods):
    """
    A stream that passes everything to C{inner}; subclasses override what
    they need (typically C{write_head}, C{write} and C{finish}).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.request = inner.request

    # Attributes readers expect on any stream, read through.
    @property
    def head_sent(self) -> bool:  # type: ignore[override]
        return bool(self.inner.head_sent)

    @property
    def finished(self) -> bool:
        return bool(self.inner.finished)

    @property
    def lost(self) -> bool:
        return bool(self.inner.lost)

    @property
    def handler(self) -> Any:
        return self.inner.handler

    @handler.setter
    def handler(self, value: Any) -> None:
        self.inner.handler = value

    @property
    def upstream_address(self) -> str:
        return str(self.inner.upstream_address)

    @upstream_address.setter
    def upstream_address(self, value: str) -> None:
        self.inner.upstream_address = value

    @property
    def close_after(self) -> bool:
        return bool(self.inner.close_after)

    @close_after.setter
    def close_after(self, value: bool) -> None:
        self.inner.close_after = value

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        self.inner.write_head(status, fields, content_length, reason)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def finish(self) -> None:
        self.inner.finish()

    def abort(self) -> None:
        self.inner.abort()

    def hold(self) -> None:
        self.inner.hold()

    def release(self) -> None:
        self.inner.release()

    def date(self) -> bytes:
        return bytes(self.inner.date())

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.inner.unregisterProducer()

    def __getattr__(self, name: str) -> Any:
        # Request-body and connection methods (attach_body_sink, pause_body,
        # send_continue, ...) are the inner stream's business.
        return getattr(self.inner, name)
