"""
Tests for L{gatewaykit.policies.headers}: fields removed, set and added on
the request the upstream receives and on the response the client receives,
placeholders filled from the request and its identity, and every mistake
refused when the config loads.
"""

from __future__ import annotations

import textwrap
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import PolicyConfig
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.plugins import policy_factories
from gatewaykit.policies.chain import Identity
from gatewaykit.policies.headers import HeadersFactory, HeadersOptions, HeadersPolicy
from gatewaykit.testing import (
    GatewayHarness,
    Response,
    make_config,
    parse_response,
    route,
    upstream,
)
from tests.fixtures.auth import parse_options

UPSTREAM_OK = (
    b"HTTP/1.1 200 OK\r\nServer: upstream/1.0\r\nX-Powered-By: php\r\n"
    b"Content-Length: 2\r\n\r\nok"
)


@implementer(IPolicy)
class Authenticate:
    """Sets the identity an authentication policy would have set."""

    name = "auth"

    def __init__(self, identity: Optional[Identity]) -> None:
        self.identity = identity

    def on_request(self, call: Any) -> None:
        call.identity = self.identity


@implementer(IPolicy)
class Refuse:
    """Answers 401, as an authentication policy refusing would."""

    name = "refuse"

    def on_request(self, call: Any) -> GatewayError:
        return GatewayError(401, "unauthorized", "no credentials")


@implementer(IPolicyFactory)
class FixedFactory:
    """A policy type whose one policy is given."""

    options = None

    def __init__(self, name: str, policy: Any) -> None:
        self.name = name
        self.policy = policy

    def build(self, name: str, options: Any, context: Any) -> Any:
        return self.policy


def headers_options(text: str) -> HeadersOptions:
    """A headers policy's options from YAML flow text."""
    options: HeadersOptions = parse_options(HeadersFactory(), text)
    return options


def harness(
    text: str, identity: Optional[Identity] = None, refuse: bool = False
) -> GatewayHarness:
    """
    A gateway proxying C{/} to one upstream through an identity-setting
    policy, the headers policy C{text} and maybe a refusing one.
    """
    names = ("auth", "hdrs", "refuse") if refuse else ("auth", "hdrs")
    config = make_config(
        routes=[route("r", path_prefix="/", upstream="app", policies=names)],
        upstreams=[upstream("app", "10.0.0.1:8000")],
        policies=[
            PolicyConfig("auth", "test.auth"),
            PolicyConfig("hdrs", "headers", headers_options(text)),
            PolicyConfig("refuse", "test.refuse"),
        ],
    )
    return GatewayHarness(
        config,
        policy_types={
            "headers": HeadersFactory(),
            "test.auth": FixedFactory("test.auth", Authenticate(identity)),
            "test.refuse": FixedFactory("test.refuse", Refuse()),
        },
    )


def request(*fields: str, target: str = "/things?page=2") -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: api.example.com", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Forwarded:
    """One request through the gateway: what the upstream got, and the answer."""

    def __init__(self, gateway: GatewayHarness, data: bytes) -> None:
        self.client, self.client_transport = gateway.connect()
        self.client.dataReceived(data)
        self.upstream, self.upstream_transport = gateway.accept_upstream()
        head = self.upstream_transport.value().split(b"\r\n\r\n")[0].decode("latin-1")
        self.request_line, *lines = head.split("\r\n")
        self.fields = [tuple(line.split(": ", 1)) for line in lines]

    def values(self, name: str) -> list[str]:
        """The values of the fields called C{name} the upstream received."""
        return [value for field, value in self.fields if field.lower() == name.lower()]

    def respond(self, data: bytes = UPSTREAM_OK) -> Response:
        self.upstream.dataReceived(data)
        return parse_response(self.client_transport.value())


def forward(text: str, *fields: str, identity: Optional[Identity] = None, **kwargs: Any) -> Forwarded:
    return Forwarded(harness(text, identity), request(*fields, **kwargs))


def jwt_identity(**claims: Any) -> Identity:
    return Identity("jwt", claims.get("sub", ""), frozenset(), claims)


