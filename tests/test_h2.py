"""
Tests for L{gatewaykit.listeners.h2}: the HTTP/2 downstream codec, driven by
an h2 client connection over C{StringTransport}s, with the gateway's fake
reactor and hand-driven upstream connections (as in C{test_proxy}).
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from hpack import Decoder
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config import parse_config
from gatewaykit.config.model import Limits, RespondAction, StaticAction
from gatewaykit.gateway import Gateway
from gatewaykit.interfaces import IResponseStream
from gatewaykit.listeners import h2 as h2_module
from gatewaykit.listeners.factories import listener_factory
from gatewaykit.listeners.h2 import STREAM_BUFFER_BYTES, H2ServerProtocol, H2Stream, h2_protocol
from gatewaykit.listeners.tls import TLSInfo, register_h2_protocol_factory
from gatewaykit.testing import (
    GatewayHarness,
    GatewayReactor,
    TCPStringTransport,
    make_config,
    route,
    upstream,
)
from tests.fixtures.tls import Authority, ClientCreator, connect_tls, write_pair

KiB = 1024
MiB = 1024 * KiB
TLS = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", "example.test", "h2")


def harness(limits: Limits = Limits(), static_root: Optional[str] = None) -> GatewayHarness:
    """A gateway with a fixed answer at /hello, files at /files, the rest proxied."""
    routes = [
        route("hello", 1, path="/hello", respond=RespondAction(200, "hi\n")),
        route("app", 0, path_prefix="/", upstream="app"),
    ]
    if static_root is not None:
        routes.append(route("files", 2, path_prefix="/files", static=StaticAction(static_root)))
    config = make_config(routes=routes, upstreams=[upstream("app", "10.0.0.1:8000")], limits=limits)
    gateway = GatewayHarness(config)
    gateway.factory.scheme = "https"
    return gateway


class Reply:
    """What the client received on one stream."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.informational: list[list[tuple[bytes, bytes]]] = []
        self.body = b""
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def status(self) -> int:
        return int(self.header(b":status") or 0)

    def header(self, name: bytes) -> Optional[bytes]:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class H2Client:
    """
    An h2 client connection to an L{H2ServerProtocol} on a C{StringTransport}.
    It acknowledges received data as it reads it unless C{auto_ack} is false,
    and sends headers as given (so tests can send malformed ones).
    """

    def __init__(
        self,
        gateway: GatewayHarness,
        window: Optional[int] = None,
        auto_ack: bool = True,
        tls: Any = TLS,
        handshake: bool = True,
    ) -> None:
        self.conn = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.auto_ack = auto_ack
        self.replies: dict[int, Reply] = {}
        self.goaway: Optional[ConnectionTerminated] = None
        self.pings: list[bytes] = []
        self.protocol = H2ServerProtocol(gateway.factory, tls)
        self.transport = TCPStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
            peerAddress=IPv4Address("TCP", "192.0.2.7", 50000),
        )
        self.protocol.makeConnection(self.transport)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        if handshake:
            self.pump()

    def pump(self) -> None:
        """Exchange bytes both ways until neither side has anything to say."""
        for _ in range(10_000):
            out = self.conn.data_to_send()
            if out:
                self.protocol.dataReceived(out)
            back = self.transport.value()
            if not out and not back:
                return
            self.transport.clear()
            if back:
                for event in self.conn.receive_data(back):
                    self._event(event)
        raise AssertionError("the connection never went quiet")

    def _event(self, event: Any) -> None:
        stream_id = getattr(event, "stream_id", None)
        reply = self.replies.setdefault(stream_id, Reply()) if stream_id else None
        if isinstance(event, ResponseReceived):
            assert reply is not None
            reply.headers = list(event.headers or [])
        elif isinstance(event, InformationalResponseReceived):
            assert reply is not None
            reply.informational.append(list(event.headers or []))
        elif isinstance(event, DataReceived):
            assert reply is not None
            reply.body += event.data or b""
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, StreamEnded):
            assert reply is not None
            reply.ended = True
        elif isinstance(event, StreamReset):
            assert reply is not None
            reply.reset = event.error_code
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, PingAckReceived):
            self.pings.append(event.ping_data or b"")

    def open(
        self,
        path: bytes = b"/hello",
        method: bytes = b"GET",
        fields: tuple[tuple[bytes, bytes], ...] = (),
        end: bool = True,
        authority: Optional[bytes] = b"example.test",
        pump: bool = True,
    ) -> int:
        """Send a request head; its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", b"https"), (b":path", path)]
        if authority is not None:
            headers.append((b":authority", authority))
        headers.extend(fields)
        self.conn.send_headers(stream_id, headers, end_stream=end)
        if pump:
            self.pump()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Send body bytes (the test keeps within the server's windows)."""
        size = self.conn.max_outbound_frame_size
        for offset in range(0, len(data), size):
            last = offset + size >= len(data)
            self.conn.send_data(stream_id, data[offset : offset + size], end_stream=end and last)
        if not data and end:
            self.conn.end_stream(stream_id)
        self.pump()

    def get(self, path: bytes = b"/hello", **kwargs: Any) -> Reply:
        return self.replies[self.open(path, **kwargs)]

    def send_window(self, stream_id: int) -> int:
        """How many body bytes the server lets us send on C{stream_id} now."""
        return int(self.conn.local_flow_control_window(stream_id))


