"""
Tests for the C{cache} policy (L{gatewaykit.policies.cache}): the real
gateway on fake transports, a fake clock, and an upstream answered by hand.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any, Optional, Sequence

from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.actions.static import CHUNK_SIZE
from gatewaykit.config import parse_config
from gatewaykit.config.errors import ConfigError
from gatewaykit.config.model import PolicyConfig, PoolConfig
from gatewaykit.gateway import Gateway
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.cache import Cache, CacheFactory, CacheOptions
from gatewaykit.policies.compress import CompressOptions
from gatewaykit.state import StoreUnavailable
from gatewaykit.state.memory import MemoryStore
from gatewaykit.testing import (
    GatewayHarness,
    Response,
    make_config,
    parse_response,
    route,
    upstream,
)

NOW = 1_800_000_000.0
DEFAULTS = CacheOptions()
COMPRESS_DEFAULTS = CompressOptions()
NO_POOL = PoolConfig(max_idle_per_target=0)
Fields = Sequence[tuple[str, str]]


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


class CacheHarness:
    """
    A gateway with one route through C{policies} to upstream C{app}, whose
    every request opens a new upstream connection (no pool), so that
    L{upstream_requests} counts what reached the upstream (unless C{pool}
    keeps connections).
    """

    def __init__(
        self,
        options: CacheOptions = DEFAULTS,
        policies: tuple[str, ...] = ("cache",),
        compress: CompressOptions = COMPRESS_DEFAULTS,
        store: Any = None,
        pool: PoolConfig = NO_POOL,
    ) -> None:
        config = make_config(
            routes=[route("app", path_prefix="/", upstream="app", policies=policies)],
            upstreams=[
                upstream("app", "10.0.0.1:8000", pool=pool)
            ],
            policies=[
                PolicyConfig("cache", "cache", options),
                PolicyConfig("compress", "compress", compress),
            ],
        )
        self.config = config
        self.harness = GatewayHarness(config, store=store)
        self.reactor = self.harness.reactor
        self.store = self.harness.gateway.store
        self.reactor.advance(NOW)

    @property
    def cache(self) -> Cache:
        return self.harness.gateway.policies["cache"]

    @property
    def upstream_requests(self) -> int:
        return len(self.reactor.tcpClients)

    def send(self, path: str = "/x", fields: Fields = (), method: str = "GET") -> Exchange:
        return Exchange(self, path, fields, method)

    def get(self, path: str = "/x", fields: Fields = (), method: str = "GET") -> Response:
        """A request the cache answers by itself."""
        exchange = self.send(path, fields, method)
        return exchange.response()

    def fetch(
        self,
        path: str = "/x",
        fields: Fields = (),
        status: int = 200,
        response_fields: Fields = (),
        body: bytes = b"hello",
        method: str = "GET",
    ) -> Response:
        """A request answered by the upstream (which must be asked)."""
        exchange = self.send(path, fields, method)
        exchange.answer(status, response_fields, body)
        return exchange.response()


class Exchange:
    """One client request; its upstream side, when it went upstream."""

    def __init__(self, cache: CacheHarness, path: str, fields: Fields, method: str) -> None:
        self.cache = cache
        self.method = method
        self.before = cache.upstream_requests
        self.client, self.transport = cache.harness.connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: example.com\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in fields)
        self.client.dataReceived(head.encode("latin-1") + b"\r\n")
        self.upstream: Any = None
        self.upstream_transport: Any = None

    @property
    def went_upstream(self) -> bool:
        return self.cache.upstream_requests > self.before

    def accept(self) -> bytes:
        """Let the upstream connection be made; what the upstream received."""
        if self.upstream is None:
            assert self.went_upstream, "the request did not go upstream"
            self.upstream, self.upstream_transport = self.cache.harness.accept_upstream(
                self.before
            )
        return self.upstream_transport.value()

    def answer(
        self,
        status: int = 200,
        fields: Fields = (),
        body: bytes = b"hello",
        date: Optional[float] = None,
        length: bool = True,
    ) -> None:
        self.accept()
        when = self.cache.reactor.seconds() if date is None else date
        head = f"HTTP/1.1 {status} X\r\nDate: {http_date(when)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in fields)
        if length:
            head += f"Content-Length: {len(body)}\r\n"
        else:
            head += "Transfer-Encoding: chunked\r\n"
        data = head.encode("latin-1") + b"\r\n"
        if length:
            data += body
        elif body:
            data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            data += b"0\r\n\r\n"
        self.upstream.dataReceived(data)

    def response(self) -> Response:
        return parse_response(self.transport.value(), head_request=self.method == "HEAD")


def x_cache(response: Response) -> Optional[bytes]:
    return response.headers.get("x-cache")


MAX_AGE_60 = (("Cache-Control", "max-age=60"),)


class HitTests(SynchronousTestCase):
    """Stored responses answer later requests."""

    def test_miss_then_hit(self) -> None:
        """The first request is a MISS from the upstream; the second a HIT that does not reach it."""
        cache = CacheHarness()
        first = cache.fetch(response_fields=MAX_AGE_60)
        self.assertEqual((first.status, first.body, x_cache(first)), (200, b"hello", b"MISS"))
        second = cache.get()
        self.assertEqual((second.status, second.body, x_cache(second)), (200, b"hello", b"HIT"))
        self.assertEqual(cache.upstream_requests, 1)

    def test_age_grows(self) -> None:
        """A hit's Age is the time since the response was made."""
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60)
        cache.reactor.advance(7)
        self.assertEqual(cache.get().headers.get("age"), b"7")
        cache.reactor.advance(10)
        self.assertEqual(cache.get().headers.get("age"), b"17")

    def test_node_and_request_id(self) -> None:
        """Every response of the route names the node; a hit has its own request id."""
        cache = CacheHarness()
        first = cache.fetch(response_fields=MAX_AGE_60)
        second = cache.get()
        self.assertEqual(first.headers.get("x-cache-node"), b"test-node")
        self.assertEqual(second.headers.get("x-cache-node"), b"test-node")
        self.assertNotEqual(first.headers.get("x-request-id"), second.headers.get("x-request-id"))
        self.assertEqual(len(second.headers.get_all("x-request-id")), 1)

    def test_stored_fields_kept(self) -> None:
        """A hit has the stored response's fields, its Date among them, once each."""
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60 + (("X-App", "1"),))
        cache.reactor.advance(3)
        hit = cache.get()
        self.assertEqual(hit.headers.get("x-app"), b"1")
        self.assertEqual(hit.headers.get_all("date"), [http_date(NOW).encode()])
        self.assertEqual(hit.headers.get_all("via"), [b"1.1 test-node"])

    def test_other_uri_misses(self) -> None:
        """Another path or query is another key."""
        cache = CacheHarness()
        cache.fetch("/x?a=1", response_fields=MAX_AGE_60)
        self.assertTrue(cache.send("/x?a=2").went_upstream)
        self.assertTrue(cache.send("/y").went_upstream)
        self.assertFalse(cache.send("/x?a=1").went_upstream)

    def test_head_from_get(self) -> None:
        """HEAD is answered from a stored GET: its head and length, no body."""
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60)
        head = cache.get(method="HEAD")
        self.assertEqual((head.status, x_cache(head)), (200, b"HIT"))
        self.assertEqual(head.headers.get("content-length"), b"5")
        self.assertEqual(head.body, b"")

    def test_head_miss_not_stored(self) -> None:
        """A HEAD that misses goes upstream as HEAD and stores nothing."""
        cache = CacheHarness()
        exchange = cache.send(method="HEAD")
        self.assertTrue(exchange.accept().startswith(b"HEAD /x "))
        exchange.answer(200, MAX_AGE_60, b"")
        self.assertEqual(x_cache(exchange.response()), b"MISS")
        self.assertTrue(cache.send().went_upstream)

    def test_body_streamed_while_stored(self) -> None:
        """The client gets each piece as it arrives; the whole is stored at the end."""
        cache = CacheHarness()
        exchange = cache.send()
        exchange.accept()
        exchange.upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\nhello"
        )
        self.assertTrue(exchange.transport.value().endswith(b"\r\n\r\nhello"))
        self.assertEqual(cache.cache.bytes, 0)
        waiting = cache.send()
        exchange.upstream.dataReceived(b"world")
        self.assertEqual(exchange.response().body, b"helloworld")
        self.assertEqual(waiting.response().body, b"helloworld")
        self.assertEqual(cache.get().body, b"helloworld")
        self.assertEqual(cache.upstream_requests, 1)

    def test_chunked_response_stored(self) -> None:
        """A response without length is stored once complete."""
        cache = CacheHarness()
        exchange = cache.send()
        exchange.answer(200, MAX_AGE_60, b"abc", length=False)
        self.assertEqual(exchange.response().body, b"abc")
        hit = cache.get()
        self.assertEqual((hit.body, hit.headers.get("content-length")), (b"abc", b"3"))

    def test_policy_provides_interfaces(self) -> None:
        """The policy and its factory provide their interfaces."""
        cache = CacheHarness()
        verifyObject(IPolicy, cache.cache)
        verifyObject(IPolicyFactory, CacheFactory())


