"""
Tests for holding a client's response while one upstream read is parsed
(L{gatewaykit.listeners.http.HTTP11Stream.hold}, C{release}): what one read
brings goes to the client in one write, and nothing waits for the next read.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.http.stream import StreamWrapper
from gatewaykit.testing import (
    GatewayHarness,
    make_config,
    parse_response,
    parse_responses,
    route,
    upstream,
)

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"


def harness() -> GatewayHarness:
    return GatewayHarness(
        make_config(
            routes=[route("app", path_prefix="/", upstream="app")],
            upstreams=[upstream("app", "10.0.0.1:8000")],
        )
    )


class Exchange:
    """A client connection whose transport records each write, and its upstream."""

    def __init__(self, gateway: GatewayHarness, request: bytes = GET) -> None:
        self.client, self.client_transport = gateway.connect()
        self.writes: list[bytes] = []
        write = self.client_transport.write

        def recording(data: bytes) -> None:
            self.writes.append(data)
            write(data)

        self.client_transport.write = recording  # type: ignore[method-assign]
        self.client.dataReceived(request)
        self.upstream, self.upstream_transport = gateway.accept_upstream()

    def received(self) -> bytes:
        return self.client_transport.value()


class HoldTests(SynchronousTestCase):
    """One upstream read, one client write."""

    def test_head_and_body_in_one_write(self) -> None:
        """A head and the whole body in one read reach the client in one write."""
        exchange = Exchange(harness())
        exchange.upstream.dataReceived(HEAD + b"0123456789")
        self.assertEqual(len(exchange.writes), 1)
        self.assertEqual(parse_response(exchange.received()).body, b"0123456789")

    def test_head_alone_not_delayed(self) -> None:
        """A head whose body has not come yet is written at the end of its read."""
        exchange = Exchange(harness())
        exchange.upstream.dataReceived(HEAD)
        self.assertEqual(exchange.writes, [exchange.received()])
        self.assertTrue(exchange.received().endswith(b"\r\n\r\n"))
        exchange.upstream.dataReceived(b"01234")
        exchange.upstream.dataReceived(b"56789")
        self.assertEqual(exchange.writes[1:], [b"01234", b"56789"])

    def test_chunked_response(self) -> None:
        """A chunked answer and its end in one read make one write."""
        exchange = Exchange(harness())
        exchange.upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"
        )
        self.assertEqual(len(exchange.writes), 1)
        self.assertEqual(parse_response(exchange.received()).body, b"abcde")

    def test_pipelined_responses_in_order(self) -> None:
        """The next pipelined request's response follows the first, whole, in order."""
        gateway = harness()
        exchange = Exchange(gateway, GET + GET)
        exchange.upstream.dataReceived(HEAD + b"first-0123")
        # The same (pooled) upstream connection serves the second request.
        self.assertEqual(len(gateway.reactor.tcpClients), 1)
        exchange.upstream.dataReceived(HEAD + b"second-012")
        bodies = [response.body for response in parse_responses(exchange.received())]
        self.assertEqual(bodies, [b"first-0123", b"second-012"])

    def test_client_gone(self) -> None:
        """A held response whose client went away is dropped, not written."""
        exchange = Exchange(harness())
        stream = exchange.client._streams[0]
        stream.hold()
        stream.write_head(200, [], 10)
        exchange.client.connectionLost(None)
        stream.release()
        self.assertEqual(exchange.writes, [])

    def test_abort_releases(self) -> None:
        """What was held goes out before a response is cut short."""
        exchange = Exchange(harness())
        stream = exchange.client._streams[0]
        stream.hold()
        stream.write_head(200, [], 10)
        stream.write(b"01234")
        stream.abort()
        self.assertEqual(len(exchange.writes), 1)
        self.assertTrue(exchange.writes[0].endswith(b"\r\n\r\n01234"))
        self.assertTrue(exchange.client_transport.write_closed)


class WrapperTests(SynchronousTestCase):
    """Stream wrappers pass holding on to the stream they wrap."""

    def test_passed_on(self) -> None:
        calls: list[str] = []

        class Inner:
            request: Any = None

            def hold(self) -> None:
                calls.append("hold")

            def release(self) -> None:
                calls.append("release")

        wrapper = StreamWrapper(Inner())
        wrapper.hold()
        wrapper.release()
        self.assertEqual(calls, ["hold", "release"])
