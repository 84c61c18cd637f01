"""
Tests for L{gatewaykit.http.forwarding}.
"""

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.http.forwarding import (
    UpstreamHeadBuilder,
    downstream_fields,
    is_sane_request_id,
    is_valid_traceparent,
    new_traceparent,
)
from gatewaykit.http.message import Headers, Request
from gatewaykit.http.wire import hop_by_hop_fields, serialize_fields

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request(*fields: tuple[bytes, bytes]) -> Request:
    return Request(
        method="GET",
        target=b"/",
        path="/",
        headers=Headers([(b"Host", b"example.com:8080"), *fields]),
        client_host="192.0.2.7",
        server_port=8080,
        request_id="rid-1",
    )


def build(req: Request) -> bytes:
    return UpstreamHeadBuilder("edge-1", ()).build(req, b"/", None)


class TraceparentTests(SynchronousTestCase):
    """W3C traceparent handling."""

    def test_valid_passed_through(self):
        """A valid traceparent is sent upstream unchanged."""
        self.assertIn(b"traceparent: " + VALID + b"\r\n", build(request((b"traceparent", VALID))))

    def test_started_when_absent(self):
        """Without one, a new valid traceparent is started."""
        head = build(request())
        value = head.split(b"traceparent: ")[1].split(b"\r\n")[0]
        self.assertTrue(is_valid_traceparent(value))

    def test_invalid_replaced(self):
        """An all-zero trace id is not valid and gets replaced."""
        zero = b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"
        self.assertFalse(is_valid_traceparent(zero))
        self.assertNotIn(zero, build(request((b"traceparent", zero))))

    def test_new_is_valid(self):
        """A started traceparent is valid and sampled."""
        value = new_traceparent()
        self.assertTrue(is_valid_traceparent(value))
        self.assertTrue(value.endswith(b"-01"))


class ForwardedFieldTests(SynchronousTestCase):
    """X-Forwarded-*, X-Request-ID and Via."""

    def test_forwarded_fields(self):
        """The upstream learns the client, scheme, original host and port."""
        head = build(request())
        self.assertIn(b"X-Forwarded-For: 192.0.2.7\r\n", head)
        self.assertIn(b"X-Forwarded-Proto: http\r\n", head)
        self.assertIn(b"X-Forwarded-Host: example.com:8080\r\n", head)
        self.assertIn(b"X-Forwarded-Port: 8080\r\n", head)
        self.assertIn(b"X-Request-ID: rid-1\r\n", head)

    def test_forwarded_for_appended(self):
        """An existing X-Forwarded-For chain is kept and the client appended."""
        head = build(request((b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")))
        self.assertIn(b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 192.0.2.7\r\n", head)

    def test_via_appended(self):
        """The gateway adds itself to Via."""
        self.assertIn(b"Via: 1.0 old, 1.1 edge-1\r\n", build(request((b"Via", b"1.0 old"))))

    def test_host_override(self):
        """A Host given to build replaces the client's."""
        head = UpstreamHeadBuilder("n", ()).build(request(), b"/", b"internal:9000")
        self.assertIn(b"Host: internal:9000\r\n", head)
        self.assertNotIn(b"\r\nHost: example.com", head)

    def test_request_id_sanity(self):
        """Request ids must be 1-200 visible ASCII characters."""
        self.assertTrue(is_sane_request_id(b"a" * 200))
        self.assertFalse(is_sane_request_id(b"a" * 201))
        self.assertFalse(is_sane_request_id(b"a b"))
        self.assertFalse(is_sane_request_id(b""))


class DownstreamFieldTests(SynchronousTestCase):
    """Response fields for the client."""

    def test_framing_and_hop_by_hop_removed(self):
        """Framing and hop-by-hop fields from the upstream are dropped."""
        fields = downstream_fields(
            [
                (b"Content-Length", b"5"),
                (b"Connection", b"close, X-Internal"),
                (b"X-Internal", b"1"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
            ],
            "rid",
            b"1.1 n",
            hop_by_hop_fields([b"close, X-Internal"]),
        )
        names = [name.lower() for name, _ in fields]
        self.assertEqual(names.count(b"set-cookie"), 2)
        for dropped in (b"content-length", b"connection", b"x-internal"):
            self.assertNotIn(dropped, names)
        self.assertIn((b"Via", b"1.1 n"), fields)
        self.assertIn((b"X-Request-ID", b"rid"), fields)


class SerializeFieldsTests(SynchronousTestCase):
    """Header fields on the wire."""

    def test_lines(self):
        """Each field is a Name: value line, in order, repeated names kept."""
        fields = [(b"Set-Cookie", b"a=1"), (b"X-Empty", b""), (b"Set-Cookie", b"b=2")]
        self.assertEqual(
            serialize_fields(fields), b"Set-Cookie: a=1\r\nX-Empty: \r\nSet-Cookie: b=2\r\n"
        )

    def test_none(self):
        """No fields, no bytes (not an empty line, which would end the head)."""
        self.assertEqual(serialize_fields([]), b"")
        self.assertEqual(serialize_fields(iter(())), b"")
