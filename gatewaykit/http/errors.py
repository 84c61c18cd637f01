"""
Errors the gateway answers itself, with RFC 9457 problem bodies.
"""

from __future__ import annotations

import html
import json
from typing import Any, Optional

from gatewaykit.http.wire import reason_for

PROBLEM_TYPE = "urn:gatewaykit:error:"


class GatewayError(Exception):
    """
    A request the gateway answers with an error status instead of passing on.

    @ivar status: the HTTP status code.
    @ivar code: the machine-readable code (SPEC section 6), e.g. C{bad_gateway}.
    @ivar detail: a human-readable explanation for this occurrence.
    @ivar headers: extra response fields, e.g. C{Allow} on a 405.
    @ivar close: whether the connection must close after the answer.
    @ivar problem_type: the problem's C{type} URI, when not
        C{urn:gatewaykit:error:<code>} (e.g. the rate-limit draft's
        quota-exceeded type).
    @ivar extensions: extra members of the problem body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        close: bool = False,
        problem_type: Optional[str] = None,
        extensions: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.close = close
        self.problem_type = problem_type
        self.extensions = extensions or {}


def bad_request(detail: str) -> GatewayError:
    """A 400 that closes the connection, as RFC 9112 asks for framing errors."""
    return GatewayError(400, "bad_request", detail, close=True)


def problem_body(
    error: GatewayError, request_id: str, accept: Optional[bytes]
) -> tuple[bytes, bytes]:
    """
    The body and its content type for C{error}: problem+json, or a small HTML
    page for a browser that asks for C{text/html} first.
    """
    title = reason_for(error.status).decode("ascii")
    if accept is not None and accept.lstrip().startswith(b"text/html"):
        page = (
            "<!DOCTYPE html><html><head><title>{status} {title}</title></head>"
            "<body><h1>{status} {title}</h1><p>{detail}</p>"
            "<hr><p>gatewaykit &middot; request {rid}</p></body></html>\n"
        ).format(
            status=error.status,
            title=html.escape(title),
            detail=html.escape(error.detail),
            rid=html.escape(request_id),
        )
        return page.encode("utf-8"), b"text/html; charset=utf-8"
    body = {
        "type": error.problem_type or PROBLEM_TYPE + error.code,
        "title": title,
        "status": error.status,
        "detail": error.detail,
        "request_id": request_id,
        **error.extensions,
    }
    return json.dumps(body).encode("utf-8"), b"application/problem+json"
