"""
Tests for L{gatewaykit.policies.cors}: preflights answered at the gateway,
actual requests marked, origins matched safely, and error answers of later
policies still readable by the browser.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import PolicyConfig, RespondAction
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.cors import CORS, CORSFactory, CORSOptions, parse_origin
from gatewaykit.testing import GatewayHarness, Response, make_config, route, upstream

APP = "https://app.example.com"
EVIL = "https://evil.example.net"


@implementer(IPolicy)
class Refuse:
    """Answers every request with a 401, as an authentication policy would."""

    name = "auth"

    def on_request(self, call: Any) -> GatewayError:
        return GatewayError(401, "unauthorized", "no credentials")


@implementer(IPolicyFactory)
class RefuseFactory:
    name = "test.refuse"
    options = None

    def build(self, name: str, options: Any, context: Any) -> Refuse:
        return Refuse()


def harness(
    *, refuse: bool = False, respond_headers: tuple = (), action: Any = None, **options: Any
) -> GatewayHarness:
    """A gateway whose route runs a cors policy (then maybe a refusing one)."""
    options.setdefault("origins", (APP,))
    names = ("cors", "auth") if refuse else ("cors",)
    if action is None:
        action = {"respond": RespondAction(200, "hello", respond_headers)}
    config = make_config(
        routes=[route("r", path_prefix="/", policies=names, **action)],
        upstreams=[upstream("app", "10.0.0.1:8000")],
        policies=[
            PolicyConfig("cors", "cors", CORSOptions(**options)),
            PolicyConfig("auth", "test.refuse"),
        ],
    )
    return GatewayHarness(
        config, policy_types={"cors": CORSFactory(), "test.refuse": RefuseFactory()}
    )


def send(gateway: GatewayHarness, method: str = "GET", **fields: str) -> Response:
    """The response to a request with C{fields} (underscores for dashes)."""
    lines = [f"{method} /things HTTP/1.1", "Host: api.example.com"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in fields.items()]
    return gateway.request(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def preflight(gateway: GatewayHarness, origin: str = APP, method: str = "PUT", **fields: str) -> Response:
    return send(
        gateway, "OPTIONS", Origin=origin, Access_Control_Request_Method=method, **fields
    )


def cors_fields(response: Response) -> dict[str, str]:
    """The response's Access-Control-* fields by lower-case name."""
    return {
        name.decode().lower(): value.decode()
        for name, value in response.headers
        if name.lower().startswith(b"access-control-")
    }


def vary(response: Response) -> list[str]:
    return [
        token.strip().lower()
        for value in response.headers.get_all("vary")
        for token in value.decode().split(",")
    ]


class PreflightTests(SynchronousTestCase):
    """OPTIONS with Origin and Access-Control-Request-Method."""

    def test_allowed(self) -> None:
        """An allowed preflight is answered 204 with the Access-Control-Allow-* fields."""
        gateway = harness(
            methods=("GET", "PUT"), headers=("X-Token", "Content-Type"), max_age=600.0
        )
        response = preflight(gateway, Access_Control_Request_Headers="x-token,content-type")
        self.assertEqual((response.status, response.body), (204, b""))
        self.assertEqual(
            cors_fields(response),
            {
                "access-control-allow-origin": APP,
                "access-control-allow-methods": "GET, PUT",
                "access-control-allow-headers": "X-Token, Content-Type",
                "access-control-max-age": "600",
            },
        )
        self.assertIn("origin", vary(response))
        self.assertIsNotNone(response.headers.get("x-request-id"))

    def test_never_reaches_upstream(self) -> None:
        """A preflight is answered without connecting to the upstream."""
        gateway = harness(methods=("PUT",), action={"upstream": "app"})
        self.assertEqual(preflight(gateway).status, 204)
        self.assertEqual(gateway.reactor.tcpClients, [])

    def test_answered_before_later_policies(self) -> None:
        """A preflight carries no credentials: a later auth policy never sees it."""
        gateway = harness(methods=("PUT",), refuse=True)
        self.assertEqual(preflight(gateway).status, 204)

    def test_origin_refused(self) -> None:
        """A preflight from another origin gets a 403 without Access-Control-Allow-*."""
        response = preflight(harness(methods=("PUT",)), origin=EVIL)
        self.assertEqual(response.status, 403)
        self.assertEqual(cors_fields(response), {})
        self.assertIn(b"origin", response.body)

    def test_method_refused(self) -> None:
        """A preflight for a method not listed gets a 403."""
        response = preflight(harness(methods=("GET", "POST")), method="DELETE")
        self.assertEqual((response.status, cors_fields(response)), (403, {}))

    def test_header_refused(self) -> None:
        """A preflight asking for a header not listed gets a 403 naming it."""
        gateway = harness(methods=("PUT",), headers=("X-Token",))
        response = preflight(gateway, Access_Control_Request_Headers="x-token, x-secret")
        self.assertEqual(response.status, 403)
        self.assertIn(b"x-secret", response.body)

    def test_headers_case_insensitive(self) -> None:
        """Requested header names match the configured ones whatever their case."""
        gateway = harness(methods=("PUT",), headers=("x-token",))
        response = preflight(gateway, Access_Control_Request_Headers="X-TOKEN")
        self.assertEqual(response.status, 204)

    def test_any_method_and_header(self) -> None:
        """With '*', the requested method and headers are reflected."""
        gateway = harness(methods=("*",), headers=("*",))
        response = preflight(gateway, method="PATCH", Access_Control_Request_Headers="x-a, x-b")
        fields = cors_fields(response)
        self.assertEqual(fields["access-control-allow-methods"], "PATCH")
        self.assertEqual(fields["access-control-allow-headers"], "x-a, x-b")

    def test_credentials(self) -> None:
        """With credentials, the origin is named and credentials allowed."""
        response = preflight(harness(methods=("PUT",), credentials=True))
        fields = cors_fields(response)
        self.assertEqual(fields["access-control-allow-origin"], APP)
        self.assertEqual(fields["access-control-allow-credentials"], "true")

    def test_any_origin(self) -> None:
        """With origins ['*'] and no credentials, the answer is '*'."""
        response = preflight(harness(origins=("*",), methods=("PUT",)), origin=EVIL)
        self.assertEqual(cors_fields(response)["access-control-allow-origin"], "*")

    def test_options_without_request_method(self) -> None:
        """An OPTIONS without Access-Control-Request-Method goes on like any request."""
        response = send(harness(methods=("OPTIONS",)), "OPTIONS", Origin=APP)
        self.assertEqual((response.status, response.body), (200, b"hello"))
        self.assertEqual(cors_fields(response)["access-control-allow-origin"], APP)


