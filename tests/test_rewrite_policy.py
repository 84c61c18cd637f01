"""
Tests for L{gatewaykit.policies.rewrite}: the path and query the upstream
receives after C{strip_prefix}, C{regex}/C{replacement}, C{add_prefix} and
C{query}, in that order; results that are not a path refused; mistakes
refused when the config loads.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import PolicyConfig
from gatewaykit.http.message import Response
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.plugins import policy_factories
from gatewaykit.policies.rewrite import Rewrite, RewriteFactory, RewriteOptions, strip_prefix
from gatewaykit.testing import GatewayHarness, make_config, route, upstream
from tests.fixtures.auth import parse_options


def rewrite_options(text: str) -> RewriteOptions:
    options: RewriteOptions = parse_options(RewriteFactory(), text)
    return options


def harness(text: str, *after: str) -> GatewayHarness:
    """A gateway proxying C{/} to one upstream through rewrite C{text}, then C{after}."""
    config = make_config(
        routes=[route("r", path_prefix="/", upstream="app", policies=("rw", *after))],
        upstreams=[upstream("app", "10.0.0.1:8000")],
        policies=[
            PolicyConfig("rw", "rewrite", rewrite_options(text)),
            PolicyConfig("seen", "test.seen"),
        ],
    )
    return GatewayHarness(
        config, policy_types={"rewrite": RewriteFactory(), "test.seen": SeenFactory()}
    )


@implementer(IPolicy)
class Seen:
    """Answers with the request as later policies see it."""

    name = "seen"

    def on_request(self, call: Any) -> Response:
        request = call.request
        body = {"path": request.path, "query": request.query, "params": request.query_params}
        return Response(200, [], json.dumps(body).encode())


@implementer(IPolicyFactory)
class SeenFactory:
    name = "test.seen"
    options = None

    def build(self, name: str, options: Any, context: Any) -> Seen:
        return Seen()


def get(target: str, *fields: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: api.example.com", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def sent_upstream(text: str, target: str, *fields: str) -> bytes:
    """The request head the upstream receives for C{target}."""
    gateway = harness(text)
    client, _ = gateway.connect()
    client.dataReceived(get(target, *fields))
    _, transport = gateway.accept_upstream()
    return transport.value()


def target_sent(text: str, target: str) -> str:
    """The request-target the upstream receives for C{target}."""
    return sent_upstream(text, target).split(b" ")[1].decode("latin-1")


class StripPrefixTests(SynchronousTestCase):
    """strip_prefix, on segment boundaries."""

    def test_strips(self) -> None:
        """/api/users becomes /users; the query is kept."""
        self.assertEqual(target_sent("{strip_prefix: /api}", "/api/users?x=1"), "/users?x=1")

    def test_whole_path(self) -> None:
        """/api and /api/ become /."""
        self.assertEqual(target_sent("{strip_prefix: /api}", "/api"), "/")
        self.assertEqual(target_sent("{strip_prefix: /api}", "/api/"), "/")

    def test_segment_boundary(self) -> None:
        """/apix does not start with the segment /api: unchanged."""
        self.assertEqual(target_sent("{strip_prefix: /api}", "/apix/users"), "/apix/users")

    def test_trailing_slash_in_config(self) -> None:
        """/api/ in the config means /api."""
        self.assertEqual(target_sent("{strip_prefix: /api/}", "/api/users"), "/users")

    def test_forwarded_prefix(self) -> None:
        """X-Forwarded-Prefix names what was stripped; a client's copy is dropped."""
        head = sent_upstream("{strip_prefix: /api}", "/api/users", "X-Forwarded-Prefix: /evil")
        self.assertIn(b"\r\nX-Forwarded-Prefix: /api\r\n", head)
        self.assertNotIn(b"/evil", head)

    def test_no_prefix_no_forwarded_prefix(self) -> None:
        """Without the prefix, nothing is stripped and no X-Forwarded-Prefix goes up."""
        head = sent_upstream("{strip_prefix: /api}", "/other", "X-Forwarded-Prefix: /evil")
        self.assertNotIn(b"x-forwarded-prefix", head.lower())

    def test_function(self) -> None:
        """strip_prefix() gives None when the path does not start with the prefix."""
        self.assertEqual(
            [strip_prefix(p, "/a/b") for p in ("/a/b/c", "/a/b", "/a/bc", "/a", "/x/a/b")],
            ["/c", "/", None, None, None],
        )


