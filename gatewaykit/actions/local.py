"""
Route actions answered by the gateway itself: C{respond} and C{redirect}.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from gatewaykit.config.model import RedirectAction, RespondAction
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IRouteAction


@implementer(IRouteAction)
class Respond:
    """Answer every request with a fixed status, fields and body."""

    def __init__(self, config: RespondAction) -> None:
        self._status = config.status
        self._body = config.body.encode("utf-8")
        fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in config.headers]
        if self._body and not any(n.lower() == b"content-type" for n, _ in fields):
            fields.append((b"Content-Type", b"text/plain; charset=utf-8"))
        self._fields = tuple(fields)

    def handle(self, request: Request, stream: Any) -> None:
        fields = list(self._fields)
        fields.append((b"X-Request-ID", request.request_id.encode("ascii")))
        stream.respond(self._status, fields, self._body)


@implementer(IRouteAction)
class Redirect:
    """
    Answer with a redirect to C{to}, where C{{scheme}}, C{{host}},
    C{{port}}, C{{path}}, C{{query}} and C{{uri}} are taken from the request.
    """

    def __init__(self, config: RedirectAction) -> None:
        self._to = config.to
        self._status = config.status

    def location(self, request: Request) -> str:
        """Where C{request} is sent."""
        port = request.port if request.port is not None else request.server_port
        return self._to.format(
            scheme=request.scheme,
            host=request.host,
            port=port,
            path=request.path,
            query=request.query,
            uri=request.uri,
        )

    def handle(self, request: Request, stream: Any) -> None:
        location = self.location(request)
        body = f"Redirecting to {location}\n".encode("utf-8")
        stream.respond(
            self._status,
            [
                (b"Location", location.encode("utf-8")),
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"X-Request-ID", request.request_id.encode("ascii")),
            ],
            body,
        )