class FreshnessTests(SynchronousTestCase):
    """How long a response is fresh (RFC 9111 4.2)."""

    def fresh_for(self, response_fields: Fields, options: CacheOptions = DEFAULTS) -> list:
        """Which of several later moments still get a HIT."""
        cache = CacheHarness(options)
        cache.fetch(response_fields=response_fields)
        results = []
        start = cache.reactor.seconds()
        for later in (5, 50, 500, 5000, 90000):
            cache.reactor.advance(start + later - cache.reactor.seconds())
            exchange = cache.send()
            results.append(not exchange.went_upstream)
            if exchange.went_upstream:
                break
        return results

    def test_max_age(self) -> None:
        """max-age=60: fresh at 5 and 50 seconds, not at 500."""
        self.assertEqual(self.fresh_for(MAX_AGE_60), [True, True, False])

    def test_s_maxage_wins(self) -> None:
        """s-maxage is what a shared cache uses."""
        fields = (("Cache-Control", "max-age=1000, s-maxage=10"),)
        self.assertEqual(self.fresh_for(fields), [True, False])

    def test_expires(self) -> None:
        """Expires minus Date."""
        fields = (("Expires", http_date(NOW + 100)),)
        self.assertEqual(self.fresh_for(fields), [True, True, False])

    def test_invalid_expires_is_stale(self) -> None:
        """An invalid Expires means already expired."""
        fields = (("Expires", "0"),)
        self.assertEqual(self.fresh_for(fields), [False])

    def test_max_age_beats_expires(self) -> None:
        """max-age wins over Expires."""
        fields = (("Expires", http_date(NOW + 100_000)), ("Cache-Control", "max-age=10"))
        self.assertEqual(self.fresh_for(fields), [True, False])

    def test_heuristic_tenth(self) -> None:
        """Last-Modified 1000 s before Date: fresh for 100 s."""
        fields = (("Last-Modified", http_date(NOW - 1000)),)
        self.assertEqual(self.fresh_for(fields), [True, True, False])

    def test_heuristic_capped(self) -> None:
        """A year-old Last-Modified gives a day, not five weeks."""
        fields = (("Last-Modified", http_date(NOW - 365 * 86400)),)
        self.assertEqual(self.fresh_for(fields), [True, True, True, True, False])

    def test_heuristic_only_for_default_cacheable_statuses(self) -> None:
        """A 302 with Last-Modified and nothing else is not stored."""
        cache = CacheHarness()
        cache.fetch(status=302, response_fields=(("Last-Modified", http_date(NOW - 1000)),))
        self.assertTrue(cache.send().went_upstream)

    def test_public_allows_heuristic(self) -> None:
        """public lets any status be given heuristic freshness."""
        cache = CacheHarness()
        fields = (("Cache-Control", "public"), ("Last-Modified", http_date(NOW - 1000)))
        cache.fetch(status=302, response_fields=fields)
        self.assertFalse(cache.send().went_upstream)

    def test_default_ttl(self) -> None:
        """default_ttl is the freshness of a response that states none."""
        self.assertEqual(
            self.fresh_for((), CacheOptions(default_ttl=100)), [True, True, False]
        )

    def test_default_ttl_does_not_override(self) -> None:
        """A response's own max-age wins over default_ttl."""
        self.assertEqual(self.fresh_for(MAX_AGE_60, CacheOptions(default_ttl=1000)), [True, True, False])

    def test_nothing_stated_not_stored(self) -> None:
        """Without freshness, validators or default_ttl nothing is stored."""
        cache = CacheHarness()
        cache.fetch()
        self.assertTrue(cache.send().went_upstream)

    def test_upstream_age_counts(self) -> None:
        """An Age from the upstream is part of the age: max-age=60 with Age 50 is fresh 10 s more."""
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60 + (("Age", "50"),))
        self.assertEqual(cache.get().headers.get("age"), b"50")
        cache.reactor.advance(11)
        self.assertTrue(cache.send().went_upstream)

    def test_old_date_counts(self) -> None:
        """A Date in the past ages the response (apparent age)."""
        cache = CacheHarness()
        exchange = cache.send()
        exchange.answer(200, MAX_AGE_60, date=NOW - 30)
        self.assertEqual(cache.get().headers.get("age"), b"30")


