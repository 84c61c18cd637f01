"""
End-to-end tests of request and response transformation: a real C{twistd
gatewaykit} process running the C{headers} and C{rewrite} policies and an
upstream's C{host}, between curl and real upstreams; and the versioning
recipes of C{docs/api-versioning.md}, run as written there (with loopback
upstreams).
"""

from __future__ import annotations

from typing import Any

import yaml
from twisted.internet import defer

from tests.integration import support
from tests.integration.support import NODE
from tests.test_versioning import recipes


def _seen(response: support.Response) -> dict[str, list[str]]:
    """The header fields the upstream's C{/headers} reported, by lower-case name."""
    fields: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        fields.setdefault(name.lower(), []).append(value)
    return fields


class TransformTests(support.GatewayTestCase):
    """The headers and rewrite policies, and the Host sent upstream."""

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        self.upstream = self.start_upstream()
        target = [f"127.0.0.1:{self.upstream.port}"]
        config = {
            "gateway": {"node": NODE, "access_log": {"path": "off"}},
            "listeners": {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
            "upstreams": {
                "app": {"targets": target},
                "internal": {"targets": target, "host": "api.internal:8443"},
            },
            "policies": {
                "hdrs": {
                    "type": "headers",
                    "request": {
                        "set": {"X-Client": "{client_ip}", "X-Route": "{route}"},
                        "add": {"X-Tag": "gk"},
                        "remove": ["X-Secret"],
                    },
                    "response": {
                        "remove": ["Server"],
                        "set": {"X-Served-By": "gatewaykit"},
                        "add": {"X-Request": "{method} {path}"},
                    },
                },
                "api": {
                    "type": "rewrite",
                    "strip_prefix": "/api",
                    "query": {"set": {"v": "2"}, "remove": ["debug"]},
                },
                "old": {
                    "type": "rewrite",
                    "regex": "^/old/(?P<rest>.*)$",
                    "replacement": "/\\g<rest>",
                },
                "internal": {"type": "rewrite", "strip_prefix": "/internal"},
            },
            "routes": [
                {"name": "api", "match": {"path_prefix": "/api"}, "policies": ["hdrs", "api"], "upstream": "app"},
                {"name": "old", "match": {"path_prefix": "/old"}, "policies": ["old"], "upstream": "app"},
                {
                    "name": "internal",
                    "match": {"path_prefix": "/internal"},
                    "policies": ["internal"],
                    "upstream": "internal",
                },
            ],
        }
        self.gateway = yield self.start_gateway(config)

    @defer.inlineCallbacks
    def test_request_and_response(self) -> support.Steps:
        """
        The upstream sees exactly the rewritten path, query and fields; the
        client sees the response fields changed.
        """
        yield self.start()
        response = yield support.curl(
            self,
            self.gateway.url("/api/headers?debug=1&x=a%20b&v=1"),
            "-H",
            "X-Secret: s3cret",
            "-H",
            "X-Tag: client",
            "-H",
            "X-Client: 6.6.6.6",
        )
        self.assertEqual(response.status, 200)
        seen = response.json()
        self.assertEqual((seen["method"], seen["uri"]), ("GET", "/headers?x=a%20b&v=2"))
        fields = _seen(response)
        self.assertEqual(fields.get("x-client"), ["127.0.0.1"])
        self.assertEqual(fields.get("x-route"), ["api"])
        self.assertEqual(fields.get("x-tag"), ["client", "gk"])
        self.assertEqual(fields.get("x-forwarded-prefix"), ["/api"])
        self.assertNotIn("x-secret", fields)
        self.assertEqual(response.headers("Server"), [])
        self.assertEqual(response.header("X-Served-By"), "gatewaykit")
        # Read when the response passes: after the rewrite.
        self.assertEqual(response.header("X-Request"), "GET /headers")

    @defer.inlineCallbacks
    def test_regex(self) -> support.Steps:
        """A regex rewrite reaches the upstream normalised, its query kept."""
        yield self.start()
        response = yield support.curl(self, self.gateway.url("/old/./headers?q=1"), "--path-as-is")
        self.assertEqual(response.json()["uri"], "/headers?q=1")
        # No headers policy on this route: the upstream's Server stays.
        self.assertNotEqual(response.headers("Server"), [])

    @defer.inlineCallbacks
    def test_upstream_host(self) -> support.Steps:
        """An upstream's host replaces Host; X-Forwarded-Host keeps the client's."""
        yield self.start()
        response = yield support.curl(
            self, self.gateway.url("/internal/headers"), "-H", "Host: shop.example.com"
        )
        fields = _seen(response)
        self.assertEqual(fields.get("host"), ["api.internal:8443"])
        self.assertEqual(fields.get("x-forwarded-host"), ["shop.example.com"])
        other = yield support.curl(
            self, self.gateway.url("/old/headers"), "-H", "Host: shop.example.com"
        )
        self.assertEqual(_seen(other).get("host"), ["shop.example.com"])


class VersioningTests(support.GatewayTestCase):
    """The recipes of the versioning guide, with two real upstreams."""

    @defer.inlineCallbacks
    def start(self, recipe: str) -> support.Steps:
        """The gateway of C{recipe}, its upstreams on loopback."""
        self.v1 = self.start_upstream()
        self.v2 = self.start_upstream()
        config: dict[str, Any] = yaml.safe_load(recipes()[recipe])
        config["gateway"] = {"node": NODE, "access_log": {"path": "off"}}
        config["listeners"]["web"]["bind"] = "127.0.0.1:0"
        config["upstreams"]["users-v1"]["targets"] = [f"127.0.0.1:{self.v1.port}"]
        config["upstreams"]["users-v2"]["targets"] = [f"127.0.0.1:{self.v2.port}"]
        # YAML read the dates; the gateway reads them again from the file.
        self.gateway = yield self.start_gateway(yaml.safe_dump(config))

    @defer.inlineCallbacks
    def get(self, path: str, *fields: str) -> support.Steps:
        """GET C{path}; the response and which upstream answered (1, 2 or None)."""
        before = (self.v1.requests, self.v2.requests)
        options = [option for field in fields for option in ("-H", field)]
        response = yield support.curl(self, self.gateway.url(path), *options)
        after = (self.v1.requests, self.v2.requests)
        served = {(1, 0): 1, (0, 1): 2, (0, 0): None}[
            (after[0] - before[0], after[1] - before[1])
        ]
        return response, served

    def assertDeprecated(self, response: support.Response, deprecated: bool) -> None:
        self.assertEqual(response.header("Deprecation") == "@1782777600", deprecated)

    @defer.inlineCallbacks
    def test_version_in_path(self) -> support.Steps:
        """/v1 and /v2 reach their upstreams without the prefix; v1 is announced deprecated."""
        yield self.start("version-in-path")
        response, served = yield self.get("/v1/headers?id=7")
        self.assertEqual((served, response.json()["uri"]), (1, "/headers?id=7"))
        self.assertDeprecated(response, True)
        self.assertEqual(response.header("Sunset"), "Thu, 31 Dec 2026 00:00:00 GMT")
        self.assertEqual(
            response.headers("Link"),
            [
                '</v2/>; rel="successor-version"',
                '<https://developer.example.com/deprecations/v1>; rel="deprecation"',
            ],
        )
        response, served = yield self.get("/v2/headers?id=7")
        self.assertEqual((served, response.json()["uri"]), (2, "/headers?id=7"))
        self.assertDeprecated(response, False)
        self.assertEqual(response.headers("Link"), [])

    @defer.inlineCallbacks
    def test_version_in_header(self) -> support.Steps:
        """Accept-Version picks the upstream; none means v2; an unknown one is 400."""
        yield self.start("version-in-header")
        for fields, upstream in ((["Accept-Version: 1"], 1), (["Accept-Version: 2"], 2), ([], 2)):
            response, served = yield self.get("/users/7", *fields)
            # The test upstreams have no /users/7: their 404 shows it arrived.
            self.assertEqual((response.status, served), (404, upstream), fields)
            self.assertEqual(response.header("Vary"), "Accept-Version")
            self.assertDeprecated(response, upstream == 1)
        response, served = yield self.get("/users/7", "Accept-Version: 3")
        self.assertEqual((response.status, served), (400, None))

    @defer.inlineCallbacks
    def test_version_in_media_type(self) -> support.Steps:
        """The vendor media type picks v1; other types get v2."""
        yield self.start("version-in-media-type")
        for accept, upstream in (
            ("application/vnd.acme.v1+json", 1),
            ("application/vnd.acme.v2+json", 2),
            ("application/json", 2),
        ):
            response, served = yield self.get("/users/7", f"Accept: {accept}")
            self.assertEqual(served, upstream, accept)
            self.assertEqual(response.header("Vary"), "Accept")
