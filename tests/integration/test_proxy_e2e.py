"""
End-to-end tests of the proxy path: a real C{twistd gatewaykit} process
between real clients (curl, raw TCP) and a real upstream on loopback.
"""

from __future__ import annotations

import re

from twisted.internet import defer
from twisted.python import log

from tests.integration import support
from tests.integration.support import NODE, GiB, KiB, MiB

_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _seen(response: support.Response) -> dict[str, list[str]]:
    """The header fields the upstream's C{/headers} reported, by lower-case name."""
    fields: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        fields.setdefault(name.lower(), []).append(value)
    return fields


class ForwardingTests(support.GatewayTestCase):
    """A plain GET through the gateway to a real upstream."""

    @defer.inlineCallbacks
    def get_headers(self, *options: str) -> support.Steps:
        """GET /headers?x=1 through a new gateway; the gateway and the response."""
        gateway, _ = yield self.start_proxy()
        response = yield support.curl(self, gateway.url("/headers?x=1"), *options)
        return gateway, response

    @defer.inlineCallbacks
    def test_status_and_body(self) -> support.Steps:
        """The upstream's status and body reach the client; method and URI reach the upstream."""
        _, response = yield self.get_headers()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), "application/json")
        seen = response.json()
        self.assertEqual((seen["method"], seen["uri"]), ("GET", "/headers?x=1"))

    @defer.inlineCallbacks
    def test_gatewaykit_reactor(self) -> support.Steps:
        """twistd gatewaykit runs on gatewaykit.reactor.GatewayReactor when no --reactor is given."""
        gateway, response = yield self.get_headers()
        self.assertEqual(response.status, 200)
        self.assertIn("reactor class: gatewaykit.reactor.GatewayReactor", gateway.output)

    @defer.inlineCallbacks
    def test_forwarded_headers(self) -> support.Steps:
        """The upstream sees X-Forwarded-For/Proto/Host/Port and Via: 1.1 <node>."""
        gateway, response = yield self.get_headers()
        port = str(gateway.port())
        seen = _seen(response)
        self.assertEqual(
            {
                name: seen.get(name)
                for name in (
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "x-forwarded-port",
                    "via",
                )
            },
            {
                "x-forwarded-for": ["127.0.0.1"],
                "x-forwarded-proto": ["http"],
                "x-forwarded-host": [f"127.0.0.1:{port}"],
                "x-forwarded-port": [port],
                "via": [f"1.1 {NODE}"],
            },
        )

    @defer.inlineCallbacks
    def test_request_id_kept(self) -> support.Steps:
        """A client's sane X-Request-ID goes upstream and comes back on the response."""
        _, response = yield self.get_headers("-H", "X-Request-ID: it-request-1")
        self.assertEqual(_seen(response)["x-request-id"], ["it-request-1"])
        self.assertEqual(response.headers("X-Request-ID"), ["it-request-1"])

    @defer.inlineCallbacks
    def test_request_id_generated(self) -> support.Steps:
        """Without X-Request-ID the gateway makes one, the same upstream and downstream."""
        _, response = yield self.get_headers()
        upstream_ids = _seen(response)["x-request-id"]
        self.assertEqual(len(upstream_ids), 1)
        self.assertRegex(upstream_ids[0], r"^[\x21-\x7e]{1,200}$")
        self.assertEqual(response.headers("X-Request-ID"), upstream_ids)

    @defer.inlineCallbacks
    def test_traceparent_passed(self) -> support.Steps:
        """A valid traceparent reaches the upstream unchanged."""
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        _, response = yield self.get_headers("-H", f"traceparent: {traceparent}")
        self.assertEqual(_seen(response)["traceparent"], [traceparent])

    @defer.inlineCallbacks
    def test_traceparent_started(self) -> support.Steps:
        """Without traceparent the upstream gets a new valid one."""
        _, response = yield self.get_headers()
        traceparents = _seen(response)["traceparent"]
        self.assertEqual(len(traceparents), 1)
        self.assertRegex(traceparents[0], _TRACEPARENT)

    @defer.inlineCallbacks
    def test_response_via(self) -> support.Steps:
        """The response carries Via: 1.1 <node>."""
        _, response = yield self.get_headers()
        self.assertEqual(response.headers("Via"), [f"1.1 {NODE}"])

    @defer.inlineCallbacks
    def test_hop_by_hop_removed(self) -> support.Steps:
        """Connection, Keep-Alive and fields named in Connection do not go upstream."""
        _, response = yield self.get_headers(
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "X-Hop: secret",
            "-H",
            "X-End: kept",
        )
        seen = _seen(response)
        self.assertEqual(
            ({"connection", "keep-alive", "x-hop"} & set(seen), seen.get("x-end")),
            (set(), ["kept"]),
        )