class RequestEditTests(SynchronousTestCase):
    """What the upstream receives."""

    def test_set_replaces(self) -> None:
        """set drops every field of that name, then adds one with the value."""
        sent = forward("{request: {set: {X-Env: prod}}}", "X-Env: a", "X-Env: b")
        self.assertEqual(sent.values("x-env"), ["prod"])

    def test_add_keeps(self) -> None:
        """add appends a field and keeps the client's."""
        sent = forward("{request: {add: {X-Tag: gk}}}", "X-Tag: client")
        self.assertEqual(sent.values("x-tag"), ["client", "gk"])

    def test_remove(self) -> None:
        """remove drops every field of that name, whatever its case."""
        sent = forward("{request: {remove: [x-secret]}}", "X-Secret: 1", "x-SECRET: 2", "X-Kept: 3")
        self.assertEqual((sent.values("x-secret"), sent.values("x-kept")), ([], ["3"]))

    def test_order(self) -> None:
        """remove, then set, then add, whatever the order in the file."""
        sent = forward(
            "{request: {add: {X-A: added}, set: {X-A: set}, remove: [X-A]}}", "X-A: client"
        )
        self.assertEqual(sent.values("x-a"), ["set", "added"])

    def test_request_placeholders(self) -> None:
        """The request's own values fill placeholders."""
        text = (
            "{request: {set: {X-All: '{client_ip} {host} {method} {scheme} {path}"
            " {query} {uri} {route}', X-Id: '{request_id}'}}}"
        )
        sent = forward(text)
        self.assertEqual(
            sent.values("x-all"),
            ["127.0.0.1 api.example.com GET http /things page=2 /things?page=2 r"],
        )
        self.assertEqual(sent.values("x-id"), sent.values("x-request-id"))

    def test_header_cookie_query_placeholders(self) -> None:
        """{header.NAME}, {cookie.NAME} and {query.NAME} read the client's request."""
        text = (
            "{request: {set: {X-Copy: '{header.X-Tenant}/{cookie.lang}/{query.page}'}}}"
        )
        sent = forward(text, "X-Tenant: acme", "Cookie: lang=fr; other=1")
        self.assertEqual(sent.values("x-copy"), ["acme/fr/2"])

    def test_jwt_claims(self) -> None:
        """{jwt.CLAIM} reads the token's claims; lists are joined with commas."""
        sent = forward(
            "{request: {set: {X-User: '{jwt.sub}', X-Roles: '{jwt.roles}', X-Org: '{jwt.https://acme.example/org}'}}}",
            identity=jwt_identity(sub="user-42", roles=["a", "b"], **{"https://acme.example/org": "acme"}),
        )
        self.assertEqual(
            (sent.values("x-user"), sent.values("x-roles"), sent.values("x-org")),
            (["user-42"], ["a,b"], ["acme"]),
        )

    def test_jwt_needs_jwt_identity(self) -> None:
        """{jwt.CLAIM} has no value when another kind of authentication ran."""
        sent = forward(
            "{request: {add: {X-User: '{jwt.sub}'}}}",
            identity=Identity("api_key", "billing", claims={"sub": "billing"}),
        )
        self.assertEqual(sent.values("x-user"), [])

    def test_identity_and_claim(self) -> None:
        """{identity.subject}, {identity.kind} and {claim.NAME} read any identity."""
        sent = forward(
            "{request: {set: {X-Who: '{identity.kind}:{identity.subject}:{claim.team}'}}}",
            identity=Identity("api_key", "billing", claims={"team": "payments"}),
        )
        self.assertEqual(sent.values("x-who"), ["api_key:billing:payments"])

    def test_missing_value_set(self) -> None:
        """A set field without a value is left out, and the client's copy still dropped."""
        sent = forward("{request: {set: {X-User: 'user {jwt.sub}'}}}", "X-User: admin")
        self.assertEqual(sent.values("x-user"), [])

    def test_missing_value_add(self) -> None:
        """An added field without a value is left out; the client's copy stays."""
        sent = forward("{request: {add: {X-Tenant: '{header.X-Org}'}}}", "X-Tenant: t1")
        self.assertEqual(sent.values("x-tenant"), ["t1"])

    def test_control_characters_left_out(self) -> None:
        """A value holding control characters (from a claim) is not sent."""
        sent = forward(
            "{request: {set: {X-User: '{jwt.sub}'}}}",
            identity=jwt_identity(sub="evil\r\nX-Admin: 1"),
        )
        self.assertEqual((sent.values("x-user"), sent.values("x-admin")), ([], []))

    def test_literal_braces(self) -> None:
        """{{ and }} are literal braces."""
        sent = forward("{request: {set: {X-Json: '{{\"m\": \"{method}\"}}'}}}")
        self.assertEqual(sent.values("x-json"), ['{"m": "GET"}'])

    def test_number_value(self) -> None:
        """A number is taken as written."""
        sent = forward("{request: {set: {X-Version: 2}}}")
        self.assertEqual(sent.values("x-version"), ["2"])


