"""
End-to-end tests of the C{compress} policy: bodies from 1 KiB to 50 MiB
streamed through a real C{twistd gatewaykit}, fetched raw with curl and
decompressed here; the gateway's memory stays flat while it compresses.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from typing import Any, Callable
from urllib.parse import parse_qs

import brotli
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.python import log
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from tests.integration import support
from tests.integration.support import KiB, MiB, Steps

# Text that compresses like text, not like one repeated byte: random words,
# repeating only every MiB (beyond gzip's and the policy's brotli window).
_WORDS = [
    b"gateway", b"proxy", b"twisted", b"cache", b"stream", b"header", b"body",
    b"upstream", b"client", b"route", b"policy", b"brotli", b"gzip", b"chunk",
    b"request", b"response", b"latency", b"bytes", b"socket", b"reactor",
]  # fmt: skip
_rng = random.Random(9111)
BLOCK = b" ".join(_rng.choice(_WORDS) for _ in range(MiB // 5))[:MiB]
PIECE = 64 * KiB


def text_body(size: int) -> bytes:
    """The first C{size} bytes the origin sends for C{/text?n=size}."""
    return (BLOCK * (size // len(BLOCK) + 1))[:size]


def sha256_of_text(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, len(BLOCK)):
        digest.update(BLOCK[: min(len(BLOCK), size - offset)])
    return digest.hexdigest()


@implementer(IPushProducer)
class TextStream:
    """Writes C{size} bytes of L{BLOCK} text in 64 KiB pieces while not paused."""

    def __init__(self, request: Any, size: int) -> None:
        self._request = request
        self._size = size
        self._sent = 0
        self._paused = False
        self._done = False

    def start(self) -> None:
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._request.registerProducer(self, True)
        reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        while not self._paused and not self._done and self._sent < self._size:
            start = self._sent % len(BLOCK)
            piece = BLOCK[start : start + min(PIECE, self._size - self._sent)]
            self._sent += len(piece)
            self._request.write(piece)
        if self._sent >= self._size and not self._done:
            self._done = True
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._done = True


class TextOrigin(Resource):
    """C{/text?n=N}: N bytes of text/plain with a Content-Length and an ETag."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        query = parse_qs(request.uri.partition(b"?")[2].decode("ascii"))
        size = int(query.get("n", ["0"])[0])
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % size)
        request.setHeader(b"etag", b'"text-%d"' % size)
        request.setHeader(b"cache-control", b"max-age=60")
        TextStream(request, size).start()
        return NOT_DONE_YET


def streaming_decoder(coding: str) -> Callable[[bytes], bytes]:
    if coding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    return brotli.Decompressor().process


def decoded_digest(path: str, coding: str) -> tuple[str, int]:
    """SHA-256 and length of a compressed file's content, decoded in pieces."""
    decode = streaming_decoder(coding)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(MiB), b""):
            out = decode(piece)
            digest.update(out)
            size += len(out)
    return digest.hexdigest(), size


class CompressTests(support.GatewayTestCase):
    """Compression through twistd on real sockets."""

    @defer.inlineCallbacks
    def start(self, policies: tuple[str, ...] = ("compress",)) -> Steps:
        port = support.serve_resource(self, TextOrigin())
        config = support.with_policies(
            support.proxy_config(port, timeouts={"response": "60s"}),
            {
                "compress": {"type": "compress", "encodings": ["br", "gzip"]},
                "cache": {"type": "cache", "max_object_bytes": "2MiB"},
            },
            all=list(policies),
        )
        gateway = yield self.start_gateway(config)
        return gateway

    @defer.inlineCallbacks
    def fetch(self, gateway: Any, size: int, coding: str) -> Steps:
        path = self.mktemp()
        response = yield support.curl(
            self,
            gateway.url(f"/text?n={size}"),
            "-H",
            f"Accept-Encoding: {coding}",
            output=path,
            max_time=120,
        )
        return response, path

    @defer.inlineCallbacks
    def test_sizes(self) -> Steps:
        """gzip and br bodies from 1 KiB to 50 MiB decompress to the original bytes."""
        gateway = yield self.start()
        for size in (KiB, 64 * KiB, MiB, 50 * MiB):
            for coding in ("gzip", "br"):
                response, path = yield self.fetch(gateway, size, coding)
                what = f"{coding} {size}"
                self.assertEqual(response.status, 200, what)
                self.assertEqual(response.header("Content-Encoding"), coding, what)
                self.assertEqual(response.header("Vary"), "Accept-Encoding", what)
                self.assertEqual(response.header("ETag"), f'W/"text-{size}"', what)
                self.assertIsNone(response.header("Content-Length"), what)
                self.assertLess(response.size_download, size, what)
                digest, length = decoded_digest(path, coding)
                self.assertEqual((digest, length), (sha256_of_text(size), size), what)

    @defer.inlineCallbacks
    def test_memory_flat(self) -> Steps:
        """Compressing 50 MiB holds no body: the gateway's RSS grows by far less."""
        gateway = yield self.start()
        yield self.fetch(gateway, MiB, "br")  # warm up: imports, the first connection
        before = gateway.rss_bytes()
        sampler = support.RssSampler(gateway, interval=0.05)
        sampler.start(self)
        for coding in ("br", "gzip"):
            response, path = yield self.fetch(gateway, 50 * MiB, coding)
            self.assertEqual(response.status, 200)
        sampler.stop()
        growth = max(sampler.samples) - before
        report = (
            f"50 MiB compressed twice: RSS before {before / MiB:.1f} MiB, max "
            f"{max(sampler.samples) / MiB:.1f} MiB, growth {growth / MiB:.1f} MiB "
            f"({len(sampler.samples)} samples)"
        )
        log.msg(report)
        self.assertLess(growth, 25 * MiB, report)

    @defer.inlineCallbacks
    def test_cached_variants(self) -> Steps:
        """With [cache, compress] the second br request is a HIT with the same compressed bytes."""
        gateway = yield self.start(("cache", "compress"))
        first, first_path = yield self.fetch(gateway, 256 * KiB, "br")
        second, second_path = yield self.fetch(gateway, 256 * KiB, "br")
        other, other_path = yield self.fetch(gateway, 256 * KiB, "gzip")
        self.assertEqual(
            [r.header("X-Cache") for r in (first, second, other)], ["MISS", "HIT", "MISS"]
        )
        with open(first_path, "rb") as a, open(second_path, "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertEqual(second.header("Content-Length"), str(second.size_download))
        digest, _ = decoded_digest(other_path, "gzip")
        self.assertEqual(digest, sha256_of_text(256 * KiB))