class AddPrefixTests(SynchronousTestCase):
    """add_prefix."""

    def test_adds(self) -> None:
        """/users becomes /v2/users."""
        self.assertEqual(target_sent("{add_prefix: /v2}", "/users?x=1"), "/v2/users?x=1")

    def test_root(self) -> None:
        """/ becomes /v2/."""
        self.assertEqual(target_sent("{add_prefix: /v2/}", "/"), "/v2/")

    def test_after_strip(self) -> None:
        """strip_prefix then add_prefix swaps one prefix for another."""
        self.assertEqual(
            target_sent("{strip_prefix: /api, add_prefix: /internal/v2}", "/api/users/7"),
            "/internal/v2/users/7",
        )


class RegexTests(SynchronousTestCase):
    """regex and replacement."""

    def test_groups(self) -> None:
        """Numbered groups are replaced."""
        self.assertEqual(
            target_sent(r"{regex: '^/old/(\w+)/(.*)', replacement: '/new/\2/\1'}", "/old/a/b/c?q"),
            "/new/b/c/a?q",
        )

    def test_named_group(self) -> None:
        r"""\g<name> refers to a named group."""
        self.assertEqual(
            target_sent(r"{regex: '^/u/(?P<id>\d+)$', replacement: '/users/\g<id>'}", "/u/42"),
            "/users/42",
        )

    def test_every_match(self) -> None:
        """Every match is replaced, as re.sub does."""
        self.assertEqual(target_sent("{regex: '-', replacement: '_'}", "/a-b/c-d"), "/a_b/c_d")

    def test_no_match(self) -> None:
        """A path the pattern does not match is unchanged."""
        self.assertEqual(target_sent("{regex: '^/old/', replacement: '/new/'}", "/x"), "/x")

    def test_normalised(self) -> None:
        """The result is normalised like a client's path."""
        self.assertEqual(
            target_sent(r"{regex: '^/a/(.*)', replacement: '/b/./c/../%7e\1'}", "/a/x"),
            "/b/~x",
        )

    def test_order(self) -> None:
        """strip_prefix, then regex, then add_prefix."""
        text = "{add_prefix: /v2, regex: '^/users', replacement: /people, strip_prefix: /api}"
        self.assertEqual(target_sent(text, "/api/users/1"), "/v2/people/1")

    def test_climbing_refused(self) -> None:
        """A result that climbs above the root is 400 and never reaches the upstream."""
        gateway = harness(r"{regex: '^/a/(\w+)', replacement: '/\1/../..'}")
        response = gateway.request(get("/a/x"))
        self.assertEqual(response.status, 400)
        self.assertIn(b"climbs above the root", response.body)
        self.assertEqual(gateway.reactor.tcpClients, [])

    def test_not_a_path(self) -> None:
        """A result without a leading / (a config mistake) is 500."""
        gateway = harness(r"{regex: '^/(.*)', replacement: '\1'}")
        response = gateway.request(get("/x"))
        self.assertEqual(response.status, 500)
        self.assertEqual(gateway.reactor.tcpClients, [])
        self.flushLoggedErrors()


class QueryTests(SynchronousTestCase):
    """query: remove, then set."""

    def test_remove(self) -> None:
        """Every copy of a removed parameter goes."""
        text = "{query: {remove: [debug]}}"
        self.assertEqual(target_sent(text, "/a?debug=1&x=2&debug"), "/a?x=2")
        self.assertEqual(target_sent(text, "/a?debug=1"), "/a")

    def test_set(self) -> None:
        """set replaces every copy, appended at the end."""
        text = "{query: {set: {v: '2'}}}"
        self.assertEqual(target_sent(text, "/a?v=1&x=2&v=3"), "/a?x=2&v=2")
        self.assertEqual(target_sent(text, "/a"), "/a?v=2")

    def test_encoded(self) -> None:
        """Names and values are percent-encoded."""
        text = "{query: {set: {'a b': 'x&y=z+1 /'}}}"
        self.assertEqual(target_sent(text, "/a"), "/a?a%20b=x%26y%3Dz%2B1%20/")

    def test_placeholders(self) -> None:
        """Values take the headers policy's placeholders."""
        text = "{query: {set: {tenant: '{header.X-Tenant}', id: '{request_id}'}}}"
        head = sent_upstream(text, "/a", "X-Tenant: acme", "X-Request-ID: req-1")
        self.assertTrue(head.startswith(b"GET /a?tenant=acme&id=req-1 HTTP/1.1\r\n"), head)

    def test_missing_value(self) -> None:
        """A value without a value is left out; the client's copies still go."""
        text = "{query: {set: {tenant: '{header.X-Tenant}'}}}"
        self.assertEqual(target_sent(text, "/a?tenant=evil"), "/a")

    def test_later_policies(self) -> None:
        """Later policies see the rewritten path and query, parsed afresh."""
        gateway = harness(
            "{strip_prefix: /api, query: {set: {v: '2'}, remove: [debug]}}", "seen"
        )
        seen = json.loads(gateway.request(get("/api/x?debug=1&k=a")).body)
        self.assertEqual(seen, {"path": "/x", "query": "k=a&v=2", "params": {"k": ["a"], "v": ["2"]}})