class Upstream:
    """The upstream side of the C{index}th connection the gateway opened."""

    def __init__(self, gateway: GatewayHarness, index: int = -1) -> None:
        self.connection, self.transport = gateway.accept_upstream(index)

    def received(self) -> bytes:
        return bytes(self.transport.value())

    def respond(self, data: bytes) -> None:
        self.connection.dataReceived(data)

    @property
    def paused(self) -> bool:
        return self.transport.producerState == "paused"


def frames(data: bytes) -> list[Any]:
    """The frames in C{data} (server to client), header blocks decoded as C{decoded}."""
    buffer = FrameBuffer(server=False)
    buffer.max_frame_size = 16384
    buffer.add_data(data)
    decoder = Decoder()
    found = []
    for frame in buffer:
        if isinstance(frame, HeadersFrame):
            frame.decoded = decoder.decode(frame.data, raw=True)
        found.append(frame)
    return found


class StreamInterfaceTests(SynchronousTestCase):
    """An H2Stream is a response stream like HTTP/1.1's."""

    def test_provides_interface(self):
        """H2Stream provides IResponseStream."""
        captured: list[Any] = []
        gateway = harness()
        gateway.gateway.dispatch = captured.append  # type: ignore[method-assign]
        H2Client(gateway).open(b"/x")
        self.assertIsInstance(captured[0], H2Stream)
        self.assertTrue(verifyObject(IResponseStream, captured[0]))


