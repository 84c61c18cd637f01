"""
End-to-end tests of requests the gateway refuses itself (SPEC section 6):
they are answered with a problem+json error, never reach the upstream, and
leave other connections alone.
"""

from __future__ import annotations

from twisted.internet import defer, task

from tests.integration import support
from tests.integration.support import KiB

_LIMITS = {"max_header_bytes": "4KiB", "header_timeout": "1s"}


class RefusedRequestTests(support.GatewayTestCase):
    """Malformed, oversized and too slow request heads."""

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        """A gateway with small head limits; a raw connection to it."""
        self.gateway, self.upstream = yield self.start_proxy(
            limits=_LIMITS, routes=(support.PING_ROUTE,)
        )
        client = yield support.connect_raw(self, self.gateway.port())
        return client

    @defer.inlineCallbacks
    def assert_other_connection_served(self) -> support.Steps:
        """A normal request on a new connection gets its answer (from the gateway itself)."""
        response = yield support.curl(self, self.gateway.url("/ping"))
        self.assertEqual((response.status, response.body), (200, b"pong\n"))

    @defer.inlineCallbacks
    def assert_refused(self, client: support.RawClient, status: int, code: str) -> support.Steps:
        """C{client} got a C{status} problem with C{code}, its connection closed, nothing went upstream."""
        yield support.wait_for(lambda: client.lost, what="the gateway to close the connection")
        response = client.response()
        body = response.json()
        self.assertEqual(
            (response.status, response.header("Content-Type"), body["type"], body["status"]),
            (status, "application/problem+json", f"urn:gatewaykit:error:{code}", status),
        )
        self.assertEqual(self.upstream.requests, 0)

    @defer.inlineCallbacks
    def test_malformed_request_line(self) -> support.Steps:
        """A malformed request line gets 400 bad_request."""
        client = yield self.start()
        client.send(b"GET /headers HTTP/1.1")
        yield self.assert_other_connection_served()
        client.send(b" junk\r\nHost: 127.0.0.1\r\n\r\n")
        yield self.assert_refused(client, 400, "bad_request")

    @defer.inlineCallbacks
    def test_header_too_large(self) -> support.Steps:
        """A head over max_header_bytes gets 431 headers_too_large."""
        client = yield self.start()
        client.send(b"GET /headers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (3 * KiB))
        yield self.assert_other_connection_served()
        client.send(b"a" * (3 * KiB) + b"\r\n\r\n")
        yield self.assert_refused(client, 431, "headers_too_large")

    @defer.inlineCallbacks
    def test_slow_head(self) -> support.Steps:
        """A head dribbling one byte every 300 ms gets 408 request_timeout after header_timeout."""
        client = yield self.start()
        head = iter(b"GET /headers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

        def dribble() -> None:
            byte = next(head, None)
            if client.lost or byte is None:
                stop()
            else:
                client.send(bytes([byte]))

        def stop() -> None:
            if dribbler.running:
                dribbler.stop()

        dribbler = task.LoopingCall(dribble)
        self.addCleanup(stop)
        dribbler.start(0.3)
        yield self.assert_other_connection_served()
        yield self.assert_refused(client, 408, "request_timeout")