class StorabilityTests(SynchronousTestCase):
    """What is never stored (RFC 9111 3)."""

    def assertNotStored(self, response_fields: Fields, fields: Fields = (), status: int = 200) -> None:
        cache = CacheHarness()
        first = cache.fetch(fields=fields, status=status, response_fields=response_fields)
        self.assertEqual(x_cache(first), b"MISS")
        self.assertTrue(cache.send(fields=fields).went_upstream)

    def assertStored(self, response_fields: Fields, fields: Fields = ()) -> None:
        cache = CacheHarness()
        cache.fetch(fields=fields, response_fields=response_fields)
        self.assertFalse(cache.send(fields=fields).went_upstream)

    def test_no_store(self) -> None:
        """Cache-Control: no-store."""
        self.assertNotStored((("Cache-Control", "max-age=60, no-store"),))

    def test_private(self) -> None:
        """private: for one user, never in a shared cache."""
        self.assertNotStored((("Cache-Control", "private, max-age=60"),))

    def test_set_cookie(self) -> None:
        """A response setting a cookie is not stored (a documented choice)."""
        self.assertNotStored(MAX_AGE_60 + (("Set-Cookie", "id=1"),))

    def test_authorization(self) -> None:
        """A response to a request with Authorization is not stored..."""
        self.assertNotStored(MAX_AGE_60, fields=(("Authorization", "Bearer x"),))

    def test_authorization_public(self) -> None:
        """... unless it says public, s-maxage or must-revalidate."""
        auth = (("Authorization", "Bearer x"),)
        self.assertStored((("Cache-Control", "public, max-age=60"),), fields=auth)
        self.assertStored((("Cache-Control", "s-maxage=60"),), fields=auth)
        self.assertStored((("Cache-Control", "max-age=60, must-revalidate"),), fields=auth)

    def test_vary_star(self) -> None:
        """Vary: * never matches."""
        self.assertNotStored(MAX_AGE_60 + (("Vary", "*"),))

    def test_partial_content(self) -> None:
        """A 206 is not stored."""
        self.assertNotStored(MAX_AGE_60 + (("Content-Range", "bytes 0-4/10"),), status=206)

    def test_request_no_store(self) -> None:
        """A request's no-store keeps its response out of the cache."""
        self.assertNotStored(MAX_AGE_60, fields=(("Cache-Control", "no-store"),))

    def test_too_large_by_length(self) -> None:
        """A Content-Length over max_object_bytes is not kept."""
        cache = CacheHarness(CacheOptions(max_object_bytes=4))
        self.assertEqual(cache.fetch(response_fields=MAX_AGE_60).body, b"hello")
        self.assertTrue(cache.send().went_upstream)

    def test_too_large_streamed(self) -> None:
        """A body without length stops being kept past max_object_bytes, and still reaches the client."""
        cache = CacheHarness(CacheOptions(max_object_bytes=4))
        exchange = cache.send()
        exchange.answer(200, MAX_AGE_60, b"hello world", length=False)
        self.assertEqual(exchange.response().body, b"hello world")
        self.assertTrue(cache.send().went_upstream)
        self.assertEqual(cache.cache.bytes, 0)

    def test_error_statuses_with_freshness_stored(self) -> None:
        """A 404 with max-age is stored like a 200."""
        cache = CacheHarness()
        cache.fetch(status=404, response_fields=MAX_AGE_60)
        self.assertEqual(cache.get().status, 404)


class RequestDirectiveTests(SynchronousTestCase):
    """What the client's Cache-Control and Pragma ask (RFC 9111 5.2.1)."""

    def stored(self, response_fields: Fields = MAX_AGE_60 + (("ETag", '"v1"'),)) -> CacheHarness:
        cache = CacheHarness()
        cache.fetch(response_fields=response_fields)
        return cache

    def test_no_cache_revalidates(self) -> None:
        """no-cache: the stored response is used only after the upstream says it is current."""
        cache = self.stored()
        exchange = cache.send(fields=(("Cache-Control", "no-cache"),))
        self.assertIn(b'If-None-Match: "v1"\r\n', exchange.accept())
        exchange.answer(304, MAX_AGE_60 + (("ETag", '"v1"'),), b"")
        response = exchange.response()
        self.assertEqual((response.status, response.body, x_cache(response)), (200, b"hello", b"REVALIDATED"))

    def test_pragma_no_cache(self) -> None:
        """Pragma: no-cache counts as no-cache without Cache-Control..."""
        cache = self.stored()
        self.assertTrue(cache.send(fields=(("Pragma", "no-cache"),)).went_upstream)

    def test_pragma_ignored_with_cache_control(self) -> None:
        """... and is ignored with one."""
        cache = self.stored()
        fields = (("Pragma", "no-cache"), ("Cache-Control", "max-stale=0"))
        self.assertFalse(cache.send(fields=fields).went_upstream)

    def test_max_age(self) -> None:
        """max-age=N: an older response is revalidated."""
        cache = self.stored()
        cache.reactor.advance(10)
        self.assertFalse(cache.send(fields=(("Cache-Control", "max-age=20"),)).went_upstream)
        self.assertTrue(cache.send(fields=(("Cache-Control", "max-age=5"),)).went_upstream)

    def test_min_fresh(self) -> None:
        """min-fresh=N: a response fresh for less than N more seconds is revalidated."""
        cache = self.stored()
        cache.reactor.advance(30)
        self.assertFalse(cache.send(fields=(("Cache-Control", "min-fresh=20"),)).went_upstream)
        self.assertTrue(cache.send(fields=(("Cache-Control", "min-fresh=40"),)).went_upstream)

    def test_max_stale(self) -> None:
        """max-stale=N: a response stale by at most N seconds is served, marked STALE."""
        cache = self.stored()
        cache.reactor.advance(70)
        response = cache.get(fields=(("Cache-Control", "max-stale=20"),))
        self.assertEqual((response.body, x_cache(response)), (b"hello", b"STALE"))
        self.assertTrue(cache.send(fields=(("Cache-Control", "max-stale=5"),)).went_upstream)

    def test_max_stale_without_value(self) -> None:
        """max-stale alone accepts any staleness."""
        cache = self.stored()
        cache.reactor.advance(10_000)
        self.assertEqual(x_cache(cache.get(fields=(("Cache-Control", "max-stale"),))), b"STALE")

    def test_max_stale_not_with_must_revalidate(self) -> None:
        """must-revalidate forbids serving stale, whatever the client accepts."""
        cache = self.stored((("Cache-Control", "max-age=60, must-revalidate"),))
        cache.reactor.advance(70)
        self.assertTrue(cache.send(fields=(("Cache-Control", "max-stale"),)).went_upstream)

    def test_only_if_cached_miss(self) -> None:
        """only-if-cached without a usable response: 504, nothing sent upstream."""
        cache = CacheHarness()
        exchange = cache.send(fields=(("Cache-Control", "only-if-cached"),))
        response = exchange.response()
        self.assertEqual((response.status, x_cache(response)), (504, b"MISS"))
        self.assertIn(b"not_cached", response.body)
        self.assertFalse(exchange.went_upstream)

    def test_only_if_cached_hit(self) -> None:
        """only-if-cached with a fresh response: a hit."""
        cache = self.stored()
        self.assertEqual(x_cache(cache.get(fields=(("Cache-Control", "only-if-cached"),))), b"HIT")


