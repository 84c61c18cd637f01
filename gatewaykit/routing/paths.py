"""
Normalisation of request paths before routing.

The normalised path is both what routes match and what goes upstream, so a
route and the upstream behind it always agree on what was asked for. It
follows RFC 3986 section 6.2.2 (syntax-based normalisation) with two
deliberate departures:

  - a path whose dot segments would climb above the root is refused
    (L{BadPath}, answered with 400) rather than clamped at the root as
    section 5.2.4 does: such a request is an attack or a bug, never a
    browser;
  - empty segments (C{//}) are kept, as Envoy keeps them by default
    (nginx and Traefik v3 merge them): merging would change what the
    upstream sees.
"""

from __future__ import annotations

__all__ = ["BadPath", "normalise_path"]

_HEX_DIGITS = b"0123456789abcdefABCDEF"
_PERCENT = ord("%")
_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


def _escape_table() -> dict[bytes, bytes]:
    """
    Map every two hex digits that may follow a C{%} to what replaces the
    escape: the byte itself when it is unreserved, else the escape with
    upper-case hex.
    """
    table = {}
    for high in _HEX_DIGITS:
        for low in _HEX_DIGITS:
            digits = bytes((high, low))
            value = int(digits, 16)
            if value in _UNRESERVED:
                table[digits] = bytes((value,))
            else:
                table[digits] = b"%" + digits.upper()
    return table


_ESCAPES = _escape_table()


class BadPath(ValueError):
    """The request path cannot be normalised; the gateway answers 400."""


def _normalise_escapes(path: bytes) -> bytes:
    first, *rest = path.split(b"%")
    parts = [first]
    for part in rest:
        replacement = _ESCAPES.get(part[:2])
        if replacement is None:
            raise BadPath("invalid percent-encoding in the path")
        parts.append(replacement)
        parts.append(part[2:])
    return b"".join(parts)


def _remove_dot_segments(path: bytes) -> bytes:
    segments = path.split(b"/")
    kept: list[bytes] = []
    for segment in segments[1:]:
        if segment == b".":
            continue
        if segment == b"..":
            if not kept:
                raise BadPath("the path climbs above the root")
            kept.pop()
        else:
            kept.append(segment)
    # "/a/." and "/a/b/.." name a directory: keep the trailing slash.
    if segments[-1] in (b".", b".."):
        kept.append(b"")
    return b"/" + b"/".join(kept)


def normalise_path(raw: bytes) -> str:
    """
    Normalise the path of an origin-form request-target.

    C{raw} is the target up to (not including) any C{?}, as received.
    Percent-encoded unreserved characters are decoded, every other escape
    gets upper-case hex, and dot segments are removed. An empty path is
    C{/}. The result is the bytes as C{latin-1} text, so encoding it back
    gives the bytes to send upstream.

    @raise BadPath: the path does not start with C{/}, holds an invalid
        escape (C{%zz}, C{%4}), or climbs above the root (C{/../x}).
    """
    if raw[:1] != b"/":
        if not raw:
            return "/"
        raise BadPath("the path does not start with '/'")
    # The common case: nothing to decode and no dot segment. (An int
    # membership test and find() beat "b'%' in raw", which goes through
    # the buffer protocol.)
    if _PERCENT not in raw and raw.find(b"/.") < 0:
        return raw.decode("latin-1")
    path = raw
    if _PERCENT in path:
        # Decoding first makes "%2e%2e" a dot segment like "..", as a
        # server behind the gateway would also see it.
        path = _normalise_escapes(path)
    if path.find(b"/.") >= 0:
        path = _remove_dot_segments(path)
    return path.decode("latin-1")
