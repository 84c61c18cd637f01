"""
The C{compress} policy: responses compressed with brotli (C{br}) or gzip
on their way to the client, chunk by chunk as they stream.

The coding is negotiated from C{Accept-Encoding} (RFC 9110 12.5.3): the
client's weights decide, and at equal weights the order of C{encodings}
(the server's preference). A response is compressed only when its
C{Content-Type} is one of C{types}, it has at least C{min_bytes} (when its
length is known) and nothing says not to: an existing C{Content-Encoding},
status 204/206/304, a HEAD request, C{Cache-Control: no-transform} (on the
request or the response), a C{Content-Range}. A compressed response gets
C{Content-Encoding}, loses C{Content-Length} (it goes chunked) and has its
strong C{ETag} made weak; every response that could have been compressed
gets C{Vary: Accept-Encoding}.

See C{docs/compression.md}.
"""

from __future__ import annotations

import zlib
from typing import Any, Optional

from attrs import frozen
from zope.interface import implementer

from gatewaykit.config.schema import Key, Section, converted, integer, list_of, size
from gatewaykit.http.stream import StreamWrapper
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.chain import PolicyCall, PolicyContext

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is a dependency
    brotli = None

ENCODINGS = ("br", "gzip")
# Brotli's window for streamed responses: 512 KiB (ngx_brotli's default),
# not the 4 MiB maximum, so that many responses at once stay cheap.
BROTLI_WINDOW = 19
# Distinct Accept-Encoding values remembered with their outcome; browsers
# send a handful, so the cache rarely fills (and is cleared when it does).
_NEGOTIATED_MAX = 1024
# Statuses whose body is never compressed: none, or a part of something.
_UNTOUCHED_STATUSES = frozenset({204, 206, 304})
# Streams flushed after every piece, so that events are not held back.
_FLUSHED_TYPES = frozenset({b"text/event-stream"})


def _encoding(text: str) -> str:
    if text not in ENCODINGS:
        raise ValueError(f"unknown encoding {text!r}; expected one of: {', '.join(ENCODINGS)}")
    if text == "br" and brotli is None:
        raise ValueError("encoding 'br' needs the brotli package (pip install brotli)")
    return text


def _media_range(text: str) -> str:
    media = text.strip().lower()
    kind, slash, subtype = media.partition("/")
    if media != "*" and (not slash or not kind or not subtype or (kind == "*" and subtype != "*")):
        raise ValueError(f"{text!r} is not a media type like text/html or text/*")
    return media


@frozen
class CompressOptions:
    """A C{compress} policy's keys."""

    encodings: tuple[str, ...] = ENCODINGS
    min_bytes: int = 1024
    types: tuple[str, ...] = (
        "text/*",
        "application/json",
        "application/javascript",
        "image/svg+xml",
    )
    gzip_level: int = 5
    brotli_quality: int = 4


OPTIONS = Section(
    {
        "encodings": list_of(
            converted(_encoding, "an encoding"), non_empty=True, unique=str, what="encoding"
        ),
        "min_bytes": size(),
        "types": list_of(
            converted(_media_range, "a media type"), non_empty=True, unique=str, what="type"
        ),
        "gzip_level": Key(integer(minimum=1, maximum=9)),
        "brotli_quality": Key(integer(minimum=0, maximum=11)),
    }
).into(CompressOptions)


