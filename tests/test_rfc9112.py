"""
RFC 9112 message parsing on the proxy path, both ways: each hostile or
malformed request is refused (or normalised where the RFC says so), never
forwarded, and closes the connection where the RFC requires; each malformed
or oversized upstream response becomes a 502, or cuts a response already
started so that it cannot look complete.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.testing import GatewayHarness, make_config, parse_response, route, upstream


def harness() -> GatewayHarness:
    config = make_config(
        routes=[route("app", path_prefix="/", upstream="app")],
        upstreams=[upstream("app", "10.0.0.1:8000")],
    )
    return GatewayHarness(config)


def head(*lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST / " + version + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


class RequestTests(SynchronousTestCase):
    """Requests that must not pass."""

    def refused(self, data: bytes, status: int = 400, closes: bool = True) -> bytes:
        """Send C{data}; it gets C{status}, nothing goes upstream; the answer."""
        gateway = harness()
        client, transport = gateway.connect()
        client.dataReceived(data)
        response = parse_response(transport.value())
        self.assertEqual(response.status, status, transport.value()[:200])
        self.assertEqual(gateway.reactor.tcpClients, [], "forwarded upstream")
        if closes:
            self.assertEqual(response.headers.get(b"connection"), b"close")
            self.assertTrue(transport.write_closed or transport.disconnecting)
        return transport.value()

    def forwarded(self, data: bytes) -> bytes:
        """Send C{data}; it goes upstream: the head sent."""
        gateway = harness()
        client, transport = gateway.connect()
        client.dataReceived(data)
        self.assertEqual(transport.value(), b"")
        _, upstream_transport = gateway.accept_upstream()
        return upstream_transport.value()

    def test_content_length_and_transfer_encoding(self):
        """Both framings at once is the classic smuggling request (9112 6.1)."""
        self.refused(head(b"Host: a", b"Content-Length: 5", b"Transfer-Encoding: chunked"))

    def test_two_content_lengths(self):
        """Two different Content-Lengths (9112 6.3 point 5)."""
        self.refused(head(b"Host: a", b"Content-Length: 5", b"Content-Length: 6") + b"hello!")

    def test_content_length_list(self):
        """A list value, even of equal numbers, is refused rather than guessed at."""
        self.refused(head(b"Host: a", b"Content-Length: 5, 5") + b"hello")

    def test_content_length_with_sign(self):
        """Content-Length is 1*DIGIT: no sign."""
        for value in (b"+5", b"-5"):
            self.refused(head(b"Host: a", b"Content-Length: " + value) + b"hello")

    def test_content_length_with_spaces_inside(self):
        """Spaces inside the number are not digits."""
        self.refused(head(b"Host: a", b"Content-Length: 1 2") + b"hello")

    def test_content_length_overflow(self):
        """A length beyond any integer the gateway keeps."""
        self.refused(head(b"Host: a", b"Content-Length: 99999999999999999999999999"))

    def test_transfer_encoding_not_chunked(self):
        """Transfer-Encoding whose final coding is not chunked: length unknowable (6.3 point 4)."""
        for value in (b"gzip", b"chunked, gzip", b"xchunked", b"identity"):
            self.refused(head(b"Host: a", b"Transfer-Encoding: " + value) + b"0\r\n\r\n")

    def test_transfer_encoding_unknown_coding(self):
        """A coding the gateway does not implement before chunked: 501 (6.1)."""
        self.refused(head(b"Host: a", b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", 501)

    def test_transfer_encoding_in_http10(self):
        """HTTP/1.0 has no Transfer-Encoding: faulty framing, closed (6.1)."""
        self.refused(
            head(b"Host: a", b"Transfer-Encoding: chunked", version=b"HTTP/1.0") + b"0\r\n\r\n"
        )

    def test_chunk_size_junk(self):
        """A chunk size with junk after the hex: 400, the upstream request abandoned."""
        self.bad_body(b"5x\r\nhello\r\n0\r\n\r\n")

    def test_chunk_size_overflow(self):
        """A chunk size beyond 64 bits."""
        self.bad_body(b"fffffffffffffffffffff\r\nhello\r\n")

    def test_chunk_extension_abuse(self):
        """Chunk extensions are bounded: 20 KB of them is refused."""
        self.bad_body(b"5;" + b"a=b;" * 5000 + b"\r\nhello\r\n0\r\n\r\n")

    def test_chunk_without_crlf(self):
        """Chunk data not followed by CRLF."""
        self.bad_body(b"3\r\nabcX\r\n0\r\n\r\n")

    def bad_body(self, body: bytes) -> None:
        """
        A chunked body broken after the head was forwarded: the client gets
        400 and the upstream connection is dropped, so the upstream never
        sees a complete request.
        """
        gateway = harness()
        client, transport = gateway.connect()
        client.dataReceived(head(b"Host: a", b"Transfer-Encoding: chunked"))
        _, upstream_transport = gateway.accept_upstream()
        client.dataReceived(body)
        self.assertEqual(parse_response(transport.value()).status, 400)
        self.assertTrue(upstream_transport.disconnecting)
        self.assertFalse(upstream_transport.value().endswith(b"0\r\n\r\n"))
        self.assertTrue(transport.write_closed or transport.disconnecting)

    def test_bare_lf(self):
        """Bare LF line endings are refused rather than guessed at."""
        self.refused(b"GET / HTTP/1.1\nHost: a\n\n")

    def test_bare_cr(self):
        """A bare CR is never a line ending (2.2)."""
        self.refused(b"GET / HTTP/1.1\rHost: a\r\r\n")

    def test_obs_fold(self):
        """A folded field value (5.2): refused."""
        self.refused(head(b"Host: a", b"X-A: b", b" c"))

    def test_whitespace_before_colon(self):
        """Whitespace between name and colon: MUST be refused with 400 (5.1)."""
        self.refused(head(b"Host: a", b"Content-Length : 5") + b"hello")

    def test_illegal_name_characters(self):
        """A field name must be a token."""
        for name in (b"X(A)", b"X A", b"X\x7fA", b"X\xffA"):
            self.refused(head(b"Host: a", name + b": b"))

    def test_nul_in_value(self):
        """NUL (and other controls) in a field value."""
        for value in (b"a\x00b", b"a\x01b"):
            self.refused(head(b"Host: a", b"X-A: " + value))

    def test_nul_in_target(self):
        """NUL in the request target."""
        self.refused(b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_absolute_form_for_another_host(self):
        """
        An absolute-form target's authority replaces Host (3.2.2): routed,
        forwarded and logged as that host, never one thing to the router
        and another to the upstream.
        """
        sent = self.forwarded(b"GET http://other.example/x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(sent.startswith(b"GET /x HTTP/1.1\r\n"))
        self.assertIn(b"Host: other.example\r\n", sent)
        self.assertNotIn(b"Host: a\r\n", sent)

    def test_absolute_form_with_userinfo(self):
        """User information in the authority is refused."""
        self.refused(b"GET http://u@h/x HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_pipelined_after_smuggled_body(self):
        """A request hidden in a body with conflicting framing is never seen as a request."""
        answer = self.refused(
            head(b"Host: a", b"Content-Length: 0", b"Transfer-Encoding: chunked")
            + b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(answer.count(b"HTTP/1.1 "), 1)

    def test_trailer_framing_field(self):
        """A Content-Length in the trailer section does not reframe anything."""
        gateway = harness()
        client, transport = gateway.connect()
        client.dataReceived(head(b"Host: a", b"Transfer-Encoding: chunked"))
        _, upstream_transport = gateway.accept_upstream()
        client.dataReceived(b"0\r\nContent-Length: 5\r\n\r\nhello")
        self.assertNotIn(b"Content-Length", upstream_transport.value())

    def test_http10_keep_alive(self):
        """HTTP/1.0 with keep-alive: forwarded, and the connection stays open for the next."""
        gateway = harness()
        client, transport = gateway.connect()
        client.dataReceived(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        upstream_side, _ = gateway.accept_upstream()
        upstream_side.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        response = parse_response(transport.value())
        self.assertEqual(response.headers.get(b"connection"), b"keep-alive")
        self.assertFalse(transport.write_closed or transport.disconnecting)

    def test_invalid_host(self):
        """A Host that is not a host[:port]."""
        for value in (b"a b", b"u@a", b"a:port", b"a/b", b"[::1"):
            self.refused(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")

    def test_several_hosts(self):
        """Two Host fields (3.2): 400."""
        self.refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")

    def test_missing_host(self):
        """HTTP/1.1 without Host (3.2): 400."""
        self.refused(b"GET / HTTP/1.1\r\n\r\n")

    def test_other_http_version(self):
        """HTTP/2.0 (or 0.9) in an HTTP/1.1 request line: 505 or 400, closed."""
        self.refused(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)
        self.refused(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n")

    def test_leading_empty_line_ignored(self):
        """An empty line before the request line is skipped (2.2)."""
        sent = self.forwarded(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(sent.startswith(b"GET / HTTP/1.1\r\n"))


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class UpstreamResponseTests(SynchronousTestCase):
    """Upstream responses held to the same rules."""

    def exchange(self, answer: bytes) -> tuple[bytes, object]:
        gateway = harness()
        client, transport = gateway.connect()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        upstream_side, upstream_transport = gateway.accept_upstream()
        upstream_side.dataReceived(answer)
        self.upstream_side = upstream_side
        self.upstream_transport = upstream_transport
        return transport.value(), transport

    def bad_gateway(self, answer: bytes) -> None:
        received, _ = self.exchange(answer)
        response = parse_response(received)
        self.assertEqual(response.status, 502, received[:200])
        self.assertIn(b"bad_gateway", response.body)
        self.assertTrue(self.upstream_transport.disconnecting)

    def test_not_http(self):
        self.bad_gateway(b"FOO BAR\r\n\r\n")

    def test_two_content_lengths(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")

    def test_content_length_and_transfer_encoding(self):
        self.bad_gateway(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

    def test_content_length_with_sign(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok")

    def test_transfer_coding_not_chunked(self):
        """A coding the gateway cannot undo (nginx: 502 too)."""
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok")
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")

    def test_head_too_large(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\nok")

    def test_obs_fold(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok")

    def test_bare_lf(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")

    def test_nul_in_value(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok")

    def test_whitespace_before_colon(self):
        self.bad_gateway(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok")

    def test_status_out_of_range(self):
        """Statuses are 100 to 599: 099 or 1000 is no HTTP answer."""
        self.bad_gateway(b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok")
        self.bad_gateway(b"HTTP/1.1 1000 Odd\r\nContent-Length: 2\r\n\r\nok")

    def test_other_version(self):
        self.bad_gateway(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def test_bad_chunk_after_head_cuts(self):
        """A broken chunk after the head went out: the client's response never completes."""
        received, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertFalse(received.endswith(b"0\r\n\r\n"))
        self.assertTrue(transport.write_closed)  # type: ignore[attr-defined]
        self.assertTrue(self.upstream_transport.disconnecting)

    def test_closed_mid_body_cuts(self):
        """Closed before Content-Length bytes came: the client sees the close, short."""
        received, transport = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
        self.upstream_side.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertTrue(received.endswith(b"\r\n\r\nok"))
        self.assertTrue(transport.write_closed)  # type: ignore[attr-defined]

    def test_reset_mid_chunked_cuts(self):
        """Reset within a chunked body: no last chunk is invented."""
        received, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
        )
        self.upstream_side.connectionLost(Failure(ConnectionLost()))  # type: ignore[attr-defined]
        self.assertFalse(transport.value().endswith(b"0\r\n\r\n"))  # type: ignore[attr-defined]
        self.assertTrue(transport.write_closed)  # type: ignore[attr-defined]

    def test_bytes_after_response_drop_connection(self):
        """Bytes after a complete response (nothing was asked): relayed response, connection dropped."""
        received, _ = self.exchange(OK + b"EXTRA")
        self.assertEqual(parse_response(received).body, b"ok")
        self.assertTrue(self.upstream_transport.disconnecting)
