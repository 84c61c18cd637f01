"""
End-to-end tests of the C{cache} policy: a real C{twistd gatewaykit}
between curl (or a keep-alive load client) and an origin that counts its
requests and answers with the caching fields a test asks for.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any, Optional
from urllib.parse import parse_qs

from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.integration import support
from tests.integration.support import NODE, RedisServer, Steps


class Origin(Resource):
    """
    An origin whose every path answers 200 with a body naming the path and
    a serial number, and the fields the query asks for: C{cc} (Cache-Control),
    C{etag} (answered 304 when If-None-Match matches), C{vary}, C{delay} (ms).

    @ivar requests: the requests received, as C{(method, path, fields)}.
    @ivar not_modified: how many were answered 304.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.not_modified = 0

    def count(self, path: str) -> int:
        """Requests received for C{path} (without query)."""
        return sum(1 for _, seen, _ in self.requests if seen == path)

    def render(self, request: Any) -> Any:
        path = request.path.decode("ascii")
        query = {k: v[0] for k, v in parse_qs(request.uri.partition(b"?")[2].decode()).items()}
        fields = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode("ascii"), path, fields))
        request.setHeader(b"date", formatdate(time.time(), usegmt=True).encode())
        request.setHeader(b"content-type", b"text/plain")
        if "cc" in query:
            request.setHeader(b"cache-control", query["cc"].encode())
        if "vary" in query:
            request.setHeader(b"vary", query["vary"].encode())
        etag = query.get("etag")
        if etag is not None:
            request.setHeader(b"etag", f'"{etag}"'.encode())
            if fields.get("if-none-match") == f'"{etag}"':
                self.not_modified += 1
                request.setResponseCode(304)
                return b""
        if "size" in query:  # a large body, the same bytes every time
            return large_body(int(query["size"]))
        body = f"{path} #{len(self.requests)}\n".encode()
        delay = int(query.get("delay", "0"))
        if not delay:
            return body

        def later() -> None:
            request.write(body)
            request.finish()

        call = reactor.callLater(delay / 1000, later)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


