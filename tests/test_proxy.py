"""
Tests for L{gatewaykit.upstream.proxy}, L{gatewaykit.upstream.connection}
and the pool, driving both sides of the gateway by hand.
"""

import json

from twisted.internet.error import ConnectionLost, ConnectionRefusedError, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.model import Limits, UpstreamTimeouts
from gatewaykit.testing import (
    GatewayHarness,
    make_config,
    parse_response,
    parse_responses,
    route,
    upstream,
)


def proxy_harness(limits: Limits = Limits(), **upstream_kwargs) -> GatewayHarness:
    config = make_config(
        routes=[route("app", path_prefix="/", upstream="app")],
        upstreams=[upstream("app", "10.0.0.1:8000", **upstream_kwargs)],
        limits=limits,
    )
    return GatewayHarness(config)


GET = b"GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"


class Exchange:
    """A client connection and the upstream connection its request opened."""

    def __init__(self, gateway: GatewayHarness, request: bytes = GET) -> None:
        self.gateway = gateway
        self.client, self.client_transport = gateway.connect()
        self.client.dataReceived(request)
        self.upstream, self.upstream_transport = gateway.accept_upstream()

    def sent_upstream(self) -> bytes:
        return self.upstream_transport.value()

    def respond(self, data: bytes) -> None:
        self.upstream.dataReceived(data)

    def received(self) -> bytes:
        return self.client_transport.value()


