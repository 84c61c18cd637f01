"""
Answering a request from a stored response: whole, as its head only
(HEAD), as a 304 when the client's own validators match (RFC 9111 4.3.2),
or as one range of it (RFC 9110 14).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from gatewaykit.actions.static import CHUNK_SIZE, Unsatisfiable, parse_http_date, parse_range
from gatewaykit.cache.entry import Entry, opaque_tag
from gatewaykit.cache.lookup import Lookup

HIT = b"HIT"
MISS = b"MISS"
STALE = b"STALE"
REVALIDATED = b"REVALIDATED"
BYPASS = b"BYPASS"

X_CACHE = b"X-Cache"
X_CACHE_NODE = b"X-Cache-Node"

# What a 304 carries of the stored head (RFC 9110 15.4.5).
NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)
# RFC 9111 5.1: Age is at most 2^31.
_MAX_AGE = 2**31


def _tag_listed(values: list[bytes], etag: Optional[bytes]) -> bool:
    """Whether C{If-None-Match} C{values} match C{etag} (weak comparison)."""
    listed = b",".join(values).strip()
    if listed == b"*":
        return True
    if etag is None:
        return False
    wanted = opaque_tag(etag)
    return any(opaque_tag(tag.strip()) == wanted for tag in listed.split(b","))


def not_modified(lookup: Lookup, etag: Optional[bytes], last_modified: Optional[float]) -> bool:
    """
    Whether the client's validators match a response with C{etag} and
    C{last_modified}: C{If-None-Match} if sent, else C{If-Modified-Since}.
    """
    if lookup.if_none_match:
        return _tag_listed(lookup.if_none_match, etag)
    if lookup.if_modified_since is None or last_modified is None:
        return False
    since = parse_http_date(lookup.if_modified_since)
    return since is not None and last_modified <= since


def _if_range_holds(lookup: Lookup, entry: Entry) -> bool:
    """Whether C{If-Range} lets the range be served (RFC 9110 13.1.5: strong match)."""
    value = lookup.if_range
    if value is None:
        return True
    if value.startswith((b'"', b"W/")):
        return entry.etag is not None and not entry.etag.startswith(b"W/") and value == entry.etag
    when = parse_http_date(value)
    return when is not None and entry.last_modified == when


def send_entry(
    stream: Any, entry: Entry, lookup: Lookup, label: bytes, node: bytes, now: float
) -> None:
    """Answer C{lookup}'s request on C{stream} from C{entry}, marked C{X-Cache: label}."""
    request = stream.request
    age = min(max(0, int(now - entry.born)), _MAX_AGE)
    ours = [
        (b"Age", b"%d" % age),
        (X_CACHE, label),
        (X_CACHE_NODE, node),
        (b"X-Request-ID", request.request_id.encode("ascii")),
    ]
    body = entry.body
    if not lookup.plain and 200 <= entry.status < 300:
        if lookup.conditional and not_modified(lookup, entry.etag, entry.last_modified):
            kept = [(n, v) for n, v in entry.fields if n.lower() in NOT_MODIFIED_FIELDS]
            stream.write_head(304, kept + ours)
            stream.finish()
            return
        if lookup.range and entry.status == 200 and request.method == "GET":
            if _if_range_holds(lookup, entry):
                _send_range(stream, entry, b",".join(lookup.range), ours)
                return
    stream.write_head(entry.status, entry.fields + ours, len(body), entry.reason)
    if request.method == "HEAD":
        stream.finish()
    else:
        send_body(stream, body)


def _send_range(stream: Any, entry: Entry, value: bytes, ours: list[tuple[bytes, bytes]]) -> None:
    body = entry.body
    size = len(body)
    try:
        span = parse_range(value, size)
    except Unsatisfiable:
        stream.write_head(416, [(b"Content-Range", b"bytes */%d" % size)] + ours, 0)
        stream.finish()
        return
    if span is None:
        stream.write_head(entry.status, entry.fields + ours, size, entry.reason)
        send_body(stream, body)
    else:
        start, end = span
        content_range = (b"Content-Range", b"bytes %d-%d/%d" % (start, end - 1, size))
        stream.write_head(206, entry.fields + [content_range] + ours, end - start)
        send_body(stream, body, start, end)


def send_body(stream: Any, body: bytes, start: int = 0, end: Optional[int] = None) -> None:
    """Write C{body[start:end]} to C{stream} and finish it."""
    end = len(body) if end is None else end
    if end - start <= CHUNK_SIZE:
        stream.write(body if (start, end) == (0, len(body)) else body[start:end])
        stream.finish()
    else:
        stream.registerProducer(StoredBody(stream, body, start, end), False)


@implementer(IPullProducer)
class StoredBody:
    """
    Writes part of a stored body to a stream C{CHUNK_SIZE} at a time as the
    stream pulls, then finishes it. Written at once, a large body would sit
    whole in the transport's buffer, which joins it with the head into a new
    object of its size: a fresh allocation of a megabyte for a 1 MiB hit,
    slower than proxying it.
    """

    def __init__(self, stream: Any, body: bytes, start: int, end: int) -> None:
        self._stream = stream
        self._body: Optional[bytes] = body
        self._offset = start
        self._end = end

    def resumeProducing(self) -> None:
        body = self._body
        if body is None:
            return
        offset = self._offset
        self._offset = until = min(offset + CHUNK_SIZE, self._end)
        if until >= self._end:
            self._body = None
            self._stream.write(body[offset:until])
            self._stream.finish()
        else:
            self._stream.write(body[offset:until])

    def stopProducing(self) -> None:
        self._body = None


class CachedAnswer:
    """
    A policy's answer from the cache: the chain calls L{write_to} with the
    response stream (the outer policies' wrappers applied).
    """

    __slots__ = ("entry", "lookup", "label", "node", "now")

    def __init__(self, entry: Entry, lookup: Lookup, label: bytes, node: bytes, now: float) -> None:
        self.entry = entry
        self.lookup = lookup
        self.label = label
        self.node = node
        self.now = now

    def write_to(self, stream: Any) -> None:
        send_entry(stream, self.entry, self.lookup, self.label, self.node, self.now)

    def __repr__(self) -> str:
        return f"<CachedAnswer {self.label.decode()} {self.entry!r}>"