class ConfigTests(SynchronousTestCase):
    """Mistakes refused when the config loads."""

    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            rewrite_options(text)
        return [str(p) for p in caught.exception.problems]

    def problem(self, text: str) -> str:
        problems = self.problems(text)
        self.assertEqual(len(problems), 1, problems)
        return problems[0]

    def test_regex_needs_replacement(self) -> None:
        """regex without replacement, and the reverse, are errors at the key."""
        self.assertEqual(
            self.problem("{regex: '^/a'}"), "policy.yaml:1:2: 'regex' needs 'replacement' too"
        )
        self.assertEqual(
            self.problem("{replacement: /b}"), "policy.yaml:1:2: 'replacement' needs 'regex' too"
        )

    def test_invalid_regex(self) -> None:
        """A pattern that does not compile is an error."""
        self.assertIn("invalid regular expression", self.problem("{regex: '(', replacement: /}"))

    def test_bad_group(self) -> None:
        """A reference to a group the pattern lacks is an error at the replacement."""
        problem = self.problem(r"{regex: '^/(a)', replacement: '/\2'}")
        self.assertTrue(problem.startswith("policy.yaml:1:31: invalid replacement"), problem)
        self.assertIn("unknown group name", self.problem(r"{regex: '^/(a)', replacement: '/\g<x>'}"))

    def test_replacement_characters(self) -> None:
        """A replacement cannot hold a query, a fragment or spaces."""
        for replacement in ("/x?y=1", "/x#y", "/x y"):
            self.assertIn(
                "cannot contain", self.problem(f"{{regex: '^/a', replacement: '{replacement}'}}")
            )

    def test_prefix(self) -> None:
        """A prefix must be a path other than /, not climbing above the root."""
        self.assertIn("must start with '/'", self.problem("{strip_prefix: api}"))
        self.assertIn("changes nothing", self.problem("{add_prefix: /}"))
        self.assertIn("above the root", self.problem("{add_prefix: /a/../../b}"))
        self.assertIn("cannot contain", self.problem("{add_prefix: '/a?b'}"))

    def test_prefix_normalised(self) -> None:
        """A prefix is kept normalised, without its trailing slash."""
        options = rewrite_options("{strip_prefix: /a/./b/, add_prefix: /%7Ev2/}")
        self.assertEqual((options.strip_prefix, options.add_prefix), ("/a/b", "/~v2"))

    def test_query_placeholder(self) -> None:
        """An unknown placeholder in a query value is an error."""
        self.assertIn("unknown placeholder {nope}", self.problem("{query: {set: {a: '{nope}'}}}"))

    def test_nothing_to_do(self) -> None:
        """A rewrite with nothing to do is an error."""
        for text in ("{}", "{query: {}}"):
            self.assertIn("needs at least one of", self.problem(text))

    def test_unknown_key(self) -> None:
        """An unknown key gets a hint."""
        self.assertIn("did you mean 'strip_prefix'", self.problem("{strip_prefx: /a}"))

    def test_registered(self) -> None:
        """The type is found as a plugin named rewrite and loads from a file."""
        self.assertEqual(policy_factories()["rewrite"].name, "rewrite")
        config = parse_config(
            'listeners: {web: {protocol: http, bind: ":8080"}}\n'
            'upstreams: {app: {targets: ["127.0.0.1:9001"]}}\n'
            "policies: {v2: {type: rewrite, strip_prefix: /api, add_prefix: /v2}}\n"
            "routes: [{name: r, policies: [v2], upstream: app}]\n"
        )
        self.assertEqual(config.policies["v2"].options.add_prefix, "/v2")


class InterfaceTests(SynchronousTestCase):
    """The providers of the policy interfaces."""

    def test_factory(self) -> None:
        """RewriteFactory provides IPolicyFactory."""
        self.assertTrue(verifyObject(IPolicyFactory, RewriteFactory()))

    def test_policy(self) -> None:
        """Rewrite provides IPolicy."""
        self.assertTrue(verifyObject(IPolicy, Rewrite("rw", rewrite_options("{add_prefix: /v2}"))))