class RequestForwardingTests(SynchronousTestCase):
    """What is sent upstream."""

    def test_connects_to_target(self):
        """The request opens a connection to the upstream's target."""
        gateway = proxy_harness()
        Exchange(gateway)
        host, port = gateway.reactor.tcpClients[0][:2]
        self.assertEqual((host, port), ("10.0.0.1", 8000))

    def test_request_line_and_fields(self):
        """The upstream gets the method, target and proxy fields."""
        exchange = Exchange(proxy_harness())
        head = exchange.sent_upstream()
        self.assertTrue(head.startswith(b"GET /x?y=1 HTTP/1.1\r\n"))
        self.assertIn(b"Host: example.com\r\n", head)
        self.assertIn(b"X-Forwarded-For: 127.0.0.1\r\n", head)
        self.assertIn(b"Via: 1.1 test-node\r\n", head)

    def test_http10_without_host_gets_one(self):
        """An HTTP/1.0 request without Host goes upstream (as HTTP/1.1) with the target's."""
        exchange = Exchange(proxy_harness(), b"GET /x HTTP/1.0\r\n\r\n")
        head = exchange.sent_upstream()
        self.assertTrue(head.startswith(b"GET /x HTTP/1.1\r\n"))
        self.assertIn(b"Host: 10.0.0.1:8000\r\n", head)
        self.assertNotIn(b"X-Forwarded-Host", head)

    def test_http10_without_host_gets_upstream_host(self):
        """With the upstream's host set, that one is added."""
        exchange = Exchange(proxy_harness(host="api.internal"), b"GET /x HTTP/1.0\r\n\r\n")
        self.assertIn(b"Host: api.internal\r\n", exchange.sent_upstream())

    def test_hop_by_hop_removed(self):
        """Connection and the fields it names are not forwarded."""
        exchange = Exchange(
            proxy_harness(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Kept: 2\r\n\r\n",
        )
        head = exchange.sent_upstream().lower()
        for name in (b"connection:", b"x-secret:", b"keep-alive:", b"te:"):
            self.assertNotIn(b"\r\n" + name, head)
        self.assertIn(b"x-kept: 2", head)

    def test_repeated_fields_kept(self):
        """Repeated fields go upstream repeated, in order."""
        exchange = Exchange(
            proxy_harness(), b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        )
        self.assertIn(b"X-A: 1\r\nX-A: 2\r\n", exchange.sent_upstream())

    def test_content_length_body_streamed(self):
        """A Content-Length body is passed on as it arrives."""
        gateway = proxy_harness()
        exchange = Exchange(gateway, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        self.assertTrue(exchange.sent_upstream().endswith(b"Content-Length: 10\r\n\r\nhello"))
        exchange.client.dataReceived(b"world")
        self.assertTrue(exchange.sent_upstream().endswith(b"helloworld"))

    def test_chunked_body_rechunked(self):
        """A chunked body goes upstream chunked."""
        exchange = Exchange(
            proxy_harness(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        sent = exchange.sent_upstream()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))

    def test_body_sent_before_connect_is_buffered(self):
        """Body bytes that arrive before the upstream connects are sent once it does."""
        gateway = proxy_harness()
        client, _ = gateway.connect()
        client.dataReceived(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        _, upstream_transport = gateway.accept_upstream()
        self.assertTrue(upstream_transport.value().endswith(b"\r\n\r\nabc"))

    def test_continue_after_connect(self):
        """100 Continue is sent once the upstream connection is up, and Expect is not forwarded."""
        gateway = proxy_harness()
        client, client_transport = gateway.connect()
        client.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertEqual(client_transport.value(), b"")
        _, upstream_transport = gateway.accept_upstream()
        self.assertEqual(client_transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertNotIn(b"expect", upstream_transport.value().lower())

    def test_trusted_proxy_fields_kept(self):
        """X-Forwarded-Proto from a trusted proxy is kept; XFF is appended to."""
        import ipaddress

        config = make_config(
            routes=[route("app", path_prefix="/", upstream="app")],
            upstreams=[upstream("app", "10.0.0.1:8000")],
            trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        exchange = Exchange(
            GatewayHarness(config),
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        )
        head = exchange.sent_upstream()
        self.assertIn(b"X-Forwarded-Proto: https\r\n", head)
        self.assertNotIn(b"X-Forwarded-Proto: http\r\n", head)
        self.assertIn(b"X-Forwarded-For: 1.2.3.4, 127.0.0.1\r\n", head)

    def test_untrusted_forwarded_fields_replaced(self):
        """X-Forwarded-Proto from an untrusted client is replaced."""
        exchange = Exchange(
            proxy_harness(),
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n",
        )
        head = exchange.sent_upstream()
        self.assertIn(b"X-Forwarded-Proto: http\r\n", head)
        self.assertNotIn(b"https", head)


class ResponseRelayTests(SynchronousTestCase):
    """What the client gets back."""

    def test_content_length_response(self):
        """A Content-Length response is relayed as is, with Via and X-Request-ID."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 201 Made\r\nContent-Length: 2\r\nX-App: 1\r\n\r\nhi")
        response = parse_response(exchange.received())
        self.assertEqual((response.status, response.reason, response.body), (201, b"Made", b"hi"))
        self.assertEqual(response.headers.get("x-app"), b"1")
        self.assertEqual(response.headers.get("via"), b"1.1 test-node")
        self.assertIsNotNone(response.headers.get("x-request-id"))

    def test_chunked_response(self):
        """A chunked response reaches an HTTP/1.1 client chunked."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        exchange.respond(b"2\r\nde\r\n0\r\n\r\n")
        response = parse_response(exchange.received())
        self.assertEqual(response.headers.get("transfer-encoding"), b"chunked")
        self.assertEqual(response.body, b"abcde")

    def test_close_delimited_response(self):
        """A response ended by the upstream closing is sent chunked and completes."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        exchange.upstream.connectionLost(Failure(ConnectionLost()))
        # a reset is not an end: the client's chunked response is cut short
        self.assertTrue(exchange.client_transport.write_closed)
        self.assertFalse(exchange.received().endswith(b"0\r\n\r\n"))
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        from twisted.internet.error import ConnectionDone

        exchange.upstream.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(parse_response(exchange.received()).body, b"all of it")

    def test_http10_client_gets_close_delimited(self):
        """An HTTP/1.0 client gets an unknown-length body close-delimited."""
        gateway = proxy_harness()
        exchange = Exchange(gateway, b"GET / HTTP/1.0\r\n\r\n")
        exchange.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        data = exchange.received()
        self.assertNotIn(b"chunked", data)
        self.assertTrue(data.endswith(b"\r\n\r\nabc"))
        self.assertTrue(exchange.client_transport.write_closed)

    def test_head_response(self):
        """A HEAD response keeps Content-Length, has no body, and frees the connection."""
        gateway = proxy_harness()
        exchange = Exchange(gateway, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        response = parse_response(exchange.received(), head_request=True)
        self.assertEqual(response.headers.get("content-length"), b"1234")
        exchange.client.dataReceived(GET)
        self.assertEqual(len(gateway.reactor.tcpClients), 1)

    def test_not_modified_has_no_body(self):
        """A 304 is relayed without a body and the next request reuses the connection."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
        exchange.client.dataReceived(GET)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
        statuses = [r.status for r in parse_responses(exchange.received())]
        self.assertEqual(statuses, [304, 200])

    def test_interim_response_dropped(self):
        """An upstream 100 Continue is not relayed; the final response is."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk")
        response = parse_response(exchange.received())
        self.assertEqual((response.status, response.body), (200, b"k"))

    def test_hop_by_hop_response_fields_removed(self):
        """The upstream's Connection and Keep-Alive fields are not relayed."""
        exchange = Exchange(proxy_harness())
        exchange.respond(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        response = parse_response(exchange.received())
        self.assertIsNone(response.headers.get("keep-alive"))
        self.assertIsNone(response.headers.get("connection"))


class ConnectionPoolTests(SynchronousTestCase):
    """Reuse of upstream connections."""

    def test_reused_for_next_request(self):
        """A second request after a complete response reuses the connection."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client, client_transport = gateway.connect()
        client.dataReceived(GET)
        self.assertEqual(len(gateway.reactor.tcpClients), 1)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        self.assertEqual(parse_response(client_transport.value()).body, b"b")

    def test_not_reused_after_connection_close(self):
        """A response with Connection: close makes the next request connect anew."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        gateway.connect()[0].dataReceived(GET)
        self.assertEqual(len(gateway.reactor.tcpClients), 2)

    def test_idle_connection_expires(self):
        """An idle connection is closed after pool.idle_timeout."""
        from gatewaykit.config.model import PoolConfig

        gateway = proxy_harness(pool=PoolConfig(max_idle_per_target=4, idle_timeout=10.0))
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(exchange.upstream_transport.disconnecting)
        gateway.reactor.advance(10.5)
        self.assertTrue(exchange.upstream_transport.disconnecting)

    def test_max_idle_zero_closes(self):
        """With max_idle_per_target 0 no connection is kept."""
        from gatewaykit.config.model import PoolConfig

        gateway = proxy_harness(pool=PoolConfig(max_idle_per_target=0))
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(exchange.upstream_transport.disconnecting)

    def test_stale_connection_retried(self):
        """A reused connection that turns out closed is retried once on a new one."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client, client_transport = gateway.connect()
        client.dataReceived(GET)
        exchange.upstream.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(gateway.reactor.tcpClients), 2)
        upstream, _ = gateway.accept_upstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(parse_response(client_transport.value()).body, b"ok")

    def test_unsolicited_bytes_spoil_connection(self):
        """Bytes from the upstream on an idle connection make it unusable."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        exchange.respond(b"junk")
        self.assertTrue(exchange.upstream_transport.disconnecting)


class FailureTests(SynchronousTestCase):
    """Upstream failures become the errors of SPEC section 6."""

    def assertProblem(self, data: bytes, status: int, code: str) -> None:
        response = parse_response(data)
        self.assertEqual(response.status, status)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:" + code)

    def test_connection_refused(self):
        """A refused connection is a 502."""
        gateway = proxy_harness()
        client, transport = gateway.connect()
        client.dataReceived(GET)
        gateway.refuse_upstream(ConnectionRefusedError())
        # By default a failed connect is tried once more (nothing was sent).
        self.assertEqual(transport.value(), b"")
        gateway.refuse_upstream(ConnectionRefusedError())
        self.assertProblem(transport.value(), 502, "bad_gateway")

    def test_connect_timeout(self):
        """A connection attempt that times out is a 504."""
        gateway = proxy_harness()
        client, transport = gateway.connect()
        client.dataReceived(GET)
        self.assertEqual(gateway.reactor.tcpClients[0][3], 2.0)
        gateway.refuse_upstream(TimeoutError())
        gateway.refuse_upstream(TimeoutError())
        self.assertProblem(transport.value(), 504, "upstream_timeout")

    def test_response_timeout(self):
        """No response head within timeouts.response is a 504 and drops the connection."""
        gateway = proxy_harness(timeouts=UpstreamTimeouts(response=3.0))
        exchange = Exchange(gateway)
        gateway.reactor.advance(2.9)
        self.assertEqual(exchange.received(), b"")
        gateway.reactor.advance(0.2)
        self.assertProblem(exchange.received(), 504, "upstream_timeout")
        self.assertTrue(exchange.upstream_transport.disconnecting)

    def test_idle_timeout_mid_body(self):
        """A response body that stalls past timeouts.idle cuts the client's response."""
        gateway = proxy_harness(timeouts=UpstreamTimeouts(idle=5.0))
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        gateway.reactor.advance(4.0)
        exchange.respond(b"more")
        gateway.reactor.advance(4.0)
        self.assertFalse(exchange.client_transport.write_closed)
        gateway.reactor.advance(1.5)
        self.assertTrue(exchange.client_transport.write_closed)
        self.assertTrue(exchange.received().endswith(b"partmore"))

    def test_invalid_response(self):
        """An upstream answer that is not HTTP is a 502."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"NOT HTTP AT ALL\r\n\r\n")
        self.assertProblem(exchange.received(), 502, "bad_gateway")

    def test_conflicting_content_length(self):
        """An upstream response with two different Content-Lengths is a 502."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        self.assertProblem(exchange.received(), 502, "bad_gateway")

    def test_response_head_too_large(self):
        """An upstream response head over the limit is a 502."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
        self.assertProblem(exchange.received(), 502, "bad_gateway")

    def test_reset_mid_body_cuts_response(self):
        """An upstream reset after the head ends the client's response short."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        exchange.upstream.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(exchange.client_transport.write_closed)
        self.assertFalse(exchange.received().endswith(b"0\r\n\r\n"))

    def test_no_available_target(self):
        """With every target unavailable the answer is 503 no_healthy_upstream."""
        gateway = proxy_harness()
        for target in gateway.gateway.upstreams["app"].targets:
            target.healthy = False
        client, transport = gateway.connect()
        client.dataReceived(GET)
        self.assertProblem(transport.value(), 503, "no_healthy_upstream")

    def test_client_gone_drops_upstream(self):
        """A client that disconnects mid-response makes the gateway drop the upstream connection."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        exchange.client.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(exchange.upstream_transport.disconnecting)
        target = gateway.gateway.upstreams["app"].targets[0]
        self.assertEqual(target.in_flight, 0)

    def test_body_over_limit_while_streaming(self):
        """A chunked body passing max_body_bytes gets 413 and the upstream is dropped."""
        gateway = proxy_harness(limits=Limits(max_body_bytes=8))
        exchange = Exchange(
            gateway, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        exchange.client.dataReceived(b"5\r\nworld\r\n")
        self.assertProblem(exchange.received(), 413, "body_too_large")
        self.assertTrue(exchange.upstream_transport.disconnecting)

    def test_malformed_chunk_while_streaming(self):
        """A broken chunk size mid-body gets 400 and the upstream is dropped."""
        gateway = proxy_harness()
        exchange = Exchange(
            gateway, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        exchange.client.dataReceived(b"zz\r\n")
        self.assertProblem(exchange.received(), 400, "bad_request")
        self.assertTrue(exchange.upstream_transport.disconnecting)


class BackpressureTests(SynchronousTestCase):
    """A slow side pauses the fast one."""

    def test_slow_client_pauses_upstream(self):
        """When the client's transport is full, the upstream connection stops being read."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        producer = exchange.client_transport.producer
        self.assertIs(producer, exchange.upstream)
        producer.pauseProducing()
        self.assertEqual(exchange.upstream_transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(exchange.upstream_transport.producerState, "producing")

    def test_slow_upstream_pauses_client(self):
        """When the upstream's transport is full, the client's body stops being read."""
        exchange = Exchange(
            proxy_harness(), b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"
        )
        producer = exchange.upstream_transport.producer
        producer.pauseProducing()
        self.assertEqual(exchange.client_transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(exchange.client_transport.producerState, "producing")

    def test_response_ending_while_paused_resumes(self):
        """A response that ends while the client holds the upstream paused leaves it readable."""
        gateway = proxy_harness()
        exchange = Exchange(gateway)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npart")
        exchange.client_transport.producer.pauseProducing()
        exchange.respond(b"rest")
        self.assertEqual(exchange.upstream_transport.producerState, "producing")
        client, client_transport = gateway.connect()
        client.dataReceived(GET)
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
        self.assertEqual(parse_response(client_transport.value()).body, b"z")

    def test_producer_released_after_response(self):
        """After the response no producer stays registered on the client's transport."""
        exchange = Exchange(proxy_harness())
        exchange.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        self.assertIsNone(exchange.client_transport.producer)