def _weight(parameters: bytes) -> float:
    for parameter in parameters.split(b";"):
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def negotiate(accept_encoding: bytes, offered: tuple[bytes, ...]) -> Optional[bytes]:
    """
    The coding of C{offered} (in the server's order of preference) to use
    for a request's C{Accept-Encoding} value, or C{None} for none: the one
    the client weighs most, the first offered at equal weights. A coding
    not listed gets C{*}'s weight, or none; C{x-gzip} is C{gzip}.
    """
    weights: dict[bytes, float] = {}
    anything: Optional[float] = None
    for item in accept_encoding.split(b","):
        coding, _, parameters = item.partition(b";")
        coding = coding.strip().lower()
        if coding == b"x-gzip":
            coding = b"gzip"
        if not coding or coding in weights:
            continue
        weight = _weight(parameters)
        if coding == b"*":
            anything = weight if anything is None else anything
        else:
            weights[coding] = weight
    chosen, best = None, 0.0
    for coding in offered:
        weight = weights.get(coding, anything if anything is not None else 0.0)
        if weight > best:
            chosen, best = coding, weight
    return chosen


class GzipEncoder:
    """gzip (RFC 1952) through zlib, one stream."""

    def __init__(self, level: int) -> None:
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._zlib.compress(data)

    def flush(self) -> bytes:
        return self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._zlib.flush(zlib.Z_FINISH)


class BrotliEncoder:
    """Brotli (RFC 7932), one stream."""

    def __init__(self, quality: int) -> None:
        self._brotli = brotli.Compressor(quality=quality, lgwin=BROTLI_WINDOW)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._brotli.process(data))

    def flush(self) -> bytes:
        return bytes(self._brotli.flush())

    def finish(self) -> bytes:
        return bytes(self._brotli.finish())


def merge_vary(fields: list[tuple[bytes, bytes]], name: bytes) -> None:
    """Add C{name} to the response's C{Vary} (unless listed, or C{*})."""
    wanted = name.lower()
    for field, value in fields:
        if field.lower() != b"vary":
            continue
        listed = [token.strip().lower() for token in value.split(b",")]
        if wanted in listed or b"*" in listed:
            return
    for index, (field, value) in enumerate(fields):
        if field.lower() == b"vary":
            fields[index] = (field, value + b", " + name if value.strip() else name)
            return
    fields.append((b"Vary", name))


def weaken_etag(fields: list[tuple[bytes, bytes]]) -> None:
    """Make a strong C{ETag} weak: the compressed bytes are not the upstream's."""
    for index, (field, value) in enumerate(fields):
        if field.lower() == b"etag" and value.lstrip().startswith(b'"'):
            fields[index] = (field, b"W/" + value.strip())


def _accept_encoding(request: Any) -> tuple[Optional[bytes], bool]:
    """C{request}'s C{Accept-Encoding} values joined, and whether it asks for C{no-transform}."""
    accept: Optional[bytes] = None
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"accept-encoding":
            accept = value if accept is None else accept + b"," + value
        elif lower == b"cache-control" and b"no-transform" in value.lower():
            return accept, True
    return accept, False


@implementer(IPolicy)
class Compress:
    """One named C{compress} policy."""

    def __init__(self, name: str, options: CompressOptions) -> None:
        self.name = name
        self.options = options
        self.min_bytes = options.min_bytes
        self._offered = tuple(encoding.encode("ascii") for encoding in options.encodings)
        types = [media.encode("ascii") for media in options.types]
        self._any_type = b"*" in types or b"*/*" in types
        self._types = frozenset(media for media in types if not media.endswith(b"/*"))
        self._families = tuple(media[:-1] for media in types if media.endswith(b"/*"))
        self._negotiated: dict[bytes, Optional[bytes]] = {}

    def coding_for(self, accept_encoding: Optional[bytes]) -> Optional[bytes]:
        """The coding to use for an C{Accept-Encoding} value (C{None}: none)."""
        if accept_encoding is None:
            return None
        known = self._negotiated
        if accept_encoding in known:
            return known[accept_encoding]
        if len(known) >= _NEGOTIATED_MAX:
            known.clear()
        coding = known[accept_encoding] = negotiate(accept_encoding, self._offered)
        return coding

    def variant_coding(self, request: Any) -> bytes:
        """
        The coding this policy gives C{request}'s response when it may be
        compressed (C{identity} for none): a cache before it keys the
        variants it stores by this rather than by C{Accept-Encoding}.
        """
        accept, no_transform = _accept_encoding(request)
        if no_transform:
            return b"identity"
        return self.coding_for(accept) or b"identity"

    def compressible_type(self, content_type: bytes) -> bool:
        """Whether a C{Content-Type} value is one of C{types}."""
        if self._any_type:
            return True
        media = content_type.partition(b";")[0].strip().lower()
        return media in self._types or media.startswith(self._families)

    def encoder(self, coding: bytes) -> Any:
        """A new encoder for C{coding}."""
        if coding == b"br":
            return BrotliEncoder(self.options.brotli_quality)
        return GzipEncoder(self.options.gzip_level)

    def on_request(self, call: PolicyCall) -> Any:
        request = call.request
        if request.method == "HEAD":
            return None
        accept, no_transform = _accept_encoding(request)
        if no_transform:
            return None
        coding = self.coding_for(accept)
        call.wrap_stream(lambda inner: Compressing(inner, self, coding))
        return None