class RevalidationTests(SynchronousTestCase):
    """Stale responses are revalidated with the upstream (RFC 9111 4.3)."""

    def stale(self, response_fields: Fields, options: CacheOptions = DEFAULTS) -> CacheHarness:
        cache = CacheHarness(options)
        cache.fetch(response_fields=response_fields, body=b"stored body")
        cache.reactor.advance(120)
        return cache

    def test_etag_304(self) -> None:
        """If-None-Match with the stored ETag; a 304 serves the stored body, REVALIDATED."""
        cache = self.stale(MAX_AGE_60 + (("ETag", '"v1"'),))
        exchange = cache.send()
        self.assertIn(b'If-None-Match: "v1"\r\n', exchange.accept())
        exchange.answer(304, MAX_AGE_60 + (("ETag", '"v1"'),), b"")
        response = exchange.response()
        self.assertEqual(
            (response.status, response.body, x_cache(response)), (200, b"stored body", b"REVALIDATED")
        )
        self.assertEqual(response.headers.get("age"), b"0")
        self.assertEqual(x_cache(cache.get()), b"HIT")
        self.assertEqual(cache.upstream_requests, 2)

    def test_last_modified_304(self) -> None:
        """If-Modified-Since with the stored Last-Modified value."""
        modified = http_date(NOW - 10)
        cache = self.stale(MAX_AGE_60 + (("Last-Modified", modified),))
        exchange = cache.send()
        self.assertIn(f"If-Modified-Since: {modified}\r\n".encode(), exchange.accept())
        exchange.answer(304, MAX_AGE_60, b"")
        self.assertEqual(x_cache(exchange.response()), b"REVALIDATED")

    def test_304_updates_fields(self) -> None:
        """A 304's fields replace the stored ones (its new freshness too), not the body's framing."""
        cache = self.stale(MAX_AGE_60 + (("ETag", '"v1"'), ("X-Version", "1")))
        exchange = cache.send()
        exchange.answer(
            304,
            (("Cache-Control", "max-age=600"), ("ETag", '"v1"'), ("X-Version", "2")),
            b"",
        )
        cache.reactor.advance(300)
        hit = cache.get()
        self.assertEqual((x_cache(hit), hit.headers.get("x-version")), (b"HIT", b"2"))
        self.assertEqual(hit.headers.get_all("x-version"), [b"2"])
        self.assertEqual(hit.body, b"stored body")

    def test_200_replaces(self) -> None:
        """A full answer to a revalidation replaces the entry."""
        cache = self.stale(MAX_AGE_60 + (("ETag", '"v1"'),))
        exchange = cache.send()
        exchange.answer(200, MAX_AGE_60 + (("ETag", '"v2"'),), b"new body")
        self.assertEqual(x_cache(exchange.response()), b"MISS")
        self.assertEqual(cache.get().body, b"new body")

    def test_without_validators_refetched(self) -> None:
        """A stale response without validators is fetched again, unconditionally."""
        cache = self.stale(MAX_AGE_60)
        exchange = cache.send()
        self.assertNotIn(b"if-", exchange.accept().lower())

    def test_concurrent_revalidations_collapse(self) -> None:
        """Requests arriving during a revalidation wait for its 304."""
        cache = self.stale(MAX_AGE_60 + (("ETag", '"v1"'),))
        first = cache.send()
        second = cache.send()
        self.assertFalse(second.went_upstream)
        first.answer(304, MAX_AGE_60 + (("ETag", '"v1"'),), b"")
        self.assertEqual(x_cache(first.response()), b"REVALIDATED")
        self.assertEqual((second.response().body, x_cache(second.response())), (b"stored body", b"HIT"))


