"""
Tests for the C{compress} policy (L{gatewaykit.policies.compress}), alone
and with the C{cache} policy.
"""

from __future__ import annotations

import gzip
import random
import zlib

import brotli
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config import parse_config
from gatewaykit.config.errors import ConfigError
from gatewaykit.config.model import PoolConfig
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.compress import (
    CompressFactory,
    CompressOptions,
    merge_vary,
    negotiate,
)
from gatewaykit.testing import Response
from tests.test_cache import COMPRESS_DEFAULTS, MAX_AGE_60, CacheHarness, Exchange, x_cache

TEXT = (b"The quick brown fox jumps over the lazy dog. " * 100)[:4000]
HTML = (("Content-Type", "text/html; charset=utf-8"),)


def decoded(response: Response) -> bytes:
    coding = response.headers.get("content-encoding")
    if coding == b"gzip":
        return gzip.decompress(response.body)
    if coding == b"br":
        return brotli.decompress(response.body)
    assert coding is None, coding
    return response.body


def compressing(options: CompressOptions = COMPRESS_DEFAULTS) -> CacheHarness:
    return CacheHarness(policies=("compress",), compress=options)


class NegotiationTests(SynchronousTestCase):
    """Choosing a coding from Accept-Encoding (RFC 9110 12.5.3)."""

    OFFERED = (b"br", b"gzip")

    def test_server_order_at_equal_weights(self) -> None:
        """At equal weights the server's order decides."""
        self.assertEqual(negotiate(b"gzip, deflate, br", self.OFFERED), b"br")
        self.assertEqual(negotiate(b"gzip, br", (b"gzip", b"br")), b"gzip")

    def test_weights(self) -> None:
        """The client's weights come first."""
        self.assertEqual(negotiate(b"br;q=0.5, gzip;q=0.8", self.OFFERED), b"gzip")
        self.assertEqual(negotiate(b"br;q=0, gzip", self.OFFERED), b"gzip")

    def test_nothing_acceptable(self) -> None:
        """No offered coding listed (or all at q=0): none."""
        self.assertIsNone(negotiate(b"deflate", self.OFFERED))
        self.assertIsNone(negotiate(b"", self.OFFERED))
        self.assertIsNone(negotiate(b"gzip;q=0, br;q=0", self.OFFERED))
        self.assertIsNone(negotiate(b"identity", self.OFFERED))

    def test_star(self) -> None:
        """* gives its weight to codings not listed."""
        self.assertEqual(negotiate(b"*", self.OFFERED), b"br")
        self.assertEqual(negotiate(b"br;q=0, *;q=0.5", self.OFFERED), b"gzip")
        self.assertEqual(negotiate(b"identity;q=0, *", self.OFFERED), b"br")

    def test_spelling(self) -> None:
        """Case, spaces and x-gzip do not matter."""
        self.assertEqual(negotiate(b" GZIP ; Q=1 ", self.OFFERED), b"gzip")
        self.assertEqual(negotiate(b"x-gzip", self.OFFERED), b"gzip")

    def test_invalid_weight(self) -> None:
        """A weight that is not a number counts as 0."""
        self.assertIsNone(negotiate(b"br;q=x", (b"br",)))