class ActualRequestTests(SynchronousTestCase):
    """Requests that are not preflights."""

    def test_allowed_origin(self) -> None:
        """The response names the origin, exposes the listed headers and varies on Origin."""
        response = send(harness(expose_headers=("X-Total",)), Origin=APP)
        self.assertEqual(response.body, b"hello")
        self.assertEqual(
            cors_fields(response),
            {"access-control-allow-origin": APP, "access-control-expose-headers": "X-Total"},
        )
        self.assertEqual(vary(response), ["origin"])

    def test_credentials(self) -> None:
        """With credentials the response says so."""
        response = send(harness(credentials=True), Origin=APP)
        self.assertEqual(cors_fields(response)["access-control-allow-credentials"], "true")

    def test_any_origin(self) -> None:
        """With '*' and no credentials: '*' and no Vary (the answer never changes)."""
        response = send(harness(origins=("*",)), Origin=EVIL)
        self.assertEqual(cors_fields(response), {"access-control-allow-origin": "*"})
        self.assertEqual(vary(response), [])

    def test_refused_origin(self) -> None:
        """Another origin's request goes on but its response carries no CORS fields."""
        response = send(harness(), Origin=EVIL)
        self.assertEqual((response.status, response.body), (200, b"hello"))
        self.assertEqual(cors_fields(response), {})
        self.assertEqual(vary(response), ["origin"])

    def test_method_not_listed(self) -> None:
        """A request whose method is not listed is not marked readable."""
        response = send(harness(methods=("GET",)), "DELETE", Origin=APP)
        self.assertEqual(cors_fields(response), {})

    def test_upstream_fields_replaced(self) -> None:
        """The upstream's own Access-Control-* fields never reach the client."""
        upstream_fields = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Max-Age", "9"))
        allowed = send(harness(respond_headers=upstream_fields), Origin=APP)
        refused = send(harness(respond_headers=upstream_fields), Origin=EVIL)
        self.assertEqual(cors_fields(allowed), {"access-control-allow-origin": APP})
        self.assertEqual(cors_fields(refused), {})

    def test_vary_merged(self) -> None:
        """An existing Vary is kept and Origin is added once."""
        response = send(harness(respond_headers=(("Vary", "Accept-Encoding"),)), Origin=APP)
        self.assertEqual(vary(response), ["accept-encoding", "origin"])
        response = send(harness(respond_headers=(("Vary", "origin"),)), Origin=APP)
        self.assertEqual(vary(response), ["origin"])

    def test_no_origin(self) -> None:
        """Without Origin nothing is added but Vary: Origin (the answer depends on it)."""
        response = send(harness())
        self.assertEqual((cors_fields(response), vary(response)), ({}, ["origin"]))
        response = send(harness(origins=("*",)))
        self.assertEqual((cors_fields(response), vary(response)), ({}, []))

    def test_error_answer_marked(self) -> None:
        """A later policy's 401 carries the CORS fields, so the page can read it."""
        response = send(harness(refuse=True, credentials=True), Origin=APP)
        self.assertEqual(response.status, 401)
        self.assertEqual(cors_fields(response)["access-control-allow-origin"], APP)
        self.assertEqual(cors_fields(response)["access-control-allow-credentials"], "true")

    def test_several_origin_fields(self) -> None:
        """A request with two Origin fields is allowed nothing."""
        gateway = harness()
        response = gateway.request(
            b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: %s\r\nOrigin: %s\r\n\r\n"
            % (APP.encode(), APP.encode())
        )
        self.assertEqual(cors_fields(response), {})


