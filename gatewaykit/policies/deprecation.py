"""
What a route that is going away tells its clients: C{Deprecation} (RFC
9745), C{Sunset} (RFC 8594) and C{Link}s to its successor and to the
deprecation notes, from the route's C{deprecation}, C{sunset},
C{successor} and C{deprecation_link} keys. See C{docs/api-versioning.md}.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Optional

from zope.interface import implementer

from gatewaykit.config.model import RouteConfig
from gatewaykit.interfaces import IPolicy
from gatewaykit.policies.chain import PolicyCall

Fields = list[tuple[bytes, bytes]]

# The fields whose upstream copies the route's values replace.
_REPLACED = (b"deprecation", b"sunset")


def _link(target: str, relation: str) -> tuple[bytes, bytes]:
    return (b"Link", f'<{target}>; rel="{relation}"'.encode("ascii"))


@implementer(IPolicy)
class DeprecationNotice:
    """
    Adds C{Deprecation: @<seconds>}, C{Sunset: <HTTP-date>} and the C{Link}
    fields (C{rel="successor-version"}, C{rel="deprecation"}) to every
    response of a route; the route's C{Deprecation} and C{Sunset} replace
    the upstream's, its links go beside the upstream's.

    Not a policy type: the gateway puts it first in the chain of a route
    with those keys, so answers of the route's own policies carry it too.
    """

    name = "deprecation"

    def __init__(self, route: RouteConfig) -> None:
        fields: Fields = []
        if route.deprecation is not None:
            fields.append((b"Deprecation", b"@%d" % route.deprecation))
        if route.sunset is not None:
            fields.append((b"Sunset", formatdate(route.sunset, usegmt=True).encode("ascii")))
        if route.successor is not None:
            fields.append(_link(route.successor, "successor-version"))
        if route.deprecation_link is not None:
            fields.append(_link(route.deprecation_link, "deprecation"))
        self.fields = tuple(fields)

    def on_request(self, call: PolicyCall) -> None:
        call.on_response(self._mark)
        return None

    def _mark(self, status: int, fields: Fields) -> None:
        fields[:] = [(n, v) for n, v in fields if n.lower() not in _REPLACED]
        fields.extend(self.fields)


def deprecation_notice(route: RouteConfig) -> Optional[DeprecationNotice]:
    """The notice for C{route}, or C{None} when it announces nothing."""
    keys = (route.deprecation, route.sunset, route.successor, route.deprecation_link)
    if all(value is None for value in keys):
        return None
    return DeprecationNotice(route)