class Compressing(StreamWrapper):
    """
    A response on its way to the client, compressed with C{coding} when
    the policy's rules allow (C{None}: only marked with C{Vary}).

    Backpressure is the inner stream's: the upstream's producer is
    registered there (as for any wrapper), so a slow client pauses the
    upstream and nothing piles up here beyond the encoder's own window.
    """

    def __init__(self, inner: Any, policy: Compress, coding: Optional[bytes]) -> None:
        super().__init__(inner)
        self._policy = policy
        self._coding = coding
        self._encoder: Any = None
        self._flush_each = False

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        coding = self._coding
        content_type = self._eligible(status, fields, content_length)
        if content_type is not None:
            merge_vary(fields, b"Accept-Encoding")
            if coding is not None:
                weaken_etag(fields)
                fields.append((b"Content-Encoding", coding))
                content_length = None
                self._encoder = self._policy.encoder(coding)
                self._flush_each = content_type in _FLUSHED_TYPES
        elif status == 304 and coding is not None:
            # A 304 carries the validator the 200 would have: weak if compressed.
            weaken_etag(fields)
        self.inner.write_head(status, fields, content_length, reason)

    def _eligible(
        self, status: int, fields: list[tuple[bytes, bytes]], content_length: Optional[int]
    ) -> Optional[bytes]:
        """The media type of a response that may be compressed, else C{None}."""
        if status < 200 or status in _UNTOUCHED_STATUSES:
            return None
        policy = self._policy
        if content_length is not None and content_length < policy.min_bytes:
            return None
        content_type = None
        for name, value in fields:
            lower = name.lower()
            if lower == b"content-type":
                content_type = content_type or value
            elif lower == b"content-encoding":
                if value.strip().lower() not in (b"", b"identity"):
                    return None
            elif lower == b"content-range":
                return None
            elif lower == b"cache-control" and b"no-transform" in value.lower():
                return None
        if content_type is None or not policy.compressible_type(content_type):
            return None
        return content_type.partition(b";")[0].strip().lower()

    def write(self, data: bytes) -> None:
        encoder = self._encoder
        if encoder is None:
            self.inner.write(data)
            return
        out = encoder.compress(data)
        if self._flush_each:
            out += encoder.flush()
        if out:
            self.inner.write(out)

    def finish(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            # The upstream's response is over: its connection must not be
            # paused by the client's buffer filling with the last bytes
            # (it would go back to the pool paused).
            self.inner.unregisterProducer()
            out = encoder.finish()
            if out:
                self.inner.write(out)
        self.inner.finish()

    def abort(self) -> None:
        self._encoder = None
        self.inner.abort()


@implementer(IPolicyFactory)
class CompressFactory:
    """The C{compress} policy type."""

    name = "compress"
    options = staticmethod(OPTIONS)

    def build(self, name: str, options: CompressOptions, context: PolicyContext) -> Compress:
        return Compress(name, options)