class CompressionTests(SynchronousTestCase):
    """Compressed responses."""

    def fetch(
        self,
        accept: str = "br, gzip",
        fields=HTML,
        body: bytes = TEXT,
        options: CompressOptions = COMPRESS_DEFAULTS,
        status: int = 200,
        method: str = "GET",
        request_fields=(),
        length: bool = True,
    ) -> Response:
        cache = compressing(options)
        request = (("Accept-Encoding", accept),) if accept else ()
        exchange = cache.send(fields=request + tuple(request_fields), method=method)
        exchange.answer(status, fields, body, length=length)
        return exchange.response()

    def test_brotli(self) -> None:
        """br: Content-Encoding, Vary, chunked, and the bytes decompress to the original."""
        response = self.fetch()
        self.assertEqual(response.headers.get("content-encoding"), b"br")
        self.assertEqual(response.headers.get("vary"), b"Accept-Encoding")
        self.assertEqual(response.headers.get("transfer-encoding"), b"chunked")
        self.assertIsNone(response.headers.get("content-length"))
        self.assertLess(len(response.body), len(TEXT) // 4)
        self.assertEqual(decoded(response), TEXT)

    def test_gzip(self) -> None:
        """gzip when the client prefers it."""
        response = self.fetch("gzip, br;q=0.5")
        self.assertEqual(response.headers.get("content-encoding"), b"gzip")
        self.assertEqual(decoded(response), TEXT)

    def test_server_preference(self) -> None:
        """encodings: [gzip, br] prefers gzip at equal weights."""
        response = self.fetch(options=CompressOptions(encodings=("gzip", "br")))
        self.assertEqual(response.headers.get("content-encoding"), b"gzip")

    def test_no_accept_encoding(self) -> None:
        """Without Accept-Encoding: as is, but with Vary (another client may get it compressed)."""
        response = self.fetch(accept="")
        self.assertEqual((response.body, response.headers.get("vary")), (TEXT, b"Accept-Encoding"))
        self.assertEqual(response.headers.get("content-length"), b"%d" % len(TEXT))

    def test_identity_refused_nothing_offered(self) -> None:
        """identity;q=0 with nothing we offer: sent as is (406 would help nobody)."""
        response = self.fetch(accept="identity;q=0, deflate")
        self.assertIsNone(response.headers.get("content-encoding"))
        self.assertEqual(response.body, TEXT)

    def test_etag_made_weak(self) -> None:
        """A strong ETag becomes weak; a weak one stays."""
        response = self.fetch(fields=HTML + (("ETag", '"abc"'),))
        self.assertEqual(response.headers.get("etag"), b'W/"abc"')
        response = self.fetch(fields=HTML + (("ETag", 'W/"abc"'),))
        self.assertEqual(response.headers.get("etag"), b'W/"abc"')

    def test_vary_merged(self) -> None:
        """An existing Vary gets Accept-Encoding added, once."""
        response = self.fetch(fields=HTML + (("Vary", "Origin"),))
        self.assertEqual(response.headers.get_all("vary"), [b"Origin, Accept-Encoding"])
        response = self.fetch(fields=HTML + (("Vary", "accept-encoding"),))
        self.assertEqual(response.headers.get_all("vary"), [b"accept-encoding"])

    def test_merge_vary_star(self) -> None:
        """Vary: * already says everything."""
        fields = [(b"Vary", b"*")]
        merge_vary(fields, b"Accept-Encoding")
        self.assertEqual(fields, [(b"Vary", b"*")])

    def test_types(self) -> None:
        """Only the listed types, wildcards included, parameters ignored."""
        options = CompressOptions(types=("text/*", "application/json"))
        for content_type, compressed in (
            ("text/plain", True),
            ("TEXT/CSS; charset=utf-8", True),
            ("application/json", True),
            ("application/javascript", False),
            ("image/png", False),
        ):
            response = self.fetch(fields=(("Content-Type", content_type),), options=options)
            self.assertEqual(response.headers.get("content-encoding") is not None, compressed, content_type)
        response = self.fetch(fields=(), options=options)
        self.assertIsNone(response.headers.get("content-encoding"))

    def test_any_type(self) -> None:
        """*/* compresses every type."""
        response = self.fetch(fields=(("Content-Type", "image/x-raw"),), options=CompressOptions(types=("*/*",)))
        self.assertEqual(response.headers.get("content-encoding"), b"br")

    def test_min_bytes(self) -> None:
        """Under min_bytes (length known): as is, no Vary; unknown length: compressed."""
        small = self.fetch(body=TEXT[:100])
        self.assertIsNone(small.headers.get("content-encoding"))
        self.assertIsNone(small.headers.get("vary"))
        chunked = self.fetch(body=TEXT[:100], length=False)
        self.assertEqual(chunked.headers.get("content-encoding"), b"br")
        self.assertEqual(decoded(chunked), TEXT[:100])

    def test_already_encoded(self) -> None:
        """A body with a Content-Encoding is left alone."""
        body = gzip.compress(TEXT)
        response = self.fetch(fields=HTML + (("Content-Encoding", "gzip"),), body=body)
        self.assertEqual((response.headers.get_all("content-encoding"), response.body), ([b"gzip"], body))

    def test_no_transform(self) -> None:
        """Cache-Control: no-transform on the response or the request."""
        response = self.fetch(fields=HTML + (("Cache-Control", "public, no-transform"),))
        self.assertIsNone(response.headers.get("content-encoding"))
        response = self.fetch(request_fields=(("Cache-Control", "no-transform"),))
        self.assertIsNone(response.headers.get("content-encoding"))

    def test_untouched_statuses(self) -> None:
        """204, 206 and responses with Content-Range are left alone."""
        self.assertIsNone(self.fetch(status=204, body=b"").headers.get("content-encoding"))
        partial = self.fetch(status=206, fields=HTML + (("Content-Range", "bytes 0-3999/8000"),))
        self.assertEqual(partial.body, TEXT)
        self.assertIsNone(partial.headers.get("content-encoding"))

    def test_not_modified(self) -> None:
        """A 304 is not compressed, but its ETag is the weak one the 200 would carry."""
        response = self.fetch(status=304, fields=(("ETag", '"abc"'),), body=b"")
        self.assertEqual((response.status, response.headers.get("etag")), (304, b'W/"abc"'))

    def test_head(self) -> None:
        """HEAD is never compressed."""
        cache = compressing()
        exchange = cache.send(fields=(("Accept-Encoding", "br"),), method="HEAD")
        exchange.answer(200, HTML + (("Content-Length", "4000"),), b"", length=False)
        response = exchange.response()
        self.assertIsNone(response.headers.get("content-encoding"))

    def test_error_bodies(self) -> None:
        """A 404 page of a listed type is compressed too."""
        response = self.fetch(status=404)
        self.assertEqual(decoded(response), TEXT)

    def test_policy_provides_interfaces(self) -> None:
        """The policy and its factory provide their interfaces."""
        cache = compressing()
        verifyObject(IPolicy, cache.harness.gateway.policies["compress"])
        verifyObject(IPolicyFactory, CompressFactory())


class StreamingTests(SynchronousTestCase):
    """Compression chunk by chunk, with backpressure."""

    def started(self, accept: str = "gzip", content_type: str = "text/plain") -> Exchange:
        cache = compressing()
        exchange = cache.send(fields=(("Accept-Encoding", accept),))
        exchange.accept()
        exchange.upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            % content_type.encode()
        )
        return exchange

    def test_pieces_go_out_before_the_end(self) -> None:
        """Compressed bytes reach the client while the upstream is still sending."""
        exchange = self.started()
        rng = random.Random(1)
        words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta"]
        sent = b""
        for _ in range(20):
            piece = b" ".join(rng.choice(words) for _ in range(20000))
            sent += piece
            exchange.upstream.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))
        before_end = len(exchange.transport.value())
        self.assertGreater(before_end, 20_000)
        exchange.upstream.dataReceived(b"0\r\n\r\n")
        self.assertEqual(decoded(exchange.response()), sent)

    def test_backpressure(self) -> None:
        """The upstream connection is the client transport's producer, through the wrapper."""
        exchange = self.started()
        self.assertIs(exchange.transport.producer, exchange.upstream)
        self.assertTrue(exchange.transport.streaming)
        exchange.transport.producer.pauseProducing()
        self.assertEqual(exchange.upstream_transport.producerState, "paused")

    def test_last_bytes_leave_connection_reading(self) -> None:
        """
        The encoder's last bytes may fill the client's buffer: the upstream
        connection, back in the pool by then, is not paused by it.
        """
        cache = CacheHarness(policies=("compress",), pool=PoolConfig())
        exchange = cache.send(fields=(("Accept-Encoding", "br"),))
        exchange.accept()
        transport = exchange.transport
        write_sequence = transport.writeSequence

        def full(data: list[bytes]) -> None:
            write_sequence(data)
            if transport.producer is not None:
                transport.producer.pauseProducing()

        transport.writeSequence = full  # chunked pieces go out this way
        exchange.upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(TEXT), TEXT)
        )
        self.assertEqual(decoded(exchange.response()), TEXT)
        self.assertEqual(exchange.upstream_transport.producerState, "producing")

    def test_event_stream_flushed(self) -> None:
        """text/event-stream is flushed after each piece, so events are not held back."""
        exchange = self.started(content_type="text/event-stream")
        event = b"data: hello\n\n"
        exchange.upstream.dataReceived(b"%x\r\n%s\r\n" % (len(event), event))
        body = exchange.transport.value().split(b"\r\n\r\n", 1)[1]
        chunk = body.split(b"\r\n", 1)[1]
        self.assertEqual(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(chunk), event)


