"""
Tests for L{gatewaykit.listeners.http}: the downstream HTTP/1.1 codec.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.model import Limits, RedirectAction, RespondAction, UpstreamTimeouts
from gatewaykit.listeners.http import LINGER_SECONDS
from gatewaykit.testing import (
    GatewayHarness,
    make_config,
    parse_response,
    parse_responses,
    route,
    upstream,
)

OK = RespondAction(200, "ok")


def harness(limits: Limits = Limits(), **route_kwargs) -> GatewayHarness:
    routes = [
        route("root", 0, path="/", respond=OK),
        route("ok", 3, path_prefix="/a", respond=OK),
        route("posts", 1, path="/only-post", methods=("POST",), respond=OK),
        route("moved", 2, path="/moved", redirect=RedirectAction("https://{host}{uri}", 308)),
    ]
    return GatewayHarness(make_config(routes=routes, limits=limits))


def get(path: bytes = b"/", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"GET " + path + b" HTTP/" + version + b"\r\nHost: example.com\r\n" + extra + b"\r\n"


class RequestParsingTests(SynchronousTestCase):
    """Request heads the codec accepts and refuses."""

    def test_simple_get(self):
        """A well-formed GET is routed and answered."""
        response = harness().request(get())
        self.assertEqual((response.status, response.body), (200, b"ok"))

    def test_malformed_request_line(self):
        """A request line that is not HTTP gets 400 with a problem body and closes."""
        protocol, transport = harness().connect()
        protocol.dataReceived(b"GARBAGE\r\n\r\n")
        response = parse_response(transport.value())
        self.assertEqual(response.status, 400)
        self.assertEqual(response.headers.get("content-type"), b"application/problem+json")
        problem = json.loads(response.body)
        self.assertEqual(problem["type"], "urn:gatewaykit:error:bad_request")
        self.assertEqual(problem["status"], 400)
        self.assertEqual(response.headers.get("connection"), b"close")
        self.assertTrue(transport.write_closed)

    def test_missing_host(self):
        """An HTTP/1.1 request without Host is refused."""
        response = harness().request(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(response.status, 400)

    def test_http10_without_host(self):
        """HTTP/1.0 may omit Host."""
        response = harness().request(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(response.status, 200)

    def test_two_hosts(self):
        """Two Host fields are refused (RFC 9112 3.2)."""
        response = harness().request(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertEqual(response.status, 400)

    def test_invalid_host(self):
        """A Host value with characters no host name has is refused."""
        response = harness().request(b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n")
        self.assertEqual(response.status, 400)

    def test_path_escaping_root(self):
        """A path climbing above the root is refused."""
        response = harness().request(get(b"/a/../../etc/passwd"))
        self.assertEqual(response.status, 400)

    def test_absolute_form_replaces_host(self):
        """An absolute-form target's authority is the request's host."""
        response = harness().request(
            b"GET http://other.example/moved?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual(response.status, 308)
        self.assertEqual(response.headers.get("location"), b"https://other.example/moved?x=1")

    def test_unsupported_expectation(self):
        """An Expect other than 100-continue gets 417."""
        response = harness().request(get(extra=b"Expect: teapot\r\n"))
        self.assertEqual(response.status, 417)

    def test_sane_request_id_kept(self):
        """A client's sane X-Request-ID is kept."""
        response = harness().request(get(extra=b"X-Request-ID: abc-123\r\n"))
        self.assertEqual(response.headers.get("x-request-id"), b"abc-123")

    def test_insane_request_id_replaced(self):
        """An X-Request-ID over 200 characters is replaced by a new one."""
        response = harness().request(get(extra=b"X-Request-ID: " + b"a" * 201 + b"\r\n"))
        self.assertEqual(len(response.headers.get("x-request-id")), 32)


class ErrorAnswerTests(SynchronousTestCase):
    """The gateway's own error answers."""

    def test_method_not_allowed(self):
        """A route matching all but the method answers 405 with Allow."""
        response = harness().request(get(b"/only-post"))
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers.get("allow"), b"POST")

    def test_html_for_browsers(self):
        """A client asking for text/html first gets an HTML error page."""
        response = harness().request(
            b"GET / HTTP/1.1\r\n\r\n".replace(b"\r\n\r\n", b"\r\nAccept: text/html,*/*\r\n\r\n")
        )
        self.assertEqual(response.headers.get("content-type"), b"text/html; charset=utf-8")
        self.assertIn(b"400 Bad Request", response.body)

    def test_request_id_in_problem(self):
        """The problem body names the request id the response carries."""
        response = harness().request(b"GET / HTTP/1.1\r\n\r\n")
        problem = json.loads(response.body)
        self.assertEqual(problem["request_id"].encode(), response.headers.get("x-request-id"))