class OriginMatchingTests(SynchronousTestCase):
    """Which origins an entry allows."""

    def policy(self, *origins: str) -> CORS:
        return CORS("cors", CORSOptions(origins=tuple(map(parse_origin, origins))))

    def test_exact(self) -> None:
        """An exact origin matches itself only: not another scheme, port or subdomain."""
        policy = self.policy("https://app.example.com")
        self.assertEqual(
            [
                policy.allows_origin(o)
                for o in (
                    "https://app.example.com",
                    "http://app.example.com",
                    "https://app.example.com:8443",
                    "https://x.app.example.com",
                    "https://app.example.com.evil.net",
                )
            ],
            [True, False, False, False, False],
        )

    def test_normalised(self) -> None:
        """Config origins lose case, default port and trailing slash."""
        self.assertEqual(parse_origin("HTTPS://App.Example.com:443/"), "https://app.example.com")
        self.assertEqual(parse_origin("http://localhost:3000"), "http://localhost:3000")
        self.assertTrue(self.policy("https://App.example.com/").allows_origin(APP))

    def test_wildcard_subdomain(self) -> None:
        """'*.' matches one or more labels, never the bare domain or a look-alike."""
        policy = self.policy("https://*.example.com")
        self.assertEqual(
            [
                policy.allows_origin(o)
                for o in (
                    "https://a.example.com",
                    "https://a.b.example.com",
                    "https://example.com",
                    "https://evilexample.com",
                    "https://a.example.com.evil.net",
                    "http://a.example.com",
                )
            ],
            [True, True, False, False, False, False],
        )

    def test_regex_anchored(self) -> None:
        """A '~' pattern must match the whole origin."""
        policy = self.policy(r"~https://app[0-9]+\.example\.com")
        self.assertEqual(
            [
                policy.allows_origin(o)
                for o in ("https://app1.example.com", "https://app1.example.com.evil.net")
            ],
            [True, False],
        )

    def test_bad_origins(self) -> None:
        """Paths, missing schemes, null and misplaced wildcards are refused."""
        for text in ("https://a.com/path", "a.com", "null", "https://a.*.com", "~("):
            with self.assertRaises(ValueError):
                parse_origin(text)


CONFIG = """\
listeners: {web: {protocol: http, bind: "127.0.0.1:0"}}
policies:
  cors: %s
routes:
  - {name: r, respond: {status: 200}, policies: [cors]}
"""


class OptionsTests(SynchronousTestCase):
    """The policy's keys in a config file."""

    def test_parsed(self) -> None:
        """The SPEC's example parses; methods are upper-cased and the max age in seconds."""
        config = parse_config(
            CONFIG
            % '{type: cors, origins: ["https://app.example.com"], methods: [get, POST],'
            " max_age: 10m}"
        )
        options = config.policies["cors"].options
        self.assertEqual(
            (options.origins, options.methods, options.max_age),
            (("https://app.example.com",), ("GET", "POST"), 600.0),
        )
        self.assertEqual(options.credentials, False)

    def test_credentials_with_any_origin(self) -> None:
        """credentials: true with origins '*' is an error, not a reflection of every origin."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG % '{type: cors, origins: ["*"], credentials: true}')
        self.assertIn("cannot be used with credentials", str(caught.exception))

    def test_origins_required(self) -> None:
        """origins must be given."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG % "{type: cors, methods: [GET]}")
        self.assertIn("missing required key 'origins'", str(caught.exception))

    def test_bad_header_name(self) -> None:
        """A header name with a space is an error at its position."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG % '{type: cors, origins: ["*"], headers: ["X Token"]}')
        self.assertIn("not a valid header name", str(caught.exception))

    def test_provides_interfaces(self) -> None:
        """The factory and the policy provide their interfaces."""
        verifyObject(IPolicyFactory, CORSFactory())
        verifyObject(IPolicy, CORS("cors", CORSOptions(origins=(APP,))))