class OptionsTests(SynchronousTestCase):
    """The policy's keys."""

    def parse(self, body: str) -> CompressOptions:
        config = parse_config(
            "listeners: {web: {protocol: http, bind: '127.0.0.1:0'}}\n"
            f"policies:\n  z: {{type: compress, {body}}}\n"
            "routes: [{name: r, match: {path_prefix: /}, respond: {status: 200}, policies: [z]}]\n"
        )
        return config.policies["z"].options

    def test_spec_example(self) -> None:
        """The SPEC's example parses."""
        options = self.parse(
            'encodings: [br, gzip], min_bytes: 1KiB, types: ["text/*", application/json,'
            " application/javascript, image/svg+xml]"
        )
        self.assertEqual(options, CompressOptions())

    def test_problems(self) -> None:
        """Unknown encodings and malformed types are reported."""
        for body, expected in (
            ("encodings: [zstd]", "unknown encoding 'zstd'"),
            ("types: [text]", "is not a media type"),
            ("gzip_level: 10", "from 1 to 9"),
        ):
            with self.assertRaises(ConfigError) as raised:
                self.parse(body)
            self.assertIn(expected, str(raised.exception))


class WithCacheTests(SynchronousTestCase):
    """
    The recommended order is C{policies: [cache, compress]}: the cache is
    nearer the client, so it stores what compress made, one variant per
    negotiated Accept-Encoding, and a hit needs no compression.
    """

    def harness(self, order: tuple[str, ...]) -> tuple[CacheHarness, list[bytes]]:
        cache = CacheHarness(policies=order)
        compress = cache.harness.gateway.policies["compress"]
        made: list[bytes] = []
        encoder = compress.encoder

        def counting(coding: bytes):
            made.append(coding)
            return encoder(coding)

        compress.encoder = counting
        return cache, made

    def test_hit_needs_no_compression(self) -> None:
        """[cache, compress]: each coding is compressed once, then served from the cache."""
        cache, made = self.harness(("cache", "compress"))
        fields = MAX_AGE_60 + HTML + (("ETag", '"v1"'),)
        for accept in ("br", "gzip", "br", "gzip, br;q=0.1", ""):
            exchange = cache.send(fields=(("Accept-Encoding", accept),) if accept else ())
            if exchange.went_upstream:
                exchange.answer(200, fields, TEXT)
            response = exchange.response()
            self.assertEqual(decoded(response), TEXT)
            self.assertEqual(response.headers.get("vary"), b"Accept-Encoding")
        self.assertEqual(made, [b"br", b"gzip"])
        self.assertEqual(cache.upstream_requests, 3)  # br, gzip, identity
        hit = cache.get(fields=(("Accept-Encoding", "br"),))
        self.assertEqual((x_cache(hit), hit.headers.get("content-encoding")), (b"HIT", b"br"))
        self.assertEqual(hit.headers.get("etag"), b'W/"v1"')

    def test_revalidation_keeps_encoding(self) -> None:
        """A compressed entry revalidated by a 304 keeps its coding and weak ETag."""
        cache, made = self.harness(("cache", "compress"))
        accept = (("Accept-Encoding", "gzip"),)
        cache.fetch(fields=accept, response_fields=MAX_AGE_60 + HTML + (("ETag", '"v1"'),), body=TEXT)
        cache.reactor.advance(100)
        exchange = cache.send(fields=accept)
        self.assertIn(b'If-None-Match: W/"v1"', exchange.accept())
        exchange.answer(304, MAX_AGE_60 + (("ETag", '"v1"'),), b"")
        response = exchange.response()
        self.assertEqual(x_cache(response), b"REVALIDATED")
        self.assertEqual(response.headers.get("content-encoding"), b"gzip")
        self.assertEqual(response.headers.get("etag"), b'W/"v1"')
        self.assertEqual(decoded(response), TEXT)

    def test_background_refresh_replaces_variant(self) -> None:
        """A stale-while-revalidate refresh goes through compress and replaces that coding's variant."""
        cache, made = self.harness(("cache", "compress"))
        accept = (("Accept-Encoding", "gzip"),)
        fields = (("Cache-Control", "max-age=60, stale-while-revalidate=30"),) + HTML
        cache.fetch(fields=accept, response_fields=fields, body=TEXT)
        cache.reactor.advance(70)
        exchange = cache.send(fields=accept)
        self.assertEqual(x_cache(exchange.response()), b"STALE")
        exchange.answer(200, fields, TEXT.upper())
        hit = cache.get(fields=accept)
        self.assertEqual((x_cache(hit), decoded(hit)), (b"HIT", TEXT.upper()))
        self.assertEqual(len(cache.cache.memory), 1)

    def test_other_order_compresses_each_hit(self) -> None:
        """[compress, cache] is correct too, but compresses every hit again."""
        cache, made = self.harness(("compress", "cache"))
        accept = (("Accept-Encoding", "br"),)
        cache.fetch(fields=accept, response_fields=MAX_AGE_60 + HTML, body=TEXT)
        hit = cache.get(fields=accept)
        self.assertEqual((x_cache(hit), decoded(hit)), (b"HIT", TEXT))
        self.assertEqual(made, [b"br", b"br"])