class RequestTests(SynchronousTestCase):
    """Requests become the same Request objects as over HTTP/1.1."""

    def capture(self, gateway: GatewayHarness) -> list[Any]:
        seen: list[Any] = []

        def dispatch(stream: Any) -> None:
            seen.append(stream.request)
            stream.respond(200, [(b"Content-Type", b"text/plain")], b"seen")

        self.patch(gateway.gateway, "dispatch", dispatch)
        return seen

    def test_get(self):
        """A GET is routed and answered: :status, lower-case fields, content-length, body."""
        client = H2Client(harness())
        reply = client.get()
        self.assertEqual((reply.status, reply.body, reply.ended), (200, b"hi\n", True))
        self.assertEqual(reply.header(b"content-length"), b"3")
        self.assertTrue(all(name == name.lower() for name, _ in reply.headers))

    def test_request_fields(self):
        """Pseudo-headers give method, path, host and version; :authority becomes Host."""
        gateway = harness()
        seen = self.capture(gateway)
        H2Client(gateway).open(
            b"/a/./b/../c?x=1", fields=((b"user-agent", b"t"), (b"x-request-id", b"abc-1"))
        )
        request = seen[0]
        self.assertEqual(
            (request.method, request.path, request.query, request.host, request.port),
            ("GET", "/a/c", "x=1", "example.test", None),
        )
        self.assertEqual((request.version, request.scheme, request.tls), ("2.0", "https", TLS))
        self.assertEqual(request.headers.get(b"host"), b"example.test")
        self.assertEqual(request.request_id, "abc-1")
        self.assertEqual((request.client_host, request.server_port), ("192.0.2.7", 8443))

    def test_cookies_joined(self):
        """Cookie fields sent apart (as HTTP/2 allows) are one field again."""
        gateway = harness()
        seen = self.capture(gateway)
        H2Client(gateway).open(b"/x", fields=((b"cookie", b"a=1"), (b"cookie", b"b=2")))
        self.assertEqual(seen[0].headers.get_all(b"cookie"), [b"a=1; b=2"])
        self.assertEqual(seen[0].cookies, {"a": "1", "b": "2"})

    def test_proxied_get(self):
        """The upstream gets an HTTP/1.1 request; its answer comes back over HTTP/2."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/x?y=1", fields=((b"te", b"trailers"),))
        app = Upstream(gateway)
        head = app.received()
        self.assertTrue(head.startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: example.test\r\n"), head)
        self.assertIn(b"X-Forwarded-Proto: https\r\n", head)
        self.assertNotIn(b"te:", head.lower())
        app.respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\nX-App: 1\r\n\r\nhello"
        )
        client.pump()
        reply = client.replies[stream_id]
        self.assertEqual((reply.status, reply.body, reply.ended), (200, b"hello", True))
        self.assertEqual(reply.header(b"x-app"), b"1")
        self.assertIsNone(reply.header(b"connection"))
        self.assertIsNone(reply.header(b"keep-alive"))
        self.assertEqual(reply.header(b"via"), b"1.1 test-node")

    def test_post_with_length(self):
        """A body with content-length goes upstream with Content-Length, as it arrives."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"10"),), end=False)
        client.send(stream_id, b"hello")
        app = Upstream(gateway)
        self.assertTrue(app.received().endswith(b"Content-Length: 10\r\n\r\nhello"))
        client.send(stream_id, b"world", end=True)
        self.assertTrue(app.received().endswith(b"\r\n\r\nhelloworld"))
        app.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        client.pump()
        self.assertEqual(client.replies[stream_id].status, 201)

    def test_post_without_length_chunked_upstream(self):
        """A body without content-length goes upstream chunked."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", end=False)
        app = Upstream(gateway)
        client.send(stream_id, b"abc", end=True)
        sent = app.received()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), sent)

    def test_expect_continue(self):
        """100 (an informational HEADERS) goes out once the upstream is connected."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(
            b"/up", b"PUT", ((b"content-length", b"3"), (b"expect", b"100-continue")), end=False
        )
        self.assertEqual(client.replies.get(stream_id, Reply()).informational, [])
        app = Upstream(gateway)
        client.pump()
        self.assertEqual(client.replies[stream_id].informational, [[(b":status", b"100")]])
        self.assertNotIn(b"expect", app.received().lower())

    def test_head_keeps_length(self):
        """A HEAD answer keeps content-length and has no DATA."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/x", b"HEAD")
        Upstream(gateway).respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        client.pump()
        reply = client.replies[stream_id]
        self.assertEqual((reply.header(b"content-length"), reply.body, reply.ended), (b"1234", b"", True))

    def test_not_modified_no_body(self):
        """A 304 has no body."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/x")
        Upstream(gateway).respond(b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n")
        client.pump()
        reply = client.replies[stream_id]
        self.assertEqual((reply.status, reply.body, reply.ended), (304, b"", True))

    def test_unknown_length_streamed(self):
        """A chunked upstream answer is DATA frames without content-length."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/x")
        app = Upstream(gateway)
        app.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        client.pump()
        reply = client.replies[stream_id]
        self.assertEqual((reply.body, reply.ended, reply.header(b"content-length")), (b"abc", False, None))
        app.respond(b"2\r\nde\r\n0\r\n\r\n")
        client.pump()
        self.assertEqual((reply.body, reply.ended), (b"abcde", True))

    def test_hsts(self):
        """The listener's added fields (HSTS) are on every answer, errors included."""
        gateway = harness()
        gateway.factory.added_fields = b"Strict-Transport-Security: max-age=600\r\n"
        client = H2Client(gateway)
        self.assertEqual(client.get().header(b"strict-transport-security"), b"max-age=600")
        self.assertEqual(
            client.get(b"/../x").header(b"strict-transport-security"), b"max-age=600"
        )

    def test_ping(self):
        """PING is answered."""
        client = H2Client(harness())
        client.conn.ping(b"12345678")
        client.pump()
        self.assertEqual(client.pings, [b"12345678"])


class MalformedTests(SynchronousTestCase):
    """Malformed requests are stream errors; the connection serves on."""

    def assertRefused(self, client: H2Client, stream_id: int, code: int = ErrorCodes.PROTOCOL_ERROR):
        self.assertEqual(client.replies[stream_id].reset, code)
        self.assertEqual(client.get().status, 200)
        self.assertFalse(client.transport.disconnecting)

    def test_uppercase_name(self):
        """An upper-case field name resets the stream."""
        client = H2Client(harness())
        self.assertRefused(client, client.open(fields=((b"X-Up", b"1"),)))

    def test_connection_specific(self):
        """Connection-specific fields reset the stream."""
        for field in (
            (b"connection", b"close"),
            (b"transfer-encoding", b"chunked"),
            (b"keep-alive", b"5"),
            (b"upgrade", b"websocket"),
            (b"te", b"gzip"),
        ):
            client = H2Client(harness())
            self.assertRefused(client, client.open(fields=(field,)))

    def test_missing_pseudo_header(self):
        """A request without :path resets the stream."""
        client = H2Client(harness())
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id, [(b":method", b"GET"), (b":scheme", b"https")], end_stream=True
        )
        client.pump()
        self.assertRefused(client, stream_id)

    def test_pseudo_after_regular(self):
        """A pseudo-header after a regular field resets the stream."""
        client = H2Client(harness())
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"https"), (b":path", b"/")],
            end_stream=True,
        )
        client.pump()
        self.assertRefused(client, stream_id)

    def test_bad_value(self):
        """A value with surrounding whitespace resets the stream."""
        client = H2Client(harness())
        self.assertRefused(client, client.open(fields=((b"x-a", b" 1"),)))

    def test_length_without_body(self):
        """content-length with END_STREAM on the head resets the stream."""
        client = H2Client(harness())
        self.assertRefused(client, client.open(b"/x", b"POST", ((b"content-length", b"4"),)))

    def test_host_differs(self):
        """A Host naming another authority is a 400."""
        client = H2Client(harness())
        reply = client.get(fields=((b"host", b"other.test"),))
        self.assertEqual(reply.status, 400)

    def test_path_escaping_root(self):
        """A path escaping the root gets 400 with a problem body, as over HTTP/1.1."""
        client = H2Client(harness())
        reply = client.get(b"/../etc/passwd")
        self.assertEqual(reply.status, 400)
        self.assertEqual(reply.header(b"content-type"), b"application/problem+json")
        self.assertEqual(reply.json()["type"], "urn:gatewaykit:error:bad_request")

    def test_no_route(self):
        """No authority and no Host: 400, as a missing Host over HTTP/1.1."""
        client = H2Client(harness())
        self.assertEqual(client.get(authority=None).status, 400)

    def test_protocol_error_goaway(self):
        """A connection-level protocol error gets GOAWAY and the connection closes."""
        client = H2Client(harness())
        client.protocol.dataReceived(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
        goaways = [f for f in frames(client.transport.value()) if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goaways], [ErrorCodes.PROTOCOL_ERROR])
        self.assertTrue(client.transport.disconnecting)


