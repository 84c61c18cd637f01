"""
A stored response: its head as it will be sent, its body, and the times
that say how fresh it is; made from a response's head (RFC 9111 3), updated
by a 304 (3.2, 4.3.4) and serialised for the Redis tier.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from gatewaykit.cache.directives import delta_seconds, parse_cache_control, parse_vary
from gatewaykit.cache.freshness import (
    age_value,
    explicit_lifetime,
    heuristic_lifetime,
    http_date,
    initial_age,
)
from gatewaykit.cache.storability import refusal

# Fields never stored: they are about one exchange, or the cache adds its own.
_NOT_STORED = frozenset({b"age", b"x-request-id", b"x-cache", b"x-cache-node", b"set-cookie"})
# Fields a 304 does not update (RFC 9111 3.2): the stored body's framing and
# coding describe the bytes the cache holds, whatever the 304 says.
_NOT_UPDATED = _NOT_STORED | {b"content-length", b"content-encoding", b"transfer-encoding"}
# Bytes counted per entry beyond its fields and body (the objects around them).
OVERHEAD = 256
_FORMAT = b"GKC1"


def opaque_tag(etag: bytes) -> bytes:
    """An entity tag without its weakness: C{W/"x"} and C{"x"} are both C{"x"}."""
    return etag[2:] if etag.startswith(b"W/") else etag


class Entry:
    """
    One stored response.

    @ivar key: the key it is stored under (primary, or primary and
        secondary for a varying response).
    @ivar primary: the primary key (what a purge by URL names).
    @ivar path: the request path, without query (what a purge by prefix names).
    @ivar fields: the head's fields as sent on a hit, without C{Age},
        C{X-Request-ID} and the cache's own fields.
    @ivar born: when the response's age was 0 (clock seconds).
    @ivar expires: when it stops being fresh.
    @ivar stale_while_revalidate: seconds past C{expires} it may be served
        while a refresh runs.
    @ivar stale_if_error: seconds past C{expires} it may be served when the
        upstream fails.
    @ivar must_revalidate: never served stale (C{must-revalidate},
        C{proxy-revalidate}, C{s-maxage}).
    @ivar no_cache: always revalidated before use.
    """

    __slots__ = (
        "key",
        "primary",
        "path",
        "status",
        "reason",
        "fields",
        "body",
        "directives",
        "vary",
        "etag",
        "last_modified",
        "born",
        "expires",
        "stored_at",
        "stale_while_revalidate",
        "stale_if_error",
        "must_revalidate",
        "no_cache",
        "set_cookie",
        "explicit",
    )

    def __init__(
        self,
        key: str,
        primary: str,
        path: str,
        status: int,
        reason: Optional[bytes],
        fields: list[tuple[bytes, bytes]],
        request_time: float,
        response_time: float,
        default_ttl: float = 0.0,
        stale_if_error: float = 0.0,
    ) -> None:
        self.key = key
        self.primary = primary
        self.path = path
        self.status = status
        self.reason = reason
        self.body = b""
        self.stored_at = response_time
        cache_control: list[bytes] = []
        vary: list[bytes] = []
        kept: list[tuple[bytes, bytes]] = []
        date = expires = last_modified = etag = age = None
        set_cookie = False
        for name, value in fields:
            lower = name.lower()
            if lower == b"cache-control":
                cache_control.append(value)
            elif lower == b"vary":
                vary.append(value)
            elif lower == b"date":
                date = date or value
            elif lower == b"expires":
                expires = expires or value
            elif lower == b"last-modified":
                last_modified = last_modified or value
            elif lower == b"etag":
                etag = etag or value.strip()
            elif lower == b"age":
                age = age or value
            elif lower == b"set-cookie":
                set_cookie = True
            if lower not in _NOT_STORED:
                kept.append((name, value))
        self.fields = kept
        self.set_cookie = set_cookie
        self.etag: Optional[bytes] = etag
        self.last_modified: Optional[float] = http_date(last_modified)
        self.vary = parse_vary(vary)
        directives = self.directives = parse_cache_control(cache_control)
        date_value = http_date(date)
        lifetime = explicit_lifetime(directives, date_value, expires)
        self.explicit = lifetime is not None
        if lifetime is None:
            lifetime = heuristic_lifetime(
                status, directives, date_value, self.last_modified, default_ttl
            )
        self.born = response_time - initial_age(
            age_value(age), date_value, request_time, response_time
        )
        self.expires = self.born + lifetime
        self.stale_while_revalidate = float(
            delta_seconds(directives, "stale-while-revalidate") or 0
        )
        stated = delta_seconds(directives, "stale-if-error")
        self.stale_if_error = float(stated) if stated is not None else stale_if_error
        # s-maxage implies proxy-revalidate for a shared cache (RFC 9111 5.2.2.10).
        self.must_revalidate = any(
            name in directives for name in ("must-revalidate", "proxy-revalidate", "s-maxage")
        )
        self.no_cache = "no-cache" in directives

    # -- reading ------------------------------------------------------------

    def refusal(self, authorized: bool) -> Optional[str]:
        """Why this response may not be stored, or C{None}."""
        return refusal(
            self.status, self.directives, self.vary, self.set_cookie, authorized, self.explicit
        )

    @property
    def size(self) -> int:
        """Bytes counted against the cache's C{max_bytes}."""
        return (
            len(self.body)
            + sum(len(name) + len(value) + 4 for name, value in self.fields)
            + len(self.key)
            + OVERHEAD
        )

    @property
    def lifetime(self) -> float:
        """Its freshness lifetime in seconds."""
        return self.expires - self.born

    def useful(self) -> bool:
        """Whether storing it can ever save a request: fresh for a while, or revalidatable."""
        return (
            self.expires > self.stored_at
            or self.etag is not None
            or self.last_modified is not None
            or self.stale_if_error > 0
        )

    def keep_for(self, now: float) -> float:
        """Seconds from C{now} it may still be used, stale allowances included."""
        stale = 0.0 if self.must_revalidate else max(
            self.stale_while_revalidate, self.stale_if_error
        )
        return max(0.0, self.expires + stale - now)

    # -- 304 ----------------------------------------------------------------

    def updated(
        self,
        fields: list[tuple[bytes, bytes]],
        request_time: float,
        response_time: float,
        default_ttl: float,
        stale_if_error: float,
    ) -> Entry:
        """
        This response freshened by a 304's C{fields} (RFC 9111 3.2): every
        field the 304 has replaces the stored ones of that name, except the
        body's framing and coding; an entity tag differing only in weakness
        (a compressing policy's C{W/}) is not replaced.
        """
        incoming = []
        for name, value in fields:
            lower = name.lower()
            if lower in _NOT_UPDATED:
                continue
            if lower == b"etag" and self.etag is not None:
                if opaque_tag(value.strip()) == opaque_tag(self.etag):
                    continue
            incoming.append((name, value))
        replaced = {name.lower() for name, _ in incoming}
        merged = [(n, v) for n, v in self.fields if n.lower() not in replaced] + incoming
        entry = Entry(
            self.key,
            self.primary,
            self.path,
            self.status,
            self.reason,
            merged,
            request_time,
            response_time,
            default_ttl,
            stale_if_error,
        )
        entry.body = self.body
        return entry

    # -- the Redis tier -----------------------------------------------------

    def serialise(self) -> bytes:
        """The entry as bytes: a JSON head line, then the body."""
        head: dict[str, Any] = {
            "k": self.key,
            "p": self.primary,
            "u": self.path,
            "s": self.status,
            "r": None if self.reason is None else self.reason.decode("latin-1"),
            "f": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.fields],
            "b": self.born,
            "e": self.expires,
            "t": self.stored_at,
            "w": self.stale_while_revalidate,
            "i": self.stale_if_error,
        }
        line = json.dumps(head, separators=(",", ":")).encode("utf-8")
        return b"".join([_FORMAT, line, b"\n", self.body])

    @classmethod
    def deserialise(cls, blob: bytes) -> Entry:
        """An entry from L{serialise}'s bytes; C{ValueError} if they are not one."""
        if not blob.startswith(_FORMAT):
            raise ValueError("not a stored cache entry")
        end = blob.index(b"\n", len(_FORMAT))
        head = json.loads(blob[len(_FORMAT) : end])
        fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head["f"]]
        reason = head["r"]
        entry = cls(
            head["k"],
            head["p"],
            head["u"],
            int(head["s"]),
            None if reason is None else reason.encode("latin-1"),
            fields,
            head["t"],
            head["t"],
        )
        # The times as first computed, not recomputed from the fields.
        entry.born = float(head["b"])
        entry.expires = float(head["e"])
        entry.stale_while_revalidate = float(head["w"])
        entry.stale_if_error = float(head["i"])
        entry.body = blob[end + 1 :]
        return entry

    def __repr__(self) -> str:
        return f"<Entry {self.key!r} {self.status} {len(self.body)} bytes>"
