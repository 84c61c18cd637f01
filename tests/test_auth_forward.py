"""
Tests for L{gatewaykit.policies.forward_auth} and the HTTP client of
L{gatewaykit.policies.auth} it asks the auth service with.
"""

import json

from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from gatewaykit.config.errors import ConfigError
from gatewaykit.http.message import Headers, Request
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import Answer, HTTPClient, SubrequestFailed
from gatewaykit.policies.chain import PolicyCall
from gatewaykit.policies.forward_auth import ForwardAuthFactory, ForwardAuthPolicy
from gatewaykit.testing import parse_response
from tests.fixtures.auth import FakeHTTPClient, echoed, harness, parse_options, request

AUTH_URL = "http://127.0.0.1:9100/check"


class ForwardAuthCase(SynchronousTestCase):
    """Builds gateways with one forward_auth policy on a fake client."""

    def setUp(self) -> None:
        self.client = FakeHTTPClient()

    def gateway(self, extra: str = ""):
        text = f"{{url: '{AUTH_URL}', copy_headers: [X-User, X-Roles]" + (
            ", " + extra if extra else ""
        ) + "}"
        options = parse_options(ForwardAuthFactory(), text)
        gateway = harness({"forward_auth": ForwardAuthFactory(self.client)}, [("ext", "forward_auth", options)])
        self.addCleanup(gateway.gateway.close)
        return gateway

    def send(self, gateway, *fields, target="/app/page?x=1"):
        protocol, transport = gateway.connect(client="192.0.2.7")
        protocol.dataReceived(request(*fields, target=target))
        return transport


class SubrequestTests(ForwardAuthCase):
    """What the auth service is asked."""

    def test_fields(self):
        """The client's end-to-end fields go along, with X-Forwarded-* describing the request."""
        self.send(
            self.gateway(),
            "Authorization: Bearer abc",
            "Cookie: sid=1",
            "Connection: keep-alive, X-Hop",
            "X-Hop: 1",
            "X-Forwarded-For: 10.6.6.6",
            "Content-Length: 0",
        )
        (subrequest,) = self.client.requests
        self.assertEqual((subrequest.url, subrequest.timeout), (AUTH_URL, 5.0))
        names = [n.lower() for n, _ in subrequest.fields]
        self.assertEqual(subrequest.field("authorization"), b"Bearer abc")
        self.assertEqual(subrequest.field("cookie"), b"sid=1")
        for name in (b"connection", b"x-hop", b"host", b"content-length"):
            self.assertNotIn(name, names)
        self.assertEqual(subrequest.field("x-forwarded-method"), b"GET")
        self.assertEqual(subrequest.field("x-forwarded-proto"), b"http")
        self.assertEqual(subrequest.field("x-forwarded-host"), b"api.test")
        self.assertEqual(subrequest.field("x-forwarded-uri"), b"/app/page?x=1")
        self.assertEqual(names.count(b"x-forwarded-for"), 1)
        self.assertEqual(subrequest.field("x-forwarded-for"), b"192.0.2.7")
        self.assertIsNotNone(subrequest.field("x-request-id"))

    def test_forward_headers(self):
        """forward_headers limits the client fields sent."""
        self.send(self.gateway("forward_headers: [Cookie], timeout: 2s"), "Cookie: sid=1", "Authorization: x")
        (subrequest,) = self.client.requests
        self.assertIsNone(subrequest.field("authorization"))
        self.assertEqual(subrequest.field("cookie"), b"sid=1")
        self.assertEqual(subrequest.timeout, 2.0)


class AllowTests(ForwardAuthCase):
    """A 2xx answer lets the request go on."""

    def test_copied(self):
        """copy_headers go upstream, replacing the client's; the identity holds them."""
        transport = self.send(
            self.gateway("subject_header: X-User"), "X-User: root", "X-Roles: admin", "X-Other: 1"
        )
        self.client.requests[0].answer(200, b"ok", (b"X-User", b"alice"), (b"X-Ignored", b"1"))
        response = parse_response(transport.value())
        self.assertEqual(response.status, 200)
        body = echoed(response)
        self.assertEqual(body["fields"]["x-user"], ["alice"])
        self.assertNotIn("x-roles", body["fields"])
        self.assertNotIn("x-ignored", body["fields"])
        self.assertEqual(body["fields"]["x-other"], ["1"])
        self.assertEqual(
            body["identity"],
            {"kind": "forward_auth", "subject": "alice", "scopes": [], "claims": {"X-User": "alice"}},
        )

    def test_any_2xx(self):
        """204 counts as yes too."""
        transport = self.send(self.gateway())
        self.client.requests[0].answer(204)
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_answer_kept(self):
        """The whole answer is kept on call.values for later policies (sessions)."""
        options = parse_options(ForwardAuthFactory(), f"{{url: '{AUTH_URL}'}}")
        policy = ForwardAuthPolicy("ext", options, self.client)
        call = PolicyCall(Request("GET", b"/", "/", headers=Headers()), None)
        result = policy.on_request(call)
        self.client.requests[0].answer(200, b"", (b"Set-Cookie", b"s=1"))
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(call.values["forward_auth"].get("set-cookie"), b"s=1")