class LimitTests(SynchronousTestCase):
    """gateway.limits over HTTP/2."""

    def test_headers_too_large(self):
        """A head over max_header_bytes gets 431."""
        client = H2Client(harness(Limits(max_header_bytes=200)))
        reply = client.get(fields=((b"x-big", b"x" * 300),))
        self.assertEqual(reply.status, 431)
        self.assertEqual(client.get().status, 200)

    def test_header_block_far_too_large(self):
        """A header block far past the limit is a connection error (HPACK's own bound)."""
        client = H2Client(harness(Limits(max_header_bytes=1024)))
        client.open(fields=((b"x-big", b"x" * 100_000),), pump=False)
        client.protocol.dataReceived(client.conn.data_to_send())
        goaways = [f for f in frames(client.transport.value()) if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goaways], [ErrorCodes.ENHANCE_YOUR_CALM])
        self.assertTrue(client.transport.disconnecting)

    def test_uri_too_long(self):
        """A :path over max_uri_bytes gets 414."""
        client = H2Client(harness(Limits(max_uri_bytes=20)))
        self.assertEqual(client.get(b"/" + b"a" * 30).status, 414)

    def test_declared_body_too_large(self):
        """A content-length over max_body_bytes gets 413 before any upstream."""
        gateway = harness(Limits(max_body_bytes=10))
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"11"),), end=False)
        self.assertEqual(client.replies[stream_id].status, 413)
        # The client is asked to stop sending the body.
        self.assertEqual(client.replies[stream_id].reset, ErrorCodes.NO_ERROR)
        self.assertEqual(gateway.reactor.tcpClients, [])

    def test_streamed_body_too_large(self):
        """A body without length passing max_body_bytes gets 413; the stream is then reset."""
        gateway = harness(Limits(max_body_bytes=8))
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", end=False)
        app = Upstream(gateway)
        client.send(stream_id, b"hello")
        client.send(stream_id, b"world")
        reply = client.replies[stream_id]
        self.assertEqual(reply.status, 413)
        self.assertEqual(reply.reset, ErrorCodes.NO_ERROR)
        self.assertTrue(app.transport.disconnecting)

    def test_stalled_body_timeout(self):
        """A request body that stops arriving gets 408 at body_timeout; the connection stays."""
        gateway = harness(Limits(body_timeout=5))
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"100"),), end=False)
        app = Upstream(gateway)
        client.send(stream_id, b"x" * 10)
        gateway.reactor.advance(4)
        client.send(stream_id, b"y" * 10)
        gateway.reactor.advance(4)
        self.assertEqual(client.replies.get(stream_id, Reply()).status, 0)
        gateway.reactor.advance(2)
        client.pump()
        reply = client.replies[stream_id]
        self.assertEqual(reply.status, 408)
        self.assertEqual(reply.reset, ErrorCodes.NO_ERROR)
        self.assertTrue(app.transport.disconnecting)  # the upstream never got a whole body
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(client.get().status, 200)

    def test_body_timeout_not_while_held_back(self):
        """While the gateway holds the body back (slow upstream), the client is not timed."""
        gateway = harness(Limits(body_timeout=5))
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"%d" % MiB),), end=False)
        app = Upstream(gateway)
        client.send(stream_id, b"a" * 32 * KiB)
        app.transport.producer.pauseProducing()  # the upstream's buffer is full
        client.send(stream_id, b"b" * 32 * KiB)  # held, not acknowledged
        gateway.reactor.advance(60)
        self.assertEqual(client.replies.get(stream_id, Reply()).status, 0)
        app.transport.producer.resumeProducing()
        client.pump()
        gateway.reactor.advance(6)
        client.pump()
        self.assertEqual(client.replies[stream_id].status, 408)

    def test_body_timeout_cancelled_when_done(self):
        """A body that completes leaves no timer behind."""
        gateway = harness(Limits(body_timeout=5))
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"5"),), end=False)
        app = Upstream(gateway)
        client.send(stream_id, b"hello", end=True)
        self.assertTrue(app.received().endswith(b"hello"))
        gateway.reactor.advance(10)
        client.pump()
        self.assertEqual(client.replies.get(stream_id, Reply()).status, 0)
        app.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.pump()
        self.assertEqual(client.replies[stream_id].status, 200)

    def test_idle_timeout(self):
        """An idle connection gets GOAWAY and is closed."""
        gateway = harness(Limits(idle_timeout=5))
        client = H2Client(gateway)
        client.get()
        gateway.reactor.advance(4)
        self.assertFalse(client.transport.disconnecting)
        gateway.reactor.advance(2)
        client.pump()
        self.assertIsNotNone(client.goaway)
        self.assertTrue(client.transport.disconnecting)

    def test_busy_not_idle(self):
        """A connection with a request in progress is not idle."""
        gateway = harness(Limits(idle_timeout=5))
        client = H2Client(gateway)
        client.open(b"/slow")
        gateway.reactor.advance(30)
        self.assertFalse(client.transport.disconnecting)

    def test_header_timeout(self):
        """A head left incomplete is given header_timeout, not idle_timeout."""
        gateway = harness(Limits(header_timeout=2, idle_timeout=60))
        client = H2Client(gateway)
        client.open(pump=False)
        partial = client.conn.data_to_send()
        client.protocol.dataReceived(partial[:-3])
        gateway.reactor.advance(3)
        self.assertTrue(client.transport.disconnecting)


