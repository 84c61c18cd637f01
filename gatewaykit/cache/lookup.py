"""
A request as the cache sees it: its key, what its C{Cache-Control} asks
(RFC 9111 5.2.1), its own conditions and range; and whether a stored
response may answer it (RFC 9111 4, 4.2.4).
"""

from __future__ import annotations

from typing import Optional

from gatewaykit.cache.directives import delta_seconds, parse_cache_control, pragma_no_cache
from gatewaykit.cache.entry import Entry
from gatewaykit.cache.keys import primary_key
from gatewaykit.http.message import Request

# What a stored response may do for a request (L{Lookup.judge}).
FRESH = "fresh"  # answer with it
TOLERATED = "tolerated"  # answer with it although stale: the client accepts that (max-stale)
REFRESH = "refresh"  # answer with it, stale, and refresh it in the background
VALIDATE = "validate"  # ask the upstream first (conditionally when it has validators)

_WATCHED = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"range",
        b"if-range",
        b"authorization",
    }
)


class Lookup:
    """
    One request's view by the cache, read in one pass over its fields.

    @ivar plain: no cache directive, condition or range: a fresh entry
        answers it as stored (the fast path).
    @ivar preconditions: it has C{If-Match} or C{If-Unmodified-Since},
        which the cache leaves to the upstream.
    """

    __slots__ = (
        "request",
        "primary",
        "now",
        "plain",
        "no_cache",
        "no_store",
        "only_if_cached",
        "max_age",
        "max_stale",
        "min_fresh",
        "if_none_match",
        "if_modified_since",
        "range",
        "if_range",
        "authorized",
        "preconditions",
        "coding",
    )

    def __init__(self, request: Request, now: float) -> None:
        self.request = request
        self.primary = primary_key(request)
        # The coding a later compress policy will use: set by the cache
        # when a response may vary on Accept-Encoding.
        self.coding: Optional[bytes] = None
        self.now = now
        self.no_cache = self.no_store = self.only_if_cached = False
        self.authorized = self.preconditions = False
        self.max_age: Optional[int] = None
        self.min_fresh: Optional[int] = None
        self.max_stale: Optional[float] = None
        self.if_none_match: list[bytes] = []
        self.if_modified_since: Optional[bytes] = None
        self.range: list[bytes] = []
        self.if_range: Optional[bytes] = None
        cache_control: list[bytes] = []
        pragma: list[bytes] = []
        plain = True
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower not in _WATCHED:
                continue
            if lower == b"authorization":
                self.authorized = True
                continue
            plain = False
            if lower == b"cache-control":
                cache_control.append(value)
            elif lower == b"pragma":
                pragma.append(value)
            elif lower == b"if-none-match":
                self.if_none_match.append(value)
            elif lower == b"if-modified-since":
                self.if_modified_since = value
            elif lower == b"range":
                self.range.append(value)
            elif lower == b"if-range":
                self.if_range = value.strip()
            else:
                self.preconditions = True
        self.plain = plain
        if cache_control:
            directives = parse_cache_control(cache_control)
            self.no_cache = "no-cache" in directives
            self.no_store = "no-store" in directives
            self.only_if_cached = "only-if-cached" in directives
            self.max_age = delta_seconds(directives, "max-age")
            self.min_fresh = delta_seconds(directives, "min-fresh")
            if "max-stale" in directives:
                stale = delta_seconds(directives, "max-stale")
                self.max_stale = float("inf") if stale is None else float(stale)
        elif pragma:
            # Pragma counts only without Cache-Control (RFC 9111 5.4).
            self.no_cache = pragma_no_cache(pragma)

    @property
    def conditional(self) -> bool:
        """Whether the client sent validators of its own."""
        return bool(self.if_none_match) or self.if_modified_since is not None

    def judge(self, entry: Entry) -> str:
        """What C{entry} may do here: L{FRESH}, L{TOLERATED}, L{REFRESH} or L{VALIDATE}."""
        age = self.now - entry.born
        lifetime = entry.expires - entry.born
        if entry.no_cache or self.no_cache:
            return VALIDATE
        if self.max_age is not None and age > self.max_age:
            return VALIDATE
        if self.min_fresh is not None and lifetime - age < self.min_fresh:
            return VALIDATE
        if age < lifetime:
            return FRESH
        if entry.must_revalidate:
            return VALIDATE
        staleness = age - lifetime
        if self.max_stale is not None and staleness <= self.max_stale:
            return TOLERATED
        if staleness < entry.stale_while_revalidate:
            return REFRESH
        return VALIDATE

    def may_serve_on_error(self, entry: Entry, now: float) -> bool:
        """Whether C{entry} may stand in for an upstream failure (stale-if-error)."""
        if entry.must_revalidate:
            return False
        return now - entry.expires <= entry.stale_if_error