class RequestBodyTests(support.GatewayTestCase):
    """Request bodies stream up to the upstream intact."""

    @defer.inlineCallbacks
    def echo(self, size: int, *options: str) -> support.Steps:
        """POST C{size} random bytes to /echo; the upload's and the answer's checksums."""
        gateway, _ = yield self.start_proxy(limits={"max_body_bytes": "64MiB"})
        path = support.random_file(self, size)
        response = yield support.curl(
            self, gateway.url("/echo"), "--data-binary", f"@{path}", *options
        )
        self.assertEqual((response.status, response.size_download), (200, size))
        return support.sha256_of(path), support.sha256_of(response.body_path)

    @defer.inlineCallbacks
    def test_large_body(self) -> support.Steps:
        """A 50 MiB body with Content-Length comes back from the upstream identical."""
        sent, received = yield self.echo(50 * MiB)
        self.assertEqual(received, sent)

    @defer.inlineCallbacks
    def test_chunked_body(self) -> support.Steps:
        """A chunked 8 MiB upload comes back from the upstream identical."""
        sent, received = yield self.echo(8 * MiB, "-H", "Transfer-Encoding: chunked")
        self.assertEqual(received, sent)


class ResponseStreamingTests(support.GatewayTestCase):
    """Responses stream through the gateway without piling up in it."""

    @defer.inlineCallbacks
    def test_download_memory(self) -> support.Steps:
        """A 1 GiB download grows the gateway's RSS by less than 50 MiB."""
        gateway, _ = yield self.start_proxy()
        # Warm up first, so lazy imports and the first upstream connection are
        # not counted as growth.
        yield support.curl(self, gateway.url("/headers"))
        before = gateway.rss_bytes()
        sampler = support.RssSampler(gateway, interval=0.1)
        sampler.start(self)
        response = yield support.curl(
            self, gateway.url(f"/bytes?n={GiB}"), output="/dev/null", max_time=100
        )
        sampler.stop()
        growth = max(sampler.samples) - before
        report = (
            f"1 GiB download: RSS before {before / MiB:.1f} MiB, max "
            f"{max(sampler.samples) / MiB:.1f} MiB, growth {growth / MiB:.1f} MiB "
            f"({len(sampler.samples)} samples)"
        )
        log.msg(report)
        self.assertEqual((response.status, response.size_download), (200, GiB))
        self.assertLess(growth, 50 * MiB, report)

    @defer.inlineCallbacks
    def test_slow_reader_pauses_upstream(self) -> support.Steps:
        """A client that stops reading pauses the upstream's producer; all bytes arrive later."""
        gateway, upstream = yield self.start_proxy()
        size = 256 * MiB
        client = yield support.connect_raw(self, gateway.port())
        client.send(
            b"GET /bytes?n=%d HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % size
        )
        client.pause_reading()
        streams = yield support.wait_for(lambda: upstream.streams, what="the upstream to stream")
        stream = streams[0]
        yield support.sleep(2.0)
        written, paused = stream.written, stream.paused
        log.msg(
            f"slow reader: upstream wrote {written / MiB:.1f} MiB of {size / MiB:.0f} MiB "
            f"while the client was paused (producer paused: {paused}, "
            f"{stream.pauses} pauses)"
        )
        self.assertTrue(paused, "the upstream's producer is not paused")
        self.assertLess(written, 64 * MiB)

        client.resume_reading()
        yield support.wait_for(lambda: client.lost, timeout=60, what="the whole response")
        self.assertEqual(
            (client.response().status, client.received - client.head_length()), (200, size)
        )