class StaleTests(SynchronousTestCase):
    """stale-while-revalidate and stale-if-error (RFC 5861)."""

    def test_stale_while_revalidate(self) -> None:
        """Within the window: the stale response at once, and a refresh in the background."""
        cache = CacheHarness()
        cache.fetch(response_fields=(("Cache-Control", "max-age=60, stale-while-revalidate=30"), ("ETag", '"v1"')))
        cache.reactor.advance(70)
        exchange = cache.send()
        response = exchange.response()
        self.assertEqual((response.body, x_cache(response)), (b"hello", b"STALE"))
        self.assertTrue(exchange.went_upstream)
        sent = exchange.accept()
        self.assertIn(b'If-None-Match: "v1"\r\n', sent)
        self.assertTrue(sent.startswith(b"GET /x HTTP/1.1\r\n"))
        # Only one refresh at a time.
        self.assertFalse(cache.send().went_upstream)
        exchange.answer(304, (("Cache-Control", "max-age=60, stale-while-revalidate=30"), ("ETag", '"v1"')), b"")
        hit = cache.get()
        self.assertEqual((x_cache(hit), hit.headers.get("age")), (b"HIT", b"0"))

    def test_stale_while_revalidate_new_body(self) -> None:
        """A refresh that brings a new response stores it."""
        cache = CacheHarness()
        cache.fetch(response_fields=(("Cache-Control", "max-age=60, stale-while-revalidate=30"),))
        cache.reactor.advance(70)
        exchange = cache.send()
        exchange.answer(200, MAX_AGE_60, b"fresh")
        self.assertEqual(cache.get().body, b"fresh")

    def test_past_the_window(self) -> None:
        """Past stale-while-revalidate the client waits for the upstream."""
        cache = CacheHarness()
        cache.fetch(response_fields=(("Cache-Control", "max-age=60, stale-while-revalidate=30"),))
        cache.reactor.advance(100)
        exchange = cache.send()
        self.assertEqual(exchange.transport.value(), b"")
        exchange.answer(200, MAX_AGE_60, b"fresh")
        self.assertEqual(x_cache(exchange.response()), b"MISS")

    def error_after(
        self, cache_control: str, options: CacheOptions = DEFAULTS, wait: float = 70
    ) -> Exchange:
        cache = CacheHarness(options)
        cache.fetch(response_fields=(("Cache-Control", cache_control), ("ETag", '"v1"')))
        cache.reactor.advance(wait)
        return cache.send()

    def test_stale_if_error_on_5xx(self) -> None:
        """A 5xx from the upstream is replaced by the stale response, marked STALE."""
        exchange = self.error_after("max-age=60, stale-if-error=600")
        exchange.answer(503, (), b"down")
        response = exchange.response()
        self.assertEqual((response.status, response.body, x_cache(response)), (200, b"hello", b"STALE"))

    def test_stale_if_error_on_connect_failure(self) -> None:
        """An upstream that cannot be reached is replaced by the stale response."""
        exchange = self.error_after("max-age=60, stale-if-error=600")
        harness = exchange.cache.harness
        refused = exchange.before
        while refused < exchange.cache.upstream_requests:  # the retries too
            harness.refuse_upstream(ConnectionRefusedError(), refused)
            refused += 1
        response = exchange.response()
        self.assertEqual((response.status, x_cache(response)), (200, b"STALE"))

    def test_stale_if_error_option(self) -> None:
        """The stale_if_error option applies when the response says nothing."""
        exchange = self.error_after("max-age=60", CacheOptions(stale_if_error=600))
        exchange.answer(500, (), b"boom")
        self.assertEqual(x_cache(exchange.response()), b"STALE")

    def test_stale_if_error_window(self) -> None:
        """Past the window, the error goes to the client."""
        exchange = self.error_after("max-age=60, stale-if-error=5", wait=100)
        exchange.answer(502, (), b"down")
        response = exchange.response()
        self.assertEqual((response.status, x_cache(response)), (502, b"MISS"))

    def test_not_with_must_revalidate(self) -> None:
        """must-revalidate: never stale, even on errors."""
        exchange = self.error_after("max-age=60, must-revalidate, stale-if-error=600")
        exchange.answer(500, (), b"boom")
        self.assertEqual(exchange.response().status, 500)

    def test_4xx_is_no_error(self) -> None:
        """A 404 is an answer, not a failure: it goes through."""
        exchange = self.error_after("max-age=60, stale-if-error=600")
        exchange.answer(404, (), b"gone")
        self.assertEqual(exchange.response().status, 404)


class CollapsingTests(SynchronousTestCase):
    """Concurrent misses for one key make one upstream request."""

    def test_one_upstream_request(self) -> None:
        """Ten concurrent misses: one upstream request, nine served from the filled entry."""
        cache = CacheHarness()
        exchanges = [cache.send() for _ in range(10)]
        self.assertEqual(cache.upstream_requests, 1)
        exchanges[0].answer(200, MAX_AGE_60, b"shared")
        responses = [exchange.response() for exchange in exchanges]
        self.assertEqual({r.body for r in responses}, {b"shared"})
        self.assertEqual([x_cache(r) for r in responses], [b"MISS"] + [b"HIT"] * 9)
        self.assertEqual(cache.upstream_requests, 1)

    def test_uncacheable_releases(self) -> None:
        """When the response turns out uncacheable the others go upstream themselves, at once."""
        cache = CacheHarness()
        exchanges = [cache.send() for _ in range(3)]
        exchanges[0].accept()
        exchanges[0].upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 5\r\n\r\n"
        )
        self.assertEqual(cache.upstream_requests, 3)

    def test_leader_gone_releases(self) -> None:
        """When the first client goes away the others go upstream."""
        cache = CacheHarness()
        first, second = cache.send(), cache.send()
        first.accept()
        first.client.connectionLost(None)
        self.assertTrue(second.went_upstream)

    def test_timeout_releases(self) -> None:
        """Waiters wait at most 5 seconds for another's response."""
        cache = CacheHarness()
        cache.send()
        second = cache.send()
        cache.reactor.advance(4)
        self.assertFalse(second.went_upstream)
        cache.reactor.advance(1.5)
        self.assertTrue(second.went_upstream)
        second.answer(200, MAX_AGE_60, b"second")
        self.assertEqual(second.response().body, b"second")

    def test_timeout_counts_from_first_waiter(self) -> None:
        """The 5 seconds start when the first request begins to wait, not with the miss."""
        cache = CacheHarness()
        cache.send()
        cache.reactor.advance(4)
        second = cache.send()
        cache.reactor.advance(4)
        self.assertFalse(second.went_upstream)
        cache.reactor.advance(1.5)
        self.assertTrue(second.went_upstream)

    def test_lone_miss_sets_no_timer(self) -> None:
        """A miss nobody waits for schedules no timeout (one timer fewer per miss)."""
        cache = CacheHarness()
        exchange = cache.send()
        (collapse,) = cache.cache._collapses.values()
        self.assertIsNone(collapse._timer)
        exchange.answer(200, MAX_AGE_60, b"alone")
        self.assertEqual(exchange.response().body, b"alone")
        self.assertEqual(cache.cache._collapses, {})

    def test_other_variant_goes_upstream(self) -> None:
        """A waiter whose variant differs from what was stored goes upstream."""
        cache = CacheHarness()
        first = cache.send(fields=(("Accept-Language", "en"),))
        second = cache.send(fields=(("Accept-Language", "fr"),))
        first.answer(200, MAX_AGE_60 + (("Vary", "Accept-Language"),), b"hello")
        self.assertTrue(second.went_upstream)
        second.answer(200, MAX_AGE_60 + (("Vary", "Accept-Language"),), b"bonjour")
        self.assertEqual(second.response().body, b"bonjour")


