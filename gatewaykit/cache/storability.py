"""
Whether a response may be stored by a shared cache (RFC 9111 3, 3.5).
"""

from __future__ import annotations

from typing import Optional

from gatewaykit.cache.directives import Directives
from gatewaykit.cache.freshness import HEURISTIC_STATUSES


def refusal(
    status: int,
    directives: Directives,
    vary: tuple[bytes, ...],
    set_cookie: bool,
    authorized: bool,
    explicit: bool,
) -> Optional[str]:
    """
    Why a response to a GET may not be stored, or C{None} when it may be
    (its freshness is a separate question).

    @param status: the response status.
    @param directives: the response's C{Cache-Control} directives.
    @param vary: the field names its C{Vary} lists.
    @param set_cookie: whether it sets a cookie.
    @param authorized: whether the request carried C{Authorization}.
    @param explicit: whether it states its freshness (C{Expires},
        C{max-age}, C{s-maxage}).
    """
    if status < 200 or status >= 600 or status in (206, 304):
        return f"status {status} is not stored"
    if "no-store" in directives:
        return "no-store"
    if "private" in directives:
        return "private"
    if authorized and not (
        "public" in directives or "must-revalidate" in directives or "s-maxage" in directives
    ):
        # RFC 9111 3.5: a response to an authenticated request is for that
        # user unless it says it may be shared.
        return "the request carries Authorization"
    if set_cookie:
        # Allowed by RFC 9111, but a cookie is almost always for one client
        # (nginx and Varnish refuse too); mark shared ones without it.
        return "Set-Cookie"
    if b"*" in vary:
        return "Vary: *"
    if not (explicit or "public" in directives or status in HEURISTIC_STATUSES):
        return f"status {status} is stored only with explicit freshness or public"
    return None
