"""
Tests for API versioning: the recipes of C{docs/api-versioning.md} (loaded
from the page itself), the route keys C{deprecation}, C{sunset},
C{successor} and C{deprecation_link} and the fields they add, and the
C{Host} sent upstream (C{upstreams.NAME.host}).
"""

from __future__ import annotations

import os
import re
import textwrap
from typing import Any, Optional

from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import Config, PolicyConfig, RespondAction
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy
from gatewaykit.policies.deprecation import DeprecationNotice, deprecation_notice
from gatewaykit.testing import (
    GatewayHarness,
    Response,
    make_config,
    parse_response,
    route,
    upstream,
)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
_RECIPE = re.compile(r"```yaml\n# recipe: ([\w-]+)\n(.*?)```", re.DOTALL)

V1 = ("10.0.1.1", 8000)
V2 = ("10.0.2.1", 8000)
JUNE_30 = 1782777600  # 2026-06-30T00:00:00Z
DEC_31 = 1798675200  # 2026-12-31T00:00:00Z
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def recipes() -> dict[str, str]:
    """The recipes of docs/api-versioning.md, by name."""
    with open(os.path.join(DOCS, "api-versioning.md"), encoding="utf-8") as f:
        return dict(_RECIPE.findall(f.read()))


def get(target: str, *fields: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: api.example.com", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Sent:
    """A request through a gateway: where it went, what went, what came back."""

    def __init__(self, gateway: GatewayHarness, data: bytes) -> None:
        self.client, self.client_transport = gateway.connect()
        self.client.dataReceived(data)
        self.target: Optional[tuple[str, int]] = None
        self.head = b""
        if gateway.reactor.tcpClients:
            self.target = gateway.reactor.tcpClients[-1][:2]
            self.upstream, transport = gateway.accept_upstream()
            self.head = transport.value()

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n")[0]

    def respond(self, data: bytes = OK) -> Response:
        self.upstream.dataReceived(data)
        return self.response()

    def response(self) -> Response:
        return parse_response(self.client_transport.value())


def links(response: Response) -> list[bytes]:
    return response.headers.get_all("link")


class RecipeTests(SynchronousTestCase):
    """The three recipes of the versioning guide, as written there."""

    def gateway(self, name: str) -> GatewayHarness:
        config: Config = parse_config(recipes()[name], source=f"{name}.yaml")
        return GatewayHarness(config)

    def send(self, name: str, target: str, *fields: str) -> Sent:
        return Sent(self.gateway(name), get(target, *fields))

    def test_all_found(self) -> None:
        """The page has the three recipes."""
        self.assertEqual(
            sorted(recipes()),
            ["version-in-header", "version-in-media-type", "version-in-path"],
        )

    def test_path_v1(self) -> None:
        """/v1/... goes to users-v1 without its prefix, and is announced deprecated."""
        sent = self.send("version-in-path", "/v1/users/7?x=1")
        self.assertEqual((sent.target, sent.request_line), (V1, b"GET /users/7?x=1 HTTP/1.1"))
        self.assertIn(b"\r\nX-Forwarded-Prefix: /v1\r\n", sent.head)
        response = sent.respond()
        self.assertEqual(response.headers.get("deprecation"), b"@%d" % JUNE_30)
        self.assertEqual(response.headers.get("sunset"), b"Thu, 31 Dec 2026 00:00:00 GMT")
        self.assertEqual(
            links(response),
            [
                b'</v2/>; rel="successor-version"',
                b'<https://developer.example.com/deprecations/v1>; rel="deprecation"',
            ],
        )

    def test_path_v2(self) -> None:
        """/v2/... goes to users-v2 without its prefix, not deprecated."""
        sent = self.send("version-in-path", "/v2/users/7")
        self.assertEqual((sent.target, sent.request_line), (V2, b"GET /users/7 HTTP/1.1"))
        response = sent.respond()
        self.assertIsNone(response.headers.get("deprecation"))
        self.assertEqual(links(response), [])

    def test_path_other(self) -> None:
        """/v10 is not /v1: no route."""
        sent = self.send("version-in-path", "/v10/users")
        self.assertEqual((sent.target, sent.response().status), (None, 404))

    def test_header(self) -> None:
        """Accept-Version picks the upstream; without it, the current one."""
        for fields, target in ((("Accept-Version: 1",), V1), (("Accept-Version: 2",), V2), ((), V2)):
            sent = self.send("version-in-header", "/users/7", *fields)
            self.assertEqual((sent.target, sent.request_line), (target, b"GET /users/7 HTTP/1.1"))
            response = sent.respond()
            self.assertEqual(response.headers.get("vary"), b"Accept-Version")
            deprecated = response.headers.get("deprecation") is not None
            self.assertEqual(deprecated, target == V1)

    def test_header_unknown_version(self) -> None:
        """A version the API does not have is 400, sent nowhere."""
        sent = self.send("version-in-header", "/users/7", "Accept-Version: 3")
        response = sent.response()
        self.assertEqual((sent.target, response.status), (None, 400))
        self.assertIn(b"unknown API version", response.body)

    def test_media_type(self) -> None:
        """The vendor media type picks v1, among other types too; anything else gets v2."""
        for accept, target in (
            ("application/vnd.acme.v1+json", V1),
            ("text/html, application/vnd.acme.v1+json;q=0.9", V1),
            ("application/vnd.acme.v2+json", V2),
            ("application/vnd.acmeXv1+json", V2),
            ("application/json", V2),
        ):
            sent = self.send("version-in-media-type", "/users/7", f"Accept: {accept}")
            self.assertEqual(sent.target, target, accept)
            self.assertEqual(sent.respond().headers.get("vary"), b"Accept")

    def test_media_type_deprecation_time(self) -> None:
        """A time with its offset is exact to the second."""
        sent = self.send("version-in-media-type", "/users", "Accept: application/vnd.acme.v1+json")
        response = sent.respond()
        self.assertEqual(response.headers.get("deprecation"), b"@%d" % (JUNE_30 + 12 * 3600))


@implementer(IPolicy)
class Refuse:
    name = "refuse"

    def on_request(self, call: Any) -> GatewayError:
        return GatewayError(401, "unauthorized", "no credentials")


class RefuseFactory:
    name = "test.refuse"
    options = None

    def build(self, name: str, options: Any, context: Any) -> Refuse:
        return Refuse()


def deprecated_gateway(policies: tuple[str, ...] = (), **action: Any) -> GatewayHarness:
    """A gateway whose one route is deprecated, with C{action} (default: upstream app)."""
    action = action or {"upstream": "app"}
    config = make_config(
        routes=[
            route(
                "old",
                path_prefix="/",
                policies=policies,
                deprecation=JUNE_30,
                sunset=DEC_31,
                successor="https://api.example.com/v2/",
                **action,
            )
        ],
        upstreams=[upstream("app", "10.0.0.1:8000")],
        policies=[PolicyConfig("refuse", "test.refuse")],
    )
    return GatewayHarness(config, policy_types={"test.refuse": RefuseFactory()})


class DeprecationNoticeTests(SynchronousTestCase):
    """The fields a deprecated route adds to its responses."""

    def assertAnnounced(self, response: Response) -> None:
        self.assertEqual(response.headers.get_all("deprecation"), [b"@1782777600"])
        self.assertEqual(response.headers.get_all("sunset"), [b"Thu, 31 Dec 2026 00:00:00 GMT"])
        self.assertIn(b'<https://api.example.com/v2/>; rel="successor-version"', links(response))

    def test_upstream_response(self) -> None:
        """They replace the upstream's Deprecation and Sunset and join its links."""
        sent = Sent(deprecated_gateway(), get("/x"))
        response = sent.respond(
            b"HTTP/1.1 200 OK\r\nDeprecation: @1\r\nSunset: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
            b'Link: </next>; rel="next"\r\nContent-Length: 2\r\n\r\nok'
        )
        self.assertAnnounced(response)
        self.assertEqual(links(response)[0], b'</next>; rel="next"')
        self.assertEqual(response.body, b"ok")

    def test_gateway_error(self) -> None:
        """A 502 of the gateway carries them."""
        gateway = deprecated_gateway()
        client, transport = gateway.connect()
        client.dataReceived(get("/x"))
        while not transport.value():
            gateway.refuse_upstream(ConnectionRefusedError())
        response = parse_response(transport.value())
        self.assertEqual(response.status, 502)
        self.assertAnnounced(response)

    def test_policy_answer(self) -> None:
        """An answer of the route's own policies carries them."""
        response = deprecated_gateway(("refuse",)).request(get("/x"))
        self.assertEqual(response.status, 401)
        self.assertAnnounced(response)

    def test_respond_action(self) -> None:
        """Any action's responses carry them."""
        response = deprecated_gateway(respond=RespondAction(200, "hi")).request(get("/x"))
        self.assertAnnounced(response)

    def test_only_given_keys(self) -> None:
        """Each key adds its own field only."""
        notice = deprecation_notice(route("r", deprecation_link="/docs/deprecations"))
        assert notice is not None
        self.assertEqual(notice.fields, ((b"Link", b'</docs/deprecations>; rel="deprecation"'),))

    def test_none(self) -> None:
        """A route announcing nothing gets no notice."""
        self.assertIsNone(deprecation_notice(route("r")))

    def test_interface(self) -> None:
        """DeprecationNotice provides IPolicy."""
        self.assertTrue(verifyObject(IPolicy, DeprecationNotice(route("r", sunset=DEC_31))))


COMMON = """
listeners: {web: {protocol: http, bind: ":8080"}}
upstreams: {app: {targets: ["127.0.0.1:9001"]}}
"""


def with_host(value: str) -> str:
    """A config whose upstream app has host C{value} (at line 2, column 54)."""
    return (
        'listeners: {web: {protocol: http, bind: ":8080"}}\n'
        f'upstreams: {{app: {{targets: ["127.0.0.1:9001"], host: "{value}"}}}}\n'
        "routes: [{name: r, upstream: app}]\n"
    )


class ConfigTests(SynchronousTestCase):
    """The route keys and the upstream's host as the config loader reads them."""

    def route_config(self, keys: str) -> Any:
        text = COMMON + "routes:\n  - {name: r, upstream: app, " + keys + "}\n"
        return parse_config(text).routes[0]

    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            parse_config(textwrap.dedent(text), source="gw.yaml")
        return [str(p) for p in caught.exception.problems]

    def route_problem(self, keys: str) -> str:
        [problem] = self.problems(COMMON + "routes:\n  - {name: r, upstream: app, " + keys + "}\n")
        return problem

    def test_dates(self) -> None:
        """Dates are midnight UTC; times keep their offset; quoted or not."""
        self.assertEqual(self.route_config("deprecation: 2026-06-30").deprecation, JUNE_30)
        self.assertEqual(self.route_config("deprecation: '2026-06-30'").deprecation, JUNE_30)
        self.assertEqual(
            self.route_config("sunset: 2026-06-30T02:00:00+02:00").sunset, JUNE_30
        )
        self.assertEqual(self.route_config("sunset: 2026-06-30T00:00:01Z").sunset, JUNE_30 + 1)

    def test_defaults(self) -> None:
        """Without the keys, nothing is announced."""
        config = self.route_config("timeout: 5s")
        self.assertEqual(
            (config.deprecation, config.sunset, config.successor, config.deprecation_link),
            (None, None, None, None),
        )

    def test_not_a_date(self) -> None:
        """Anything but an ISO 8601 date or time is an error at its value."""
        for value in ("31/12/2026", "tomorrow", "2026-13-01", "true", "[2026]"):
            problem = self.route_problem(f"deprecation: {value}")
            # YAML itself reads 2026-13-01 as a (wrong) timestamp.
            self.assertRegex(problem, "expected an ISO 8601 date|invalid timestamp")
            self.assertTrue(problem.startswith("gw.yaml:5:"), problem)

    def test_time_needs_offset(self) -> None:
        """A time without its offset is ambiguous."""
        self.assertIn("give the time's offset", self.route_problem("sunset: '2026-12-31T10:00:00'"))

    def test_sunset_before_deprecation(self) -> None:
        """The sunset cannot come before the deprecation."""
        problem = self.route_problem("deprecation: 2026-12-31, sunset: 2026-06-30")
        self.assertIn("the sunset cannot be earlier than the deprecation", problem)

    def test_links(self) -> None:
        """Links are paths or http(s) URLs without characters that break the field."""
        self.assertEqual(self.route_config("successor: /v2/").successor, "/v2/")
        self.assertEqual(
            self.route_config("deprecation_link: 'https://d.example.com/x?y=1'").deprecation_link,
            "https://d.example.com/x?y=1",
        )
        for value in ("v2/", "//evil.example/", "ftp://x/", "'/a b'", "'/a>b'", "'/a\"b'"):
            problem = self.route_problem(f"successor: {value}")
            self.assertRegex(problem, "expected a path like /v2/|a link cannot contain")

    def test_problem_position(self) -> None:
        """A wrong value is reported at its line and column."""
        problems = self.problems(
            """\
            listeners: {web: {protocol: http, bind: ":8080"}}
            upstreams: {app: {targets: ["127.0.0.1:9001"]}}
            routes:
              - name: r
                upstream: app
                deprecation: 31/12/2026
                successor: v2
            """
        )
        self.assertEqual(
            problems,
            [
                "gw.yaml:6:18: expected an ISO 8601 date like 2026-12-31 or a time with its"
                " offset like 2026-12-31T23:59:59Z, got '31/12/2026'",
                "gw.yaml:7:16: expected a path like /v2/ or an http(s) URL, got 'v2'",
            ],
        )

    def test_upstream_host(self) -> None:
        """upstreams.NAME.host: a host name or address with an optional port."""
        for value in ("api.internal", "api.internal:8443", "10.0.0.1", "[::1]:8080", "[::1]"):
            self.assertEqual(parse_config(with_host(value)).upstreams["app"].host, value)

    def test_upstream_host_default(self) -> None:
        """Without host, the client's is kept."""
        config = parse_config(COMMON + "routes: [{name: r, upstream: app}]\n")
        self.assertIsNone(config.upstreams["app"].host)
        self.assertIsNone(config.upstreams["app"].host_field)

    def test_upstream_host_invalid(self) -> None:
        """Wildcards, spaces, bare IPv6 and bad ports are errors at the value."""
        for value, message in (
            ("*.internal", "cannot be a wildcard"),
            ("a b", "not a valid host name"),
            ("::1", "put an IPv6 address in brackets"),
            ("api:99999", "expected a port"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config(with_host(value))
            [problem] = caught.exception.problems
            self.assertIn(message, problem.message)
            self.assertEqual((problem.line, problem.col), (2, 54))


class UpstreamHostTests(SynchronousTestCase):
    """The Host the upstream receives."""

    def sent(self, **upstream_keys: Any) -> bytes:
        config = make_config(
            routes=[route("r", path_prefix="/", upstream="app")],
            upstreams=[upstream("app", "10.0.0.1:8000", **upstream_keys)],
        )
        return Sent(GatewayHarness(config), get("/x")).head

    def test_kept(self) -> None:
        """By default the client's Host goes upstream."""
        head = self.sent()
        self.assertIn(b"\r\nHost: api.example.com\r\n", head)

    def test_set(self) -> None:
        """With host, that Host goes upstream; X-Forwarded-Host keeps the client's."""
        head = self.sent(host="api.internal:8443")
        self.assertIn(b"\r\nHost: api.internal:8443\r\n", head)
        self.assertNotIn(b"Host: api.example.com\r\n", head.replace(b"X-Forwarded-Host", b""))
        self.assertIn(b"\r\nX-Forwarded-Host: api.example.com\r\n", head)