class LimitTests(SynchronousTestCase):
    """gateway.limits."""

    def test_uri_too_long(self):
        """A request target over max_uri_bytes gets 414."""
        response = harness(Limits(max_uri_bytes=100)).request(get(b"/" + b"a" * 200))
        self.assertEqual(response.status, 414)

    def test_headers_too_large(self):
        """A head over max_header_bytes gets 431."""
        big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 100) for i in range(20))
        response = harness(Limits(max_header_bytes=1024)).request(get(extra=big))
        self.assertEqual(response.status, 431)

    def test_unfinished_huge_field(self):
        """A field that never ends is cut off once it passes the limit."""
        protocol, transport = harness(Limits(max_header_bytes=1024)).connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Huge: ")
        for _ in range(4):
            protocol.dataReceived(b"a" * 32768)
        self.assertEqual(parse_response(transport.value()).status, 431)

    def test_body_too_large_by_length(self):
        """A Content-Length over max_body_bytes gets 413 before any body is read."""
        protocol, transport = harness(Limits(max_body_bytes=10)).connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
        response = parse_response(transport.value())
        self.assertEqual(response.status, 413)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:body_too_large")
        self.assertTrue(transport.write_closed)


class TimeoutTests(SynchronousTestCase):
    """header_timeout, idle_timeout and lingering close."""

    def test_slow_head(self):
        """A head not complete within header_timeout gets 408."""
        gateway = harness(Limits(header_timeout=2.0))
        protocol, transport = gateway.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHo")
        gateway.reactor.advance(1.9)
        self.assertEqual(transport.value(), b"")
        gateway.reactor.advance(0.2)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 408)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:request_timeout")

    def test_idle_keep_alive_closed(self):
        """A kept-alive connection with no new request closes after idle_timeout."""
        gateway = harness(Limits(idle_timeout=5.0))
        protocol, transport = gateway.connect()
        protocol.dataReceived(get())
        gateway.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        gateway.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_silent_connection_closed(self):
        """A connection that never sends anything closes after idle_timeout."""
        gateway = harness(Limits(idle_timeout=3.0))
        protocol, transport = gateway.connect()
        gateway.reactor.advance(3.1)
        self.assertTrue(transport.disconnecting)

    def test_lingering_close_ends(self):
        """After the last answer the connection is dropped once lingering ends."""
        gateway = harness()
        protocol, transport = gateway.connect()
        protocol.dataReceived(b"BAD\r\n\r\n")
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        gateway.reactor.advance(LINGER_SECONDS + 0.1)
        self.assertTrue(transport.disconnecting)


class ConnectionReuseTests(SynchronousTestCase):
    """Keep-alive, pipelining and closing."""

    def test_two_requests_one_connection(self):
        """Two requests in turn on one connection are both answered."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get())
        protocol.dataReceived(get())
        self.assertEqual([r.status for r in parse_responses(transport.value())], [200, 200])
        self.assertFalse(transport.write_closed)

    def test_pipelined_in_order(self):
        """Pipelined requests are answered in the order sent."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get(b"/a") + get(b"/only-post") + get(b"/moved"))
        statuses = [r.status for r in parse_responses(transport.value())]
        self.assertEqual(statuses, [200, 405, 308])

    def test_connection_close(self):
        """Connection: close is honoured and echoed."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get(extra=b"Connection: close\r\n"))
        response = parse_response(transport.value())
        self.assertEqual(response.headers.get("connection"), b"close")
        self.assertTrue(transport.write_closed)

    def test_http10_closes(self):
        """An HTTP/1.0 request without keep-alive closes after its answer."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get(version=b"1.0"))
        self.assertTrue(transport.write_closed)

    def test_http10_keep_alive(self):
        """An HTTP/1.0 request asking for keep-alive gets it."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
        response = parse_response(transport.value())
        self.assertEqual(response.headers.get("connection"), b"keep-alive")
        self.assertFalse(transport.write_closed)

    def test_nothing_read_after_close(self):
        """A request pipelined after Connection: close is not answered."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get(extra=b"Connection: close\r\n") + get())
        self.assertEqual(len(parse_responses(transport.value())), 1)

    def test_small_unread_body_discarded(self):
        """A short body the route did not read is discarded and the connection kept."""
        protocol, transport = harness().connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        protocol.dataReceived(b"hello" + get())
        self.assertEqual([r.status for r in parse_responses(transport.value())], [200, 200])
        self.assertFalse(transport.write_closed)

    def test_large_unread_body_closes(self):
        """A long body the route did not read makes the connection close."""
        protocol, transport = harness().connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertTrue(transport.write_closed)

    def test_drain_idle_closes(self):
        """Draining closes a connection with nothing in flight at once."""
        protocol, transport = harness().connect()
        protocol.dataReceived(get())
        protocol.drain()
        self.assertTrue(transport.write_closed)