class FlowControlTests(SynchronousTestCase):
    """Flow control, both ways."""

    def download(self, gateway: GatewayHarness, client: H2Client, size: int) -> tuple[int, Upstream]:
        stream_id = client.open(b"/big")
        app = Upstream(gateway)
        app.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        return stream_id, app

    def feed(self, app: Upstream, remaining: int, piece: bytes) -> int:
        """Send body pieces while the gateway reads the upstream; what is left."""
        while remaining and not app.paused:
            data = piece[: min(len(piece), remaining)]
            app.respond(data)
            remaining -= len(data)
        return remaining

    def test_large_response_across_windows(self):
        """1 MiB goes out in a 64 KiB window as the client's WINDOW_UPDATEs come."""
        gateway = harness()
        client = H2Client(gateway, window=64 * KiB)
        stream_id, app = self.download(gateway, client, MiB)
        piece = os.urandom(16 * KiB)
        remaining = MiB
        for _ in range(1000):
            remaining = self.feed(app, remaining, piece)
            client.pump()
            if not remaining:
                break
        reply = client.replies[stream_id]
        self.assertEqual((len(reply.body), reply.ended), (MiB, True))
        self.assertEqual(reply.body[: len(piece)], piece)

    def test_slow_client_pauses_upstream(self):
        """A client withholding WINDOW_UPDATE pauses the upstream; its update resumes it."""
        gateway = harness()
        client = H2Client(gateway, window=16 * KiB, auto_ack=False)
        stream_id, app = self.download(gateway, client, MiB)
        remaining = self.feed(app, MiB, b"x" * 16 * KiB)
        client.pump()
        self.assertTrue(app.paused)
        stream = client.protocol._streams[stream_id]
        # What the gateway holds back is bounded: its buffer and one read.
        self.assertLessEqual(stream._pending_bytes, STREAM_BUFFER_BYTES + 16 * KiB)
        reply = client.replies[stream_id]
        self.assertEqual(len(reply.body), 16 * KiB)
        client.conn.acknowledge_received_data(16 * KiB, stream_id)
        client.auto_ack = True
        client.pump()
        self.assertFalse(app.paused)
        for _ in range(1000):
            remaining = self.feed(app, remaining, b"x" * 16 * KiB)
            client.pump()
            if not remaining:
                break
        self.assertEqual((len(reply.body), reply.ended), (MiB, True))

    def test_connection_window(self):
        """The connection's window counts too: a stream waits for a connection WINDOW_UPDATE."""
        gateway = harness()
        client = H2Client(gateway, auto_ack=False)
        stream_id, app = self.download(gateway, client, 100 * KiB)
        app.respond(b"y" * 100 * KiB)
        client.pump()
        self.assertEqual(len(client.replies[stream_id].body), 65535)
        client.conn.acknowledge_received_data(65535, stream_id)
        client.pump()
        self.assertEqual(len(client.replies[stream_id].body), 100 * KiB)

    def test_transport_backpressure(self):
        """A full transport pauses the gateway's writes; the upstream is paused in turn."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id, app = self.download(gateway, client, MiB)
        client.protocol.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        remaining = self.feed(app, MiB, b"z" * 16 * KiB)
        self.assertTrue(app.paused)
        self.assertLess(len(client.transport.value()), 1000)
        client.protocol.resumeProducing()
        client.pump()
        self.assertFalse(app.paused)
        for _ in range(1000):
            remaining = self.feed(app, remaining, b"z" * 16 * KiB)
            client.pump()
            if not remaining:
                break
        self.assertEqual(len(client.replies[stream_id].body), MiB)

    def test_request_body_backpressure(self):
        """A slow upstream stops the gateway acknowledging the body: the client's window closes."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"%d" % MiB),), end=False)
        app = Upstream(gateway)
        client.send(stream_id, b"a" * 32 * KiB)
        self.assertEqual(client.send_window(stream_id), 65536)
        app.transport.producer.pauseProducing()  # the upstream's buffer is full
        client.send(stream_id, b"b" * 32 * KiB)
        client.send(stream_id, b"c" * 32 * KiB)
        self.assertEqual(client.send_window(stream_id), 0)
        self.assertNotIn(b"c", app.received()[-10:])
        app.transport.producer.resumeProducing()
        client.pump()
        self.assertGreater(client.send_window(stream_id), 0)
        self.assertTrue(app.received().endswith(b"c" * 32 * KiB))

    def test_body_held_until_connected(self):
        """Body bytes that come before the upstream connects are held, not acknowledged."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/up", b"POST", ((b"content-length", b"%d" % (80 * KiB)),), end=False)
        client.send(stream_id, b"d" * 64 * KiB)
        self.assertEqual(client.send_window(stream_id), 0)
        app = Upstream(gateway)
        client.pump()
        self.assertTrue(app.received().endswith(b"d" * 64 * KiB))
        self.assertGreater(client.send_window(stream_id), 0)

    def test_static_file(self):
        """A file (a pull producer) is sent whole across windows."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "files"))
        content = os.urandom(300 * KiB)
        with open(os.path.join(root, "files", "f.bin"), "wb") as f:
            f.write(content)
        gateway = harness(static_root=root)
        client = H2Client(gateway, window=32 * KiB)
        stream_id = client.open(b"/files/f.bin")
        for _ in range(1000):
            gateway.reactor.advance(0)
            client.pump()
            if client.replies[stream_id].ended:
                break
        reply = client.replies[stream_id]
        self.assertEqual((reply.status, reply.body), (200, content))