def large_body(size: int) -> bytes:
    """C{size} bytes that show any reordering or loss: 4-byte counters."""
    return b"".join(index.to_bytes(4, "big") for index in range(size // 4 + 1))[:size]


class OriginServer:
    """An L{Origin} listening on 127.0.0.1 that a test can take down."""

    def __init__(self, test_case: Any) -> None:
        self.origin = Origin()
        self.site = Site(self.origin)
        self.site.noisy = False
        self._port: Any = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.port = self._port.getHost().port
        test_case.addCleanup(self.stop)

    @defer.inlineCallbacks
    def stop(self) -> Steps:
        """Stop listening: the gateway's next connection attempt is refused."""
        port, self._port = self._port, None
        if port is not None:
            yield port.stopListening()


def cache_config(origin_port: int, **options: Any) -> dict:
    """Every path through a C{cache} policy (C{options} added) to the origin."""
    config = support.proxy_config(origin_port)
    # One connection per request, so that a stopped origin refuses at once.
    config["upstreams"]["app"]["pool"] = {"max_idle_per_target": 0}
    return support.with_policies(config, {"cache": {"type": "cache", **options}}, all=["cache"])


class CacheTestCase(support.GatewayTestCase):
    @defer.inlineCallbacks
    def start(self, **options: Any) -> Steps:
        """An origin and a gateway caching it; fires with C{(gateway, origin server)}."""
        server = OriginServer(self)
        gateway = yield self.start_gateway(cache_config(server.port, **options))
        return gateway, server


class HitTests(CacheTestCase):
    """Through twistd, on real sockets."""

    @defer.inlineCallbacks
    def test_miss_then_hit_with_growing_age(self) -> Steps:
        """curl twice: MISS then HIT, the hit not reaching the origin, its Age growing."""
        gateway, server = yield self.start()
        url = gateway.url("/page?cc=max-age%3D60")
        first = yield support.curl(self, url)
        yield support.sleep(1.1)
        second = yield support.curl(self, url)
        yield support.sleep(1.0)
        third = yield support.curl(self, url)
        self.assertEqual([r.header("X-Cache") for r in (first, second, third)], ["MISS", "HIT", "HIT"])
        self.assertEqual(first.body, second.body)
        self.assertEqual(second.header("X-Cache-Node"), NODE)
        self.assertGreaterEqual(int(second.header("Age")), 1)
        self.assertGreater(int(third.header("Age")), int(second.header("Age")))
        self.assertEqual(server.origin.count("/page"), 1)

    @defer.inlineCallbacks
    def test_large_hits_on_one_connection(self) -> Steps:
        """
        Hits of 3 MiB (sent a chunk at a time as the socket drains) and
        small ones, one after another on one keep-alive connection, arrive
        intact and in order; only the first request of each reached the
        origin.
        """
        gateway, server = yield self.start(max_object_bytes="4MiB")
        size = 3 * 1024 * 1024
        large = gateway.url(f"/large?cc=max-age%3D60&size={size}")
        small = gateway.url("/small?cc=max-age%3D60")
        base = self.mktemp()
        outputs = [f"{base}.{index}" for index in range(5)]
        urls = [large, small, large, large, small]
        arguments = [part for url, out in zip(urls, outputs, strict=True) for part in ("-o", out, url)]
        connects, err, code = yield support.run_curl(self, "-w", "%{num_connects} ", *arguments)
        self.assertEqual(code, 0, err)
        self.assertEqual(connects.split(), [b"1", b"0", b"0", b"0", b"0"])  # one connection
        bodies = []
        for out in outputs:
            with open(out, "rb") as f:
                bodies.append(f.read())
        expected = large_body(size)
        large_ones = [bodies[0], bodies[2], bodies[3]]
        self.assertEqual([len(body) for body in large_ones], [size] * 3)
        self.assertTrue(all(body == expected for body in large_ones))
        self.assertEqual(bodies[1], bodies[4])
        self.assertTrue(bodies[1].startswith(b"/small #"))
        self.assertEqual((server.origin.count("/large"), server.origin.count("/small")), (1, 1))

    @defer.inlineCallbacks
    def test_concurrent_misses_collapse(self) -> Steps:
        """100 concurrent misses for one key make exactly one origin request."""
        gateway, server = yield self.start()
        path = "/hot?cc=max-age%3D60&delay=500"
        replies = yield support.send_requests(
            self, gateway.port(), [(path, [])] * 100, concurrency=100
        )
        self.assertEqual([reply.status for reply in replies], [200] * 100)
        self.assertEqual(server.origin.count("/hot"), 1)

    @defer.inlineCallbacks
    def test_revalidated_after_lifetime(self) -> Steps:
        """Past max-age the gateway asks with If-None-Match; the origin's 304 makes it REVALIDATED."""
        gateway, server = yield self.start()
        url = gateway.url("/doc?cc=max-age%3D1&etag=v1")
        first = yield support.curl(self, url)
        yield support.sleep(1.5)
        second = yield support.curl(self, url)
        self.assertEqual((first.header("X-Cache"), second.header("X-Cache")), ("MISS", "REVALIDATED"))
        self.assertEqual(second.body, first.body)
        self.assertEqual(server.origin.not_modified, 1)
        method, _, fields = server.origin.requests[-1]
        self.assertEqual((method, fields.get("if-none-match")), ("GET", '"v1"'))

    @defer.inlineCallbacks
    def test_stale_if_error_with_origin_down(self) -> Steps:
        """With the origin down and stale_if_error, the stale response is served, marked STALE."""
        gateway, server = yield self.start(stale_if_error="1m")
        url = gateway.url("/up?cc=max-age%3D1")
        first = yield support.curl(self, url)
        yield server.stop()
        yield support.sleep(1.5)
        second = yield support.curl(self, url)
        self.assertEqual((second.status, second.header("X-Cache")), (200, "STALE"))
        self.assertEqual(second.body, first.body)

    @defer.inlineCallbacks
    def test_purge(self) -> Steps:
        """POST /cache/purge on the admin API drops entries: the next request is a MISS."""
        server = OriginServer(self)
        config = cache_config(server.port)
        admin = support.free_port()
        config["gateway"]["admin"] = {"bind": f"127.0.0.1:{admin}"}
        gateway = yield self.start_gateway(config)
        url = gateway.url("/users/1?cc=max-age%3D60")
        yield support.curl(self, url)
        purged = yield support.curl(
            self,
            f"http://127.0.0.1:{admin}/cache/purge",
            "-X",
            "POST",
            "-d",
            '{"prefix": "/users"}',
        )
        self.assertEqual(purged.json(), {"purged": 1})
        again = yield support.curl(self, url)
        self.assertEqual(again.header("X-Cache"), "MISS")
        self.assertEqual(server.origin.count("/users/1"), 2)


class RedisTierTests(CacheTestCase):
    """redis_tier: true shares entries between gateway processes through a real redis-server."""

    @defer.inlineCallbacks
    def test_miss_in_one_is_hit_in_another(self) -> Steps:
        """What one gateway stored is a hit in another sharing the Redis."""
        redis = RedisServer(self)
        yield redis.start()
        server = OriginServer(self)
        config = cache_config(server.port, redis_tier=True)
        config["gateway"]["redis"] = {"url": f"redis://127.0.0.1:{redis.port}/0"}
        first = yield self.start_gateway(config)
        second = yield self.start_gateway(config)
        url = "/shared?cc=max-age%3D60"
        # One site behind both (the Host is part of the key, and the ports differ).
        host = ("-H", "Host: www.example.com")
        stored = yield support.curl(self, first.url(url), *host)
        yield support.sleep(0.3)  # the write to Redis is not waited for
        shared = yield support.curl(self, second.url(url), *host)
        self.assertEqual((stored.header("X-Cache"), shared.header("X-Cache")), ("MISS", "HIT"))
        self.assertEqual(shared.body, stored.body)
        self.assertEqual(server.origin.count("/shared"), 1)
        keys = yield redis.command("KEYS", "gk:cache:cache:*")
        self.assertEqual(len(keys), 1)

    @defer.inlineCallbacks
    def test_redis_down_never_fails(self) -> Steps:
        """With Redis gone, requests are answered (from memory, or the origin)."""
        redis = RedisServer(self)
        yield redis.start()
        server = OriginServer(self)
        config = cache_config(server.port, redis_tier=True)
        config["gateway"]["redis"] = {"url": f"redis://127.0.0.1:{redis.port}/0", "timeout": "100ms"}
        gateway = yield self.start_gateway(config)
        yield redis.kill()
        miss: Optional[support.CurlResult] = yield support.curl(self, gateway.url("/a?cc=max-age%3D60"))
        hit = yield support.curl(self, gateway.url("/a?cc=max-age%3D60"))
        self.assertEqual((miss.status, miss.header("X-Cache")), (200, "MISS"))
        self.assertEqual((hit.status, hit.header("X-Cache")), (200, "HIT"))