class ResponseEditTests(SynchronousTestCase):
    """What the client receives."""

    def test_upstream_response(self) -> None:
        """Fields are removed, set and added on the upstream's response."""
        sent = forward(
            "{response: {remove: [Server, X-Powered-By], set: {Cache-Control: no-store},"
            " add: {X-Request: '{method} {path}'}}}"
        )
        response = sent.respond()
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.headers.get("server"))
        self.assertIsNone(response.headers.get("x-powered-by"))
        self.assertEqual(response.headers.get_all("cache-control"), [b"no-store"])
        self.assertEqual(response.headers.get_all("x-request"), [b"GET /things"])
        self.assertEqual(response.body, b"ok")

    def test_request_untouched(self) -> None:
        """Response edits do not change the request."""
        sent = forward("{response: {remove: [Server]}}", "Server: client-sent")
        self.assertEqual(sent.values("server"), ["client-sent"])

    def test_gateway_answers(self) -> None:
        """Answers of later policies are edited too."""
        gateway = harness("{response: {set: {X-Edge: edge}}}", refuse=True)
        response = gateway.request(request())
        self.assertEqual(response.status, 401)
        self.assertEqual(response.headers.get("x-edge"), b"edge")

    def test_identity_in_response(self) -> None:
        """Response values may use the identity too."""
        sent = forward(
            "{response: {set: {X-User: '{identity.subject}'}}}",
            identity=jwt_identity(sub="user-42"),
        )
        self.assertEqual(sent.respond().headers.get("x-user"), b"user-42")