def post(path: bytes, length: int, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n" % (path, length)
    return head + extra + b"\r\n" + body


class BodyTimeoutTests(SynchronousTestCase):
    """body_timeout: a request body must keep coming (nginx's client_body_timeout)."""

    def proxied(self, request: bytes, limits: Limits = Limits(body_timeout=2.0)):
        """A proxy gateway (connect timeout 10 s) that got C{request}; the pieces."""
        gateway = GatewayHarness(
            make_config(
                routes=[route("app", path_prefix="/", upstream="app")],
                upstreams=[
                    upstream("app", "10.0.0.1:8000", timeouts=UpstreamTimeouts(connect=10.0))
                ],
                limits=limits,
            )
        )
        client, client_transport = gateway.connect()
        client.dataReceived(request)
        return gateway, client, client_transport

    def test_stalled_proxied_body(self):
        """A proxied body that stops gets 408, and the target is not blamed."""
        gateway, _, client_transport = self.proxied(post(b"/x", 100, b"a" * 10))
        _, upstream_transport = gateway.accept_upstream()
        gateway.reactor.advance(1.9)
        self.assertEqual(client_transport.value(), b"")
        gateway.reactor.advance(0.2)
        response = parse_response(client_transport.value())
        self.assertEqual(response.status, 408)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:request_timeout")
        self.assertEqual(response.headers.get("connection"), b"close")
        self.assertTrue(upstream_transport.disconnecting)
        self.assertEqual(gateway.gateway.upstreams["app"].targets[0].failures, 0)

    def test_each_piece_postpones(self):
        """Each piece of body moves the deadline: a slow but steady body is not cut."""
        gateway, client, client_transport = self.proxied(post(b"/x", 10, b""))
        _, upstream_transport = gateway.accept_upstream()
        for _ in range(10):
            gateway.reactor.advance(1.5)
            client.dataReceived(b"a")
        self.assertEqual(client_transport.value(), b"")
        self.assertTrue(upstream_transport.value().endswith(b"\r\n\r\n" + b"a" * 10))

    def test_not_while_upstream_holds_back(self):
        """While the upstream is slow to take the body (reading paused), the client is not cut."""
        gateway, _, client_transport = self.proxied(post(b"/x", 100, b"a" * 10))
        _, upstream_transport = gateway.accept_upstream()
        upstream_transport.producer.pauseProducing()
        gateway.reactor.advance(10)
        self.assertEqual(client_transport.value(), b"")
        upstream_transport.producer.resumeProducing()
        gateway.reactor.advance(2.1)
        self.assertEqual(parse_response(client_transport.value()).status, 408)

    def test_expect_continue_waits_for_the_continue(self):
        """With Expect: 100-continue, the deadline starts when 100 Continue is sent."""
        request = post(b"/x", 100, b"", b"Expect: 100-continue\r\n")
        gateway, _, client_transport = self.proxied(request)
        gateway.reactor.advance(5)
        self.assertEqual(client_transport.value(), b"")
        gateway.accept_upstream()
        self.assertEqual(client_transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        gateway.reactor.advance(2.1)
        response = parse_responses(client_transport.value())[-1]
        self.assertEqual(response.status, 408)

    def test_stalled_body_after_local_answer(self):
        """A body still due after the gateway answered itself: the connection closes at body_timeout."""
        gateway = harness(Limits(body_timeout=2.0, idle_timeout=60.0))
        protocol, transport = gateway.connect()
        protocol.dataReceived(post(b"/a", 100, b"a" * 10))
        self.assertEqual(parse_response(transport.value()).status, 200)
        gateway.reactor.advance(1.9)
        self.assertFalse(transport.write_closed or transport.disconnecting)
        gateway.reactor.advance(0.2)
        self.assertTrue(transport.write_closed or transport.disconnecting)

    def test_complete_body_then_idle(self):
        """Once the body is complete, the idle timeout applies, not body_timeout."""
        gateway = harness(Limits(body_timeout=2.0, idle_timeout=5.0))
        protocol, transport = gateway.connect()
        protocol.dataReceived(post(b"/a", 10, b"a" * 10))
        self.assertEqual(parse_response(transport.value()).status, 200)
        gateway.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        gateway.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)
