"""
HTTP/1.1 serialisation shared by the downstream and upstream codecs.
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus
from typing import Callable, Iterable

REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}

# Header fields that describe one connection, never forwarded (RFC 9110 7.6.1).
# Content-Length and Expect are also dropped: the gateway frames each hop's
# body itself and answers 100-continue itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def reason_for(status: int) -> bytes:
    """The standard reason phrase for C{status}, or C{b"Unknown"}."""
    return REASONS.get(status, b"Unknown")


# hop_by_hop_fields by Connection values: nearly every message has one of a
# few ("keep-alive", "close"), so the set is made once for each.
_HOP_BY_HOP_SETS: dict[tuple[bytes, ...], frozenset[bytes]] = {}
_MAX_HOP_BY_HOP_SETS = 256


def hop_by_hop_fields(connection_values: Iterable[bytes]) -> frozenset[bytes]:
    """The fields not to forward, given the values of the C{Connection} fields."""
    values = tuple(connection_values)
    fields = _HOP_BY_HOP_SETS.get(values)
    if fields is None:
        fields = HOP_BY_HOP | connection_tokens(values)
        if len(_HOP_BY_HOP_SETS) >= _MAX_HOP_BY_HOP_SETS:
            _HOP_BY_HOP_SETS.clear()  # values made up by a client: start over
        _HOP_BY_HOP_SETS[values] = fields
    return fields


def connection_tokens(values: Iterable[bytes]) -> set[bytes]:
    """The lower-case option names listed in C{Connection} field values."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def status_line(status: int, reason: bytes) -> bytes:
    """C{HTTP/1.1 200 OK\\r\\n}."""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_field_line = b": ".join


def serialize_fields(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header fields as C{Name: value\\r\\n} lines (no final blank line)."""
    # Joined in C: half the time of concatenating each line in Python.
    lines = b"\r\n".join(map(_field_line, fields))
    return lines + b"\r\n" if lines else b""


def chunk(data: bytes) -> list[bytes]:
    """The pieces of one chunk of a chunked body."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"


class HTTPDate:
    """
    The C{Date} header value, formatted at most once a second.

    @param now: a callable returning the current POSIX time (the reactor's
        C{seconds}, so tests drive it with a clock).
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        second = int(self._now())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode("ascii")
        return self._value