class DenyTests(ForwardAuthCase):
    """Any other answer goes back to the client as it is."""

    def test_unauthorized_relayed(self):
        """A 401 with its challenge and body."""
        transport = self.send(self.gateway())
        self.client.requests[0].answer(
            401,
            b"who are you?",
            (b"WWW-Authenticate", b'Basic realm="sso"'),
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"12"),
            (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
        )
        response = parse_response(transport.value())
        self.assertEqual((response.status, response.body), (401, b"who are you?"))
        self.assertEqual(response.headers.get("www-authenticate"), b'Basic realm="sso"')
        self.assertEqual(response.headers.get_all("content-length"), [b"12"])
        self.assertEqual(len(response.headers.get_all("date")), 1)
        self.assertIsNone(response.headers.get("x-hop"))
        self.assertEqual(len(response.headers.get_all("x-request-id")), 1)

    def test_redirect_relayed(self):
        """A 302 to a login page."""
        transport = self.send(self.gateway())
        self.client.requests[0].answer(302, b"", (b"Location", b"https://sso.test/login"))
        response = parse_response(transport.value())
        self.assertEqual(response.status, 302)
        self.assertEqual(response.headers.get("location"), b"https://sso.test/login")

    def test_service_down(self):
        """No answer from the service: 503 unavailable, never let through."""
        transport = self.send(self.gateway())
        self.client.requests[0].deferred.errback(ConnectionRefusedError())
        response = parse_response(transport.value())
        self.assertEqual(response.status, 503)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:unavailable")

    def test_timeout(self):
        """A timed-out subrequest is the same."""
        transport = self.send(self.gateway())
        self.client.requests[0].deferred.errback(defer.TimeoutError())
        self.assertEqual(parse_response(transport.value()).status, 503)

    def test_close(self):
        """Closing the policy closes its client."""
        self.gateway().gateway.close()
        self.assertTrue(self.client.closed)


class ConfigTests(SynchronousTestCase):
    """Options."""

    def problems(self, text: str) -> str:
        return str(self.assertRaises(ConfigError, parse_options, ForwardAuthFactory(), text))

    def test_url_required(self):
        """url must be given."""
        self.assertIn("missing required key 'url'", self.problems("{copy_headers: [X-User]}"))

    def test_url_scheme(self):
        """url must be http:// or https://."""
        self.assertIn("expected an http:// or https:// URL", self.problems("{url: 'ftp://x/'}"))

    def test_reserved_copy(self):
        """copy_headers cannot overwrite framing fields."""
        self.assertIn(
            "'Transfer-Encoding' cannot be set by a policy",
            self.problems("{url: 'http://a/', copy_headers: [Transfer-Encoding]}"),
        )

    def test_provides(self):
        """The factory and policy provide their interfaces."""
        verifyObject(IPolicyFactory, ForwardAuthFactory())
        options = parse_options(ForwardAuthFactory(), "{url: 'http://a/'}")
        verifyObject(IPolicy, ForwardAuthPolicy("ext", options, FakeHTTPClient()))


class _Service(Resource):
    """A small auth service: 403 by default, /hang never answers, /big is 5000 bytes."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def render_GET(self, request):
        self.seen.append((request.path, request.getHeader(b"x-test"), request.channel))
        if request.path == b"/hang":
            return NOT_DONE_YET
        if request.path == b"/big":
            return b"x" * 5000
        request.setResponseCode(403)
        request.setHeader(b"X-Reason", b"no")
        return b"denied"


class HTTPClientTests(TestCase):
    """The subrequest client against a real loopback server."""

    def setUp(self) -> None:
        self.service = _Service()
        site = Site(self.service)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = HTTPClient(reactor, max_body=1000)
        self.addCleanup(self.client.close)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    @defer.inlineCallbacks
    def test_answer(self):
        """Status, fields and body come back; fields are sent."""
        answer = yield self.client.get(self.url("/check"), [(b"X-Test", b"1")])
        self.assertIsInstance(answer, Answer)
        self.assertEqual((answer.status, answer.body, answer.get("x-reason")), (403, b"denied", b"no"))
        self.assertEqual(self.service.seen[0][:2], (b"/check", b"1"))

    @defer.inlineCallbacks
    def test_persistent(self):
        """Two subrequests share one connection."""
        yield self.client.get(self.url("/a"))
        yield self.client.get(self.url("/b"))
        self.assertIs(self.service.seen[0][2], self.service.seen[1][2])

    @defer.inlineCallbacks
    def test_timeout(self):
        """No answer within the timeout fails the subrequest."""
        yield self.assertFailure(self.client.get(self.url("/hang"), timeout=0.2), defer.TimeoutError)

    @defer.inlineCallbacks
    def test_body_limit(self):
        """A body over the limit fails the subrequest."""
        yield self.assertFailure(self.client.get(self.url("/big")), SubrequestFailed)
        # The whole small body had arrived: let its connection settle in the pool.
        yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_refused(self):
        """Nothing listening fails the subrequest."""
        port = self.port.getHost().port
        yield self.port.stopListening()
        yield self.assertFailure(
            self.client.get(f"http://127.0.0.1:{port}/"), ConnectionRefusedError
        )