class VaryTests(SynchronousTestCase):
    """Responses with Vary are stored per variant (RFC 9111 4.1)."""

    VARY = MAX_AGE_60 + (("Vary", "Accept-Language"),)

    def test_variants(self) -> None:
        """Each value of the varying field is its own entry."""
        cache = CacheHarness()
        cache.fetch(fields=(("Accept-Language", "en"),), response_fields=self.VARY, body=b"hello")
        cache.fetch(fields=(("Accept-Language", "fr"),), response_fields=self.VARY, body=b"bonjour")
        self.assertEqual(cache.get(fields=(("Accept-Language", "en"),)).body, b"hello")
        self.assertEqual(cache.get(fields=(("Accept-Language", "fr"),)).body, b"bonjour")
        self.assertTrue(cache.send().went_upstream)  # no Accept-Language is a third variant
        self.assertEqual(cache.upstream_requests, 3)

    def test_accept_encoding_normalised(self) -> None:
        """Accept-Encoding values differing in order or spaces share an entry."""
        cache = CacheHarness()
        vary = MAX_AGE_60 + (("Vary", "Accept-Encoding"),)
        cache.fetch(fields=(("Accept-Encoding", "gzip, br"),), response_fields=vary)
        self.assertFalse(cache.send(fields=(("Accept-Encoding", "BR,gzip"),)).went_upstream)
        self.assertTrue(cache.send(fields=(("Accept-Encoding", "gzip"),)).went_upstream)

    def test_vary_change_replaces_variants(self) -> None:
        """A response varying on other fields replaces the earlier variants."""
        cache = CacheHarness()
        cache.fetch(fields=(("Accept-Language", "en"),), response_fields=self.VARY)
        cache.reactor.advance(100)
        cache.fetch(fields=(("Accept-Language", "en"),), response_fields=MAX_AGE_60 + (("Vary", "X-Tenant"),))
        self.assertEqual(len(cache.cache.memory), 1)


class ConditionalTests(SynchronousTestCase):
    """The client's own validators are answered by the cache (304)."""

    STORED = MAX_AGE_60 + (("ETag", '"v1"'), ("Last-Modified", http_date(NOW - 100)))

    def stored(self) -> CacheHarness:
        cache = CacheHarness()
        cache.fetch(response_fields=self.STORED)
        return cache

    def test_if_none_match(self) -> None:
        """A matching If-None-Match (weak comparison) gets a 304 HIT with the validators."""
        cache = self.stored()
        for tag in ('"v1"', 'W/"v1"', '"v0", "v1"', "*"):
            response = cache.get(fields=(("If-None-Match", tag),))
            self.assertEqual((response.status, x_cache(response)), (304, b"HIT"), tag)
            self.assertEqual(response.headers.get("etag"), b'"v1"')
            self.assertEqual(response.body, b"")

    def test_if_none_match_other(self) -> None:
        """Another tag gets the whole response."""
        cache = self.stored()
        response = cache.get(fields=(("If-None-Match", '"v0"'),))
        self.assertEqual((response.status, response.body), (200, b"hello"))

    def test_if_modified_since(self) -> None:
        """If-Modified-Since at or after Last-Modified: 304."""
        cache = self.stored()
        self.assertEqual(cache.get(fields=(("If-Modified-Since", http_date(NOW - 50)),)).status, 304)
        self.assertEqual(cache.get(fields=(("If-Modified-Since", http_date(NOW - 500)),)).status, 200)

    def test_if_none_match_wins(self) -> None:
        """With If-None-Match, If-Modified-Since is not looked at."""
        cache = self.stored()
        fields = (("If-None-Match", '"v0"'), ("If-Modified-Since", http_date(NOW)))
        self.assertEqual(cache.get(fields=fields).status, 200)

    def test_miss_answers_condition(self) -> None:
        """On a miss the client's validators stay here: the upstream sends all, the client gets a 304, the body is stored."""
        cache = CacheHarness()
        exchange = cache.send(fields=(("If-None-Match", '"v1"'),))
        self.assertNotIn(b"if-none-match", exchange.accept().lower())
        exchange.answer(200, self.STORED, b"hello")
        response = exchange.response()
        self.assertEqual((response.status, x_cache(response)), (304, b"MISS"))
        self.assertEqual(cache.get().body, b"hello")

    def test_preconditions_go_upstream(self) -> None:
        """If-Match is left to the upstream."""
        cache = self.stored()
        exchange = cache.send(fields=(("If-Match", '"v1"'),))
        self.assertIn(b'If-Match: "v1"', exchange.accept())
        exchange.answer(200, (), b"x")
        self.assertEqual(x_cache(exchange.response()), b"BYPASS")


class RangeTests(SynchronousTestCase):
    """A range of a stored response (RFC 9110 14)."""

    def stored(self) -> CacheHarness:
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60 + (("ETag", '"v1"'),), body=b"0123456789")
        return cache

    def test_range(self) -> None:
        """bytes=2-5: 206 with Content-Range from the stored body."""
        response = self.stored().get(fields=(("Range", "bytes=2-5"),))
        self.assertEqual((response.status, response.body), (206, b"2345"))
        self.assertEqual(response.headers.get("content-range"), b"bytes 2-5/10")
        self.assertEqual(x_cache(response), b"HIT")

    def test_suffix(self) -> None:
        """bytes=-3: the last three."""
        self.assertEqual(self.stored().get(fields=(("Range", "bytes=-3"),)).body, b"789")

    def test_unsatisfiable(self) -> None:
        """A range past the end: 416."""
        response = self.stored().get(fields=(("Range", "bytes=20-"),))
        self.assertEqual((response.status, response.headers.get("content-range")), (416, b"bytes */10"))

    def test_if_range_mismatch(self) -> None:
        """If-Range with another tag: the whole response."""
        response = self.stored().get(fields=(("Range", "bytes=2-5"), ("If-Range", '"v0"')))
        self.assertEqual((response.status, response.body), (200, b"0123456789"))

    def test_if_range_match(self) -> None:
        """If-Range with the stored tag: the range."""
        response = self.stored().get(fields=(("Range", "bytes=2-5"), ("If-Range", '"v1"')))
        self.assertEqual(response.status, 206)

    def test_large_body_pulled(self) -> None:
        """A stored body larger than a chunk is written as the client's transport pulls it."""
        body = bytes(range(256)) * 1000  # 256,000 bytes: four chunks
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60, body=body)
        exchange = cache.send()
        transport = exchange.transport
        self.assertLess(len(transport.value()), 2 * CHUNK_SIZE)  # not all at once
        pulls = 0
        while transport.producer is not None:
            transport.producer.resumeProducing()
            pulls += 1
        self.assertEqual(pulls, 4)  # one per chunk
        response = exchange.response()
        self.assertEqual((response.status, response.body, x_cache(response)), (200, body, b"HIT"))
        ranged = cache.send(fields=(("Range", "bytes=70000-199999"),))
        while ranged.transport.producer is not None:
            ranged.transport.producer.resumeProducing()
        response = ranged.response()
        self.assertEqual((response.status, response.body), (206, body[70000:200000]))

    def test_miss_forwarded(self) -> None:
        """A range request that misses goes upstream as is; the 206 is not stored."""
        cache = CacheHarness()
        exchange = cache.send(fields=(("Range", "bytes=0-1"),))
        self.assertIn(b"Range: bytes=0-1", exchange.accept())
        exchange.answer(206, MAX_AGE_60 + (("Content-Range", "bytes 0-1/10"),), b"01")
        self.assertEqual(exchange.response().status, 206)
        self.assertTrue(cache.send().went_upstream)