class ConcurrencyTests(SynchronousTestCase):
    """Many streams on one connection."""

    def test_slow_stream_does_not_block(self):
        """A stream waiting on its upstream does not hold up another."""
        gateway = harness()
        client = H2Client(gateway)
        slow = client.open(b"/slow")
        fast = client.open(b"/hello")
        self.assertEqual(client.replies[fast].status, 200)
        self.assertNotIn(slow, [s for s, r in client.replies.items() if r.headers])

    def test_interleaved_answers(self):
        """Two proxied streams are answered independently, in any order."""
        gateway = harness()
        client = H2Client(gateway)
        first = client.open(b"/one")
        app_one = Upstream(gateway, 0)
        second = client.open(b"/two")
        app_two = Upstream(gateway, 1)
        app_two.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        app_one.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        client.pump()
        self.assertEqual(client.replies[first].body, b"one")
        self.assertEqual(client.replies[second].body, b"two")

    def test_client_reset_drops_upstream(self):
        """RST_STREAM from the client drops the upstream side; the request is logged as 499."""
        gateway = harness()
        finished: list[Any] = []
        self.patch(gateway.gateway, "stream_finished", finished.append)
        client = H2Client(gateway)
        stream_id = client.open(b"/x")
        app = Upstream(gateway)
        app.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.pump()
        self.assertTrue(app.transport.disconnecting)
        self.assertEqual(gateway.gateway.upstreams["app"].targets[0].in_flight, 0)
        self.assertEqual([s.status for s in finished], [200])
        self.assertTrue(finished[0].lost)
        self.assertEqual(client.get().status, 200)

    def test_reset_before_answer_is_499(self):
        """A stream reset before any answer is accounted as 499."""
        gateway = harness()
        finished: list[Any] = []
        self.patch(gateway.gateway, "stream_finished", finished.append)
        client = H2Client(gateway)
        stream_id = client.open(b"/x")
        Upstream(gateway)
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.pump()
        self.assertEqual([s.status for s in finished], [499])

    def test_max_concurrent_streams(self):
        """Streams past the advertised limit are refused one by one (REFUSED_STREAM)."""
        self.patch(h2_module, "MAX_CONCURRENT_STREAMS", 2)
        gateway = harness()
        client = H2Client(gateway, handshake=False)
        # Sent before the server's SETTINGS arrive, as a client may.
        ids = [client.open(b"/slow-%d" % n, pump=False) for n in range(3)]
        client.pump()
        self.assertEqual(client.conn.remote_settings.max_concurrent_streams, 2)
        self.assertEqual([client.replies.get(i, Reply()).reset for i in ids], [None, None, ErrorCodes.REFUSED_STREAM])
        self.assertEqual(len(gateway.reactor.tcpClients), 2)
        self.assertFalse(client.transport.disconnecting)

    def test_rapid_reset(self):
        """A client resetting most of the streams it opens is sent away."""
        self.patch(h2_module, "RESET_LIMIT", 3)
        gateway = harness()
        client = H2Client(gateway)
        for _ in range(3):
            stream_id = client.open(b"/x")
            client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            client.pump()
        self.assertEqual(client.goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.transport.disconnecting)

    def test_connection_lost(self):
        """A lost connection drops every stream's upstream and accounts for each."""
        gateway = harness()
        finished: list[Any] = []
        self.patch(gateway.gateway, "stream_finished", finished.append)
        client = H2Client(gateway)
        client.open(b"/a")
        client.open(b"/b")
        apps = [Upstream(gateway, 0), Upstream(gateway, 1)]
        client.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(all(app.transport.disconnecting for app in apps))
        self.assertEqual([s.status for s in finished], [499, 499])
        self.assertEqual(gateway.factory.connections, set())

    def test_accounting(self):
        """Each answered stream is accounted once, with HTTP/2.0 as its version."""
        gateway = harness()
        finished: list[Any] = []
        self.patch(gateway.gateway, "stream_finished", finished.append)
        client = H2Client(gateway)
        self.assertEqual(gateway.factory.connections, {client.protocol})
        client.get()
        client.get(b"/nowhere/../..")
        self.assertEqual([(s.status, s.request.version) for s in finished], [(200, "2.0"), (400, "2.0")])
        self.assertEqual(finished[0].bytes_sent, 3)