class ConfigTests(SynchronousTestCase):
    """Mistakes refused when the config loads, at their line and column."""

    def problem(self, text: str) -> str:
        """The one problem with options C{text}."""
        with self.assertRaises(ConfigError) as caught:
            headers_options(text)
        problems = [str(p) for p in caught.exception.problems]
        self.assertEqual(len(problems), 1, problems)
        return problems[0]

    def test_unknown_placeholder(self) -> None:
        """An unknown placeholder is an error at its value, with a hint."""
        problem = self.problem("{request: {set: {X-A: '{client_id}'}}}")
        self.assertTrue(problem.startswith("policy.yaml:1:23: unknown placeholder {client_id}"))
        self.assertIn("did you mean 'client_ip'", problem)

    def test_unknown_namespace(self) -> None:
        """A placeholder with an unknown namespace is an error."""
        self.assertIn("unknown placeholder {env.HOME}", self.problem("{request: {add: {X-A: '{env.HOME}'}}}"))

    def test_identity_field(self) -> None:
        """{identity.*} is only subject or kind."""
        self.assertIn("identity.subject", self.problem("{request: {add: {X-A: '{identity.sub}'}}}"))

    def test_header_placeholder_name(self) -> None:
        """{header.NAME} needs a valid field name."""
        self.assertIn("not a valid header name", self.problem("{request: {add: {X-A: '{header.a b}'}}}"))

    def test_lone_brace(self) -> None:
        """A lone brace is an error suggesting {{."""
        self.assertIn("write {{ for a literal brace", self.problem("{request: {add: {X-A: 'a{b'}}}"))
        self.assertIn("write }} for a literal brace", self.problem("{request: {add: {X-A: 'a}b'}}}"))

    def test_control_characters(self) -> None:
        """A value with CR, LF or NUL is an error."""
        self.assertIn("CR, LF or NUL", self.problem('{request: {set: {X-A: "a\\r\\nX-B: b"}}}'))

    def test_invalid_name(self) -> None:
        """A field name must be a token."""
        self.assertEqual(
            self.problem("{request: {set: {'X A': b}}}"),
            "policy.yaml:1:18: 'X A' is not a valid header name",
        )

    def test_host_refused(self) -> None:
        """Host is the upstream's host key's business."""
        self.assertIn("upstreams.NAME.host", self.problem("{request: {set: {Host: a}}}"))

    def test_gateway_fields_refused(self) -> None:
        """Fields the gateway sets itself cannot be set, added or removed upstream."""
        for text in (
            "{request: {set: {X-Forwarded-For: a}}}",
            "{request: {add: {Via: a}}}",
            "{request: {remove: [X-Request-ID]}}",
            "{request: {set: {traceparent: a}}}",
            "{request: {set: {X-Client-Cert-Subject: a}}}",
            "{request: {set: {Content-Length: '1'}}}",
            "{request: {remove: [Transfer-Encoding]}}",
            "{request: {add: {Connection: close}}}",
        ):
            self.assertIn("cannot be set by a policy: the gateway sets it itself", self.problem(text))

    def test_framing_refused_on_response(self) -> None:
        """Framing fields of the response cannot be changed."""
        for text in (
            "{response: {remove: [Content-Length]}}",
            "{response: {set: {Transfer-Encoding: chunked}}}",
            "{response: {add: {Connection: close}}}",
        ):
            self.assertIn("the gateway frames the response itself", self.problem(text))

    def test_response_may_change_others(self) -> None:
        """Response fields the client sees (Server, Via...) may be changed."""
        options = headers_options("{response: {remove: [Server, Via], set: {X-Frame-Options: DENY}}}")
        self.assertEqual(options.response.remove, ("Server", "Via"))

    def test_duplicate_remove(self) -> None:
        """A name listed twice in remove is an error."""
        self.assertIn("duplicate header", self.problem("{request: {remove: [X-A, x-a]}}"))

    def test_nothing_to_do(self) -> None:
        """A policy with no edits is an error."""
        self.assertIn("needs request or response edits", self.problem("{request: {}}"))

    def test_unknown_key(self) -> None:
        """An unknown key gets a hint."""
        self.assertIn("did you mean 'remove'", self.problem("{request: {removes: [X-A]}}"))

    def test_in_config_file(self) -> None:
        """In a whole file, problems point at the file's lines."""
        text = textwrap.dedent(
            """\
            listeners: {web: {protocol: http, bind: ":8080"}}
            upstreams: {app: {targets: ["127.0.0.1:9001"]}}
            policies:
              hdrs:
                type: headers
                request:
                  set: {X-User: "{jwt.sub}", X-Bad: "{nope}"}
            routes:
              - {name: r, policies: [hdrs], upstream: app}
            """
        )
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, source="gw.yaml")
        [problem] = caught.exception.problems
        self.assertEqual((problem.line, problem.col), (7, 41))

    def test_registered(self) -> None:
        """The type is found as a plugin named headers."""
        self.assertEqual(policy_factories()["headers"].name, "headers")
        config = parse_config(
            'listeners: {web: {protocol: http, bind: ":8080"}}\n'
            "policies: {hdrs: {type: headers, response: {remove: [Server]}}}\n"
            "routes: [{name: r, policies: [hdrs], respond: {body: hi}}]\n"
        )
        self.assertEqual(config.policies["hdrs"].options.response.remove, ("Server",))


class InterfaceTests(SynchronousTestCase):
    """The providers of the policy interfaces."""

    def test_factory(self) -> None:
        """HeadersFactory provides IPolicyFactory."""
        self.assertTrue(verifyObject(IPolicyFactory, HeadersFactory()))

    def test_policy(self) -> None:
        """HeadersPolicy provides IPolicy."""
        policy = HeadersPolicy("hdrs", headers_options("{response: {remove: [Server]}}"))
        self.assertTrue(verifyObject(IPolicy, policy))