class InvalidationTests(SynchronousTestCase):
    """Unsafe requests invalidate (RFC 9111 4.4)."""

    def stored(self, *paths: str) -> CacheHarness:
        cache = CacheHarness()
        for path in paths:
            cache.fetch(path, response_fields=MAX_AGE_60)
        return cache

    def test_post_bypasses_and_invalidates(self) -> None:
        """A successful POST to a URI goes upstream (BYPASS) and drops the stored response."""
        cache = self.stored("/x")
        response = cache.fetch(method="POST", status=201, body=b"made")
        self.assertEqual(x_cache(response), b"BYPASS")
        self.assertTrue(cache.send().went_upstream)

    def test_error_keeps(self) -> None:
        """A failed unsafe request invalidates nothing."""
        cache = self.stored("/x")
        cache.fetch(method="DELETE", status=500)
        self.assertFalse(cache.send().went_upstream)

    def test_location_same_origin(self) -> None:
        """Location and Content-Location of the same origin are invalidated too."""
        cache = self.stored("/x", "/a", "/b")
        cache.fetch(
            method="PUT",
            response_fields=(("Location", "/a"), ("Content-Location", "http://example.com/b")),
        )
        self.assertTrue(cache.send("/a").went_upstream)
        self.assertTrue(cache.send("/b").went_upstream)

    def test_location_other_origin(self) -> None:
        """A Location on another host is left alone."""
        cache = self.stored("/a")
        cache.fetch(method="POST", response_fields=(("Location", "http://other.example/a"),))
        self.assertFalse(cache.send("/a").went_upstream)

    def test_safe_methods_invalidate_nothing(self) -> None:
        """OPTIONS is bypassed and changes nothing."""
        cache = self.stored("/x")
        self.assertEqual(x_cache(cache.fetch(method="OPTIONS", status=204, body=b"")), b"BYPASS")
        self.assertFalse(cache.send().went_upstream)


class BoundsTests(SynchronousTestCase):
    """max_bytes with least-recently-used eviction."""

    def test_lru_eviction(self) -> None:
        """Past max_bytes the least recently used entry goes."""
        cache = CacheHarness(CacheOptions(max_bytes=1500))
        body = b"x" * 300
        cache.fetch("/a", response_fields=MAX_AGE_60, body=body)
        cache.fetch("/b", response_fields=MAX_AGE_60, body=body)
        cache.get("/a")  # /a is now the most recently used
        cache.fetch("/c", response_fields=MAX_AGE_60, body=body)
        self.assertLessEqual(cache.cache.bytes, 1500)
        self.assertTrue(cache.send("/b").went_upstream)
        self.assertFalse(cache.send("/a").went_upstream)

    def test_bytes_and_lookups(self) -> None:
        """The policy counts what it did and the bytes it holds (for the metrics)."""
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60)
        cache.get()
        cache.fetch("/form", method="POST")
        self.assertEqual(
            cache.cache.lookups, {"hit": 1, "miss": 1, "stale": 0, "revalidated": 0, "bypass": 1}
        )
        self.assertGreater(cache.cache.bytes, 5)


class PurgeTests(SynchronousTestCase):
    """POST /cache/purge reaches the policy's purge(prefix, url)."""

    def stored(self) -> CacheHarness:
        cache = CacheHarness()
        for path in ("/users", "/users/1", "/users/2?full=1", "/usersx", "/other"):
            cache.fetch(path, response_fields=MAX_AGE_60)
        return cache

    def test_prefix(self) -> None:
        """A prefix purges on segment boundaries and counts."""
        cache = self.stored()
        self.assertEqual(cache.cache.purge(prefix="/users"), 3)
        self.assertTrue(cache.send("/users/1").went_upstream)
        self.assertFalse(cache.send("/usersx").went_upstream)

    def test_url(self) -> None:
        """A URL purges that one response."""
        cache = self.stored()
        self.assertEqual(cache.cache.purge(url="http://example.com/users/2?full=1"), 1)
        self.assertTrue(cache.send("/users/2?full=1").went_upstream)
        self.assertFalse(cache.send("/users/1").went_upstream)

    def test_url_path_only(self) -> None:
        """A path and query without host purges it on every host."""
        cache = self.stored()
        self.assertEqual(cache.cache.purge(url="/users/1"), 1)

    def test_url_variants(self) -> None:
        """Every variant of the URL goes."""
        cache = CacheHarness()
        vary = MAX_AGE_60 + (("Vary", "Accept-Language"),)
        cache.fetch(fields=(("Accept-Language", "en"),), response_fields=vary)
        cache.fetch(fields=(("Accept-Language", "fr"),), response_fields=vary)
        self.assertEqual(cache.cache.purge(url="http://example.com/x"), 2)

    def test_admin_purge(self) -> None:
        """The admin API's purge finds the policy and returns its count."""
        from gatewaykit.admin.state import LocalState

        cache = self.stored()

        class Service:
            gateway = cache.harness.gateway
            reactor = cache.reactor
            metrics = None

        state = LocalState(Service())
        self.assertEqual(self.successResultOf(state.purge_cache(prefix="/users")), 3)


class FailingStore(MemoryStore):
    """A store whose every call fails as Redis being away does."""

    def get(self, key: str) -> Any:
        return fail(StoreUnavailable("down"))

    def set(self, key: str, value: bytes, ttl: float) -> Any:
        return fail(StoreUnavailable("down"))

    def delete(self, key: str) -> Any:
        return fail(StoreUnavailable("down"))