class DrainTests(SynchronousTestCase):
    """GOAWAY: in-flight streams finish, new ones are refused."""

    def test_drain_idle_closes(self):
        """An idle connection sends GOAWAY and closes at once."""
        client = H2Client(harness())
        client.protocol.drain()
        client.pump()
        self.assertEqual(client.goaway.error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(client.transport.disconnecting)

    def test_in_flight_finishes(self):
        """A stream in flight finishes after GOAWAY; a later one is refused; then close."""
        gateway = harness()
        client = H2Client(gateway)
        stream_id = client.open(b"/x")
        app = Upstream(gateway)
        client.protocol.drain()
        later = client.open(b"/hello", pump=False)
        client.protocol.dataReceived(client.conn.data_to_send())
        self.assertFalse(client.transport.disconnecting)
        app.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        self.assertTrue(client.transport.disconnecting)
        sent = frames(client.transport.value())
        goaway = [f for f in sent if isinstance(f, GoAwayFrame)]
        self.assertEqual([(f.last_stream_id, f.error_code) for f in goaway], [(stream_id, 0)])
        refused = [f for f in sent if isinstance(f, RstStreamFrame)]
        self.assertEqual([(f.stream_id, f.error_code) for f in refused], [(later, ErrorCodes.REFUSED_STREAM)])
        data = [f for f in sent if isinstance(f, DataFrame) and f.stream_id == stream_id]
        self.assertEqual(b"".join(f.data for f in data), b"done")
        self.assertIn("END_STREAM", data[-1].flags)


class RegistrationTests(SynchronousTestCase):
    """https listeners built by listener_factory speak HTTP/2."""

    def test_h2_over_tls(self):
        """ALPN negotiates h2 and the connection is served by H2ServerProtocol, TLSInfo on requests."""
        self.addCleanup(register_h2_protocol_factory, None)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        authority = Authority()
        certificate, key = authority.issue("a.test", dns=["a.test"])
        write_pair(base, "a", certificate, key)
        config = parse_config(
            textwrap.dedent(
                """
                gateway: {node: n, access_log: {path: "off"}}
                listeners:
                  secure: {protocol: https, bind: "127.0.0.1:8443", tls: {certificates: [{cert: a.pem, key: a.key}], hsts: 60}}
                routes:
                  - {name: a, respond: {status: 200, body: "over h2"}}
                """
            ),
            source="gw.yaml",
            base_dir=base,
            environ={},
        )
        reactor = GatewayReactor()
        live = Gateway(config, reactor)
        factory = listener_factory(config.listeners["secure"], live, reactor)
        self.assertEqual(factory.contexts.alpn, (b"h2", b"http/1.1"))
        self.assertIs(factory.h2_protocol_factory, h2_protocol)
        server = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 50000))
        client, recorder, pump = connect_tls(server, ClientCreator("a.test", alpn=[b"h2"]), reactor)
        self.assertEqual(client.negotiatedProtocol, b"h2")
        protocol = server.wrappedProtocol
        self.assertIsInstance(protocol, H2ServerProtocol)
        self.assertEqual(protocol.tls.alpn, "h2")
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a.test")],
            end_stream=True,
        )
        client.write(conn.data_to_send())
        pump.flush()
        events = conn.receive_data(recorder.data)
        response = [e for e in events if isinstance(e, ResponseReceived)][0]
        body = b"".join(e.data for e in events if isinstance(e, DataReceived))
        self.assertEqual(dict(response.headers)[b":status"], b"200")
        self.assertEqual(dict(response.headers)[b"strict-transport-security"], b"max-age=60")
        self.assertEqual(body, b"over h2")