class ConnectionReuseTests(support.GatewayTestCase):
    """Upstream connections are kept alive across client connections."""

    @defer.inlineCallbacks
    def test_new_client_connections_share_upstream(self) -> support.Steps:
        """200 requests, each on its own client connection, use at most 2 upstream connections."""
        gateway, upstream = yield self.start_proxy()
        args = ["-H", "Connection: close", "-w", "%{http_code} %{num_connects}\n"]
        for number in range(200):
            args += ["-o", "/dev/null", gateway.url(f"/headers?n={number}")]
        out, err, code = yield support.run_curl(self, *args)
        log.msg(
            f"200 requests on new client connections: upstream accepted "
            f"{upstream.connections_accepted} connections, {upstream.requests} requests"
        )
        # "200 1": status 200 on one new client connection, for every request.
        self.assertEqual((code, out.decode().splitlines()), (0, ["200 1"] * 200), err)
        self.assertEqual(upstream.requests, 200)
        self.assertLessEqual(upstream.connections_accepted, 2)

    @defer.inlineCallbacks
    def upstream_head_length(self, upstream: support.UpstreamServer, size: int) -> support.Steps:
        """The length of the upstream's own response head for C{GET /bytes?n=size}."""
        client = yield support.connect_raw(self, upstream.port)
        client.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n" % size)
        yield client.when_closed()
        return client.head_length()

    @defer.inlineCallbacks
    def test_reuse_after_backpressure(self) -> support.Steps:
        """A kept upstream connection answers again after a response that met backpressure."""
        # Regression test: the connection used to go back to the pool still
        # paused by the client's backpressure, so the next request on it was
        # never read and got a 504.
        gateway, upstream = yield self.start_proxy(timeouts={"response": "2s"})
        head = yield self.upstream_head_length(upstream, 65000)
        # The gateway reads such a response in one piece (head and body fit
        # in one 64 KiB read) but forwards more (its head adds Via and
        # X-Request-ID), so the client's transport buffer is over 64 KiB when
        # the response ends and pauses the upstream connection just then.
        sizes = range(64 * KiB - head - 96, 64 * KiB - head + 1, 8)
        args = ["-w", "%{http_code} %{size_download}\n"]
        for size in sizes:
            args += ["-o", "/dev/null", gateway.url(f"/bytes?n={size}")]
        out, err, code = yield support.run_curl(self, *args)
        self.assertEqual(out.decode().splitlines(), [f"200 {size}" for size in sizes], err.decode())


class UpstreamFailureTests(support.GatewayTestCase):
    """Problems on the upstream's side become problem+json errors."""

    def assert_problem(self, response: support.Response, status: int, code: str) -> None:
        """C{response} is an RFC 9457 problem with C{status} and C{code}."""
        body = response.json()
        self.assertEqual(
            (response.status, response.header("Content-Type"), body["type"], body["status"]),
            (status, "application/problem+json", f"urn:gatewaykit:error:{code}", status),
        )

    @defer.inlineCallbacks
    def test_upstream_down(self) -> support.Steps:
        """An upstream that stopped listening gives 502 bad_gateway."""
        gateway, upstream = yield self.start_proxy()
        yield upstream.stop()
        response = yield support.curl(self, gateway.url("/headers"))
        self.assert_problem(response, 502, "bad_gateway")

    @defer.inlineCallbacks
    def test_upstream_silent(self) -> support.Steps:
        """An upstream that never answers gives 504 upstream_timeout after timeouts.response."""
        gateway, upstream = yield self.start_proxy(timeouts={"response": "1s"})
        response = yield support.curl(self, gateway.url("/hang"))
        self.assert_problem(response, 504, "upstream_timeout")
        self.assertEqual(upstream.requests, 1)