class RedisTierTests(SynchronousTestCase):
    """redis_tier: a second tier in the state store."""

    def test_miss_here_hit_there(self) -> None:
        """An entry another process stored is a hit here."""
        cache = CacheHarness(CacheOptions(redis_tier=True))
        cache.fetch(response_fields=MAX_AGE_60 + (("X-App", "1"),), body=b"shared body")
        cache.cache.memory.clear()  # as if another process
        cache.reactor.advance(5)
        response = cache.get()
        self.assertEqual((response.body, x_cache(response)), (b"shared body", b"HIT"))
        self.assertEqual(response.headers.get("age"), b"5")
        self.assertEqual(response.headers.get("x-app"), b"1")
        self.assertEqual(cache.upstream_requests, 1)

    def test_keys_namespaced(self) -> None:
        """Objects are under gk:cache:<policy>: with a TTL from their freshness."""
        cache = CacheHarness(CacheOptions(redis_tier=True))
        cache.fetch(response_fields=MAX_AGE_60)
        keys = [key for key in cache.store._values if key.startswith("gk:cache:cache:")]
        self.assertEqual(len(keys), 1)
        _, expires = cache.store._values[keys[0]]
        self.assertEqual(expires - cache.reactor.seconds(), 60)

    def test_varying(self) -> None:
        """Variants are found through the stored Vary."""
        cache = CacheHarness(CacheOptions(redis_tier=True))
        vary = MAX_AGE_60 + (("Vary", "Accept-Language"),)
        cache.fetch(fields=(("Accept-Language", "en"),), response_fields=vary, body=b"hello")
        cache.fetch(fields=(("Accept-Language", "fr"),), response_fields=vary, body=b"bonjour")
        cache.cache.memory.clear()
        self.assertEqual(cache.get(fields=(("Accept-Language", "fr"),)).body, b"bonjour")

    def test_purge_prefix_reaches_tier(self) -> None:
        """A purge by prefix makes older objects in the tier unusable."""
        cache = CacheHarness(CacheOptions(redis_tier=True))
        cache.fetch("/users/1", response_fields=MAX_AGE_60)
        cache.reactor.advance(1)
        cache.cache.purge(prefix="/users")
        self.assertTrue(cache.send("/users/1").went_upstream)

    def test_purge_url_reaches_tier(self) -> None:
        """A purge by URL deletes it from the tier."""
        cache = CacheHarness(CacheOptions(redis_tier=True))
        cache.fetch("/a", response_fields=MAX_AGE_60)
        cache.cache.purge(url="http://example.com/a")
        self.assertTrue(cache.send("/a").went_upstream)

    def test_store_failures_never_fail_requests(self) -> None:
        """A store that fails is a miss; the response still goes out, and is kept in memory."""
        cache = CacheHarness(CacheOptions(redis_tier=True), store=FailingStore(None))
        response = cache.fetch(response_fields=MAX_AGE_60)
        self.assertEqual((response.status, x_cache(response)), (200, b"MISS"))
        self.assertEqual(x_cache(cache.get()), b"HIT")
        cache.cache.purge(prefix="/")


class ReloadTests(SynchronousTestCase):
    """What a reload keeps."""

    def test_memory_kept(self) -> None:
        """A new config version's cache policy of the same name keeps the stored responses."""
        cache = CacheHarness()
        cache.fetch(response_fields=MAX_AGE_60)
        gateway = Gateway(cache.config, cache.reactor, store=cache.store)
        self.assertIs(gateway.policies["cache"].memory, cache.cache.memory)

    def test_options(self) -> None:
        """The options parse from YAML with their units, and are checked."""
        config = parse_config(
            "listeners: {web: {protocol: http, bind: '127.0.0.1:0'}}\n"
            "policies:\n  c: {type: cache, max_bytes: 16MiB, max_object_bytes: 1MiB,"
            " default_ttl: 1m, stale_if_error: 1h, redis_tier: true}\n"
            "routes: [{name: r, match: {path_prefix: /}, respond: {status: 200}, policies: [c]}]\n"
        )
        self.assertEqual(
            config.policies["c"].options,
            CacheOptions(16 * 1024 * 1024, 1024 * 1024, 60.0, 3600.0, True),
        )
        with self.assertRaises(ConfigError) as raised:
            parse_config(
                "listeners: {web: {protocol: http, bind: '127.0.0.1:0'}}\n"
                "policies:\n  c: {type: cache, max_byte: 1}\n"
                "routes: [{name: r, match: {path_prefix: /}, respond: {status: 200}, policies: [c]}]\n"
            )
        self.assertIn("did you mean 'max_bytes'", str(raised.exception))


class ChainSeamTests(SynchronousTestCase):
    """What the cache needs of the policy chain: answers that write themselves, later policies, subrequests."""

    def chain(self, policies: list) -> tuple[Any, list]:
        from gatewaykit.policies.chain import PolicyChain

        handled: list = []

        class Action:
            def handle(self, request: Any, stream: Any) -> None:
                handled.append((request, stream))

        return PolicyChain(policies, Action()), handled

    def test_later_policies_and_subrequest(self) -> None:
        """A policy sees the policies after it, and can send a request of its own through them and the action."""
        from gatewaykit.http.message import Request

        seen: list = []

        class First:
            name = "first"

            def on_request(self, call: Any) -> None:
                seen.append(("first", call.later_policies()))
                if call.request.path == "/client":
                    call.subrequest(Request("GET", b"/own", "/own"), "own stream")

        class Second:
            name = "second"

            def on_request(self, call: Any) -> None:
                seen.append(("second", call.request.path))

        first, second = First(), Second()
        chain, handled = self.chain([first, second])
        chain.handle(Request("GET", b"/client", "/client"), "client stream")
        self.assertEqual(
            seen, [("first", (second,)), ("second", "/own"), ("second", "/client")]
        )
        self.assertEqual([(r.path, s) for r, s in handled], [("/own", "own stream"), ("/client", "client stream")])

    def test_answer_writing_itself(self) -> None:
        """An answer with write_to(stream) is given the outgoing stream."""
        from gatewaykit.http.message import Request

        written: list = []

        class Answer:
            def write_to(self, stream: Any) -> None:
                written.append(stream)

        class Answering:
            name = "answering"

            def on_request(self, call: Any) -> Any:
                return Answer()

        chain, handled = self.chain([Answering()])
        chain.handle(Request("GET", b"/", "/"), "the stream")
        self.assertEqual((written, handled), (["the stream"], []))
