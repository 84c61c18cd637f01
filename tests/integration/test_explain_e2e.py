"""
End-to-end test of C{gatewaykit explain}: its answers for a route match, a
404, a 405 and an auth-protected route, with and without a key, compared
with what a real C{twistd gatewaykit} process answers curl for the same
requests on the same config.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import yaml
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from tests.fixtures.auth import keys_file, write
from tests.integration import support
from tests.integration.support import NODE

# Test-only key.
API_KEY = "test-explain-e2e-key-0001"


def config(directory: str, ports: dict[str, int]) -> dict[str, Any]:
    """Upstream C{app} hashing X-User over the named servers; one route behind a key."""
    return {
        "gateway": {"node": NODE, "access_log": {"path": "off"}},
        "listeners": {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
        "upstreams": {
            "app": {
                "targets": [f"127.0.0.1:{port}" for port in ports.values()],
                "balancer": "hash",
                "hash_key": "header:X-User",
            }
        },
        "policies": {
            "keys": {"type": "api_key", "keys_file": os.path.join(directory, "keys.yaml")}
        },
        "routes": [
            {"name": "users", "match": {"path_prefix": "/users", "methods": ["GET"]}, "upstream": "app"},
            {"name": "billing", "match": {"path_prefix": "/billing"}, "upstream": "app", "policies": ["keys"]},
        ],
    }  # fmt: skip


class ExplainMatchesGatewayTests(support.GatewayTestCase):
    """C{gatewaykit explain --json} against a running gateway, request by request."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        """Start the named upstreams and a gateway over them."""
        self.servers = {name: support.start_named(self, name) for name in ("alpha", "beta")}
        directory = os.path.abspath(self.mktemp())
        write(directory, "keys.yaml", keys_file({API_KEY: {"name": "billing"}}))
        ports = {name: server.port for name, server in self.servers.items()}
        text = yaml.safe_dump(config(directory, ports))
        self.path = write(directory, "gateway.yaml", text)
        self.names = {f"127.0.0.1:{port}": name for name, port in ports.items()}
        self.gateway = yield self.start_gateway(text)

    @defer.inlineCallbacks
    def explain(self, method: str, url: str, headers: Sequence[str]) -> support.Steps:
        """Run C{python -m gatewaykit explain --json}; fire with (exit code, JSON)."""
        args = ["-m", "gatewaykit", "explain", self.path, method, url, "--json"]
        for header in headers:
            args += ["-H", header]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (support.ROOT, env.get("PYTHONPATH")) if p)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, args, env=env, path=support.ROOT
        )
        self.assertIn(code, (0, 2), err.decode(errors="replace"))
        return code, json.loads(out)

    @defer.inlineCallbacks
    def compare(self, method: str, path: str, *headers: str) -> support.Steps:
        """
        Send one request with curl and explain it: the status, the exit
        code, the error code and the fields that explain the refusal, and for
        a proxied request the upstream server that answered, must agree.
        """
        url = self.gateway.url(path)
        options = ["-X", method]
        for header in headers:
            options += ["-H", header]
        real = yield support.curl(self, url, *options)
        code, explained = yield self.explain(method, url, headers)
        self.assertEqual(explained["request"]["headers"][0], ["Host", url.split("/")[2]])
        if explained["outcome"] == "proxied":
            self.assertEqual(real.status, 200)
            self.assertEqual(code, 0)
            self.assertEqual(
                self.names[explained["action"]["target"]], real.header(support.UPSTREAM_FIELD)
            )
        else:
            answer = explained["answer"]
            self.assertEqual(answer["status"], real.status)
            self.assertEqual(code, 2 if real.status >= 400 else 0)
            problem = real.json()
            self.assertEqual(f"urn:gatewaykit:error:{answer['code']}", problem["type"])
            self.assertEqual(answer["detail"], problem["detail"])
            for name, value in answer["headers"].items():
                self.assertEqual(real.header(name), value, name)
        return explained

    @defer.inlineCallbacks
    def test_route_match(self) -> support.Steps:
        """
        A matched route is proxied to the target the gateway really uses,
        whichever of the two the user's hash lands on.
        """
        yield self.start()
        seen = set()
        for number in range(16):
            explained = yield self.compare("GET", "/users/1", f"X-User: user-{number}")
            self.assertEqual(explained["route"]["name"], "users")
            seen.add(explained["action"]["target"])
            if len(seen) == len(self.servers):
                break
        self.assertEqual(seen, set(self.names))

    @defer.inlineCallbacks
    def test_no_route(self) -> support.Steps:
        """404 no_route, as the gateway answers."""
        yield self.start()
        explained = yield self.compare("GET", "/nowhere")
        self.assertEqual(explained["status"], 404)

    @defer.inlineCallbacks
    def test_method_not_allowed(self) -> support.Steps:
        """405 with the same Allow as the gateway's."""
        yield self.start()
        explained = yield self.compare("DELETE", "/users/1")
        self.assertEqual(explained["answer"]["headers"]["Allow"], "GET, HEAD")

    @defer.inlineCallbacks
    def test_auth_protected(self) -> support.Steps:
        """
        Without a key: 401 with the same challenge, and no upstream is
        asked. With the key: proxied to the same target.
        """
        yield self.start()
        refused = yield self.compare("GET", "/billing/7", "X-User: ann")
        self.assertEqual(refused["status"], 401)
        self.assertEqual(refused["policies"][0]["outcome"], "refuse")
        self.assertEqual(sum(server.requests for server in self.servers.values()), 0)
        allowed = yield self.compare("GET", "/billing/7", "X-User: ann", f"X-API-Key: {API_KEY}")
        self.assertEqual(allowed["policies"][0]["outcome"], "pass")
        self.assertEqual(allowed["outcome"], "proxied")
