"""
How long a stored response is fresh, and how old it is (RFC 9111 4.2).
"""

from __future__ import annotations

from typing import Optional

from gatewaykit.actions.static import parse_http_date
from gatewaykit.cache.directives import Directives, delta_seconds

# Statuses a response may be given heuristic freshness for (RFC 9110
# 15.1): those defined as cacheable by default.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# The common heuristic (RFC 9111 4.2.2): a tenth of the time since the
# last modification, and never more than a day, so a file unchanged for a
# year is not trusted for five weeks.
HEURISTIC_FRACTION = 0.1
HEURISTIC_CAP = 86400.0


def http_date(value: Optional[bytes]) -> Optional[float]:
    """The POSIX time of an HTTP-date field value, or C{None}."""
    if value is None:
        return None
    parsed = parse_http_date(value)
    return None if parsed is None else float(parsed)


def explicit_lifetime(
    directives: Directives, date: Optional[float], expires: Optional[bytes]
) -> Optional[float]:
    """
    The freshness lifetime the response states (C{s-maxage}, then
    C{max-age}, then C{Expires} minus C{Date}), or C{None} when it states
    none. An invalid C{Expires} means already expired.
    """
    for name in ("s-maxage", "max-age"):
        seconds = delta_seconds(directives, name)
        if seconds is not None:
            return float(seconds)
    if expires is None:
        return None
    when = http_date(expires)
    if when is None or date is None:
        return 0.0
    return max(0.0, when - date)


def heuristic_lifetime(
    status: int,
    directives: Directives,
    date: Optional[float],
    last_modified: Optional[float],
    default_ttl: float,
) -> float:
    """
    The freshness lifetime of a response that states none: C{default_ttl}
    when the operator set one, else a tenth of its age at C{Date} since
    C{Last-Modified}, capped; only for statuses cacheable by default or a
    C{public} response, else 0.
    """
    if status not in HEURISTIC_STATUSES and "public" not in directives:
        return 0.0
    if default_ttl > 0:
        return default_ttl
    if last_modified is None or date is None or date <= last_modified:
        return 0.0
    return min((date - last_modified) * HEURISTIC_FRACTION, HEURISTIC_CAP)


def age_value(value: Optional[bytes]) -> float:
    """The C{Age} field's seconds (0 when absent or invalid)."""
    if value is None:
        return 0.0
    value = value.strip()
    return float(min(int(value), 2**31)) if value.isdigit() else 0.0


def initial_age(
    age: float, date: Optional[float], request_time: float, response_time: float
) -> float:
    """
    The corrected initial age (RFC 9111 4.2.3): the larger of what C{Date}
    says (apparent age) and what C{Age} says plus the time the response took.
    """
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    return max(apparent, age + max(0.0, response_time - request_time))
