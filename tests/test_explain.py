"""
Tests for C{gatewaykit explain} (L{gatewaykit.explain} and its command):
what the gateway would do with one request, found offline.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gatewaykit import cli
from gatewaykit.config import load_config
from gatewaykit.explain import ExplainError, Journal, ObservedPolicy, explain, render_text
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IPolicy
from gatewaykit.policies.chain import LATER, PolicyCall
from gatewaykit.policies.session import new_session_id, sign
from tests.fixtures.auth import htpasswd, jwk, jwks, keys_file, rsa_key, token, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test-only credentials.
API_KEY = "test-explain-key-0001"
PASSWORD = "test-explain-pw"

CONFIG = """\
gateway:
  trusted_proxies: [10.0.0.0/8]
listeners:
  web: {protocol: http, bind: "0.0.0.0:8080"}
  internal: {protocol: http, bind: "127.0.0.1:9090"}
upstreams:
  users:
    targets: ["127.0.0.1:9001", {address: "127.0.0.1:9002", weight: 3}]
    retries: {attempts: 2, on: [connect_failure, 502]}
    timeouts: {connect: 1s, response: 30s}
  carts:
    targets: ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103", "127.0.0.1:9104"]
    balancer: hash
    hash_key: header:X-User
  beta: {targets: ["127.0.0.1:9201"]}
  wild: {targets: ["127.0.0.1:9301"]}
  sticky: {targets: ["127.0.0.1:9401", "127.0.0.1:9402"], sticky: {cookie: gk_sticky}}
policies:
  cors: {type: cors, origins: ["https://app.example.com"], methods: [GET, POST]}
  keys: {type: api_key, keys_file: keys.yaml}
  basic: {type: basic_auth, htpasswd: htpasswd}
  jwt: {type: jwt, algorithms: [RS256], jwks_file: jwks.json}
  remote-jwt: {type: jwt, algorithms: [RS256], jwks_url: "http://127.0.0.1:{closed}/jwks"}
  ext: {type: forward_auth, url: "http://127.0.0.1:{closed}/check"}
  admins: {type: authorize, scopes: [admin]}
  per-ip: {type: rate_limit, limit: 10, window: 1m}
  office: {type: ip_filter, allow: [192.168.0.0/16]}
  session: {type: session, secret: "test-only-session-secret-0123456789"}
  strip-v1: {type: rewrite, strip_prefix: /v1}
  tag: {type: headers, request: {set: {X-Client: "{client_ip}"}, remove: [Cookie]}}
routes:
  - name: users
    match: {path_prefix: /users, methods: [GET, POST]}
    upstream: users
  - name: carts
    match: {path_prefix: /carts}
    upstream: carts
  - name: beta-users
    match: {path_prefix: /users, methods: [GET], headers: {X-Beta: "~^(yes|1)$"}}
    upstream: beta
  - name: api-host
    match: {hosts: [api.example.com], path: /where}
    respond: {status: 200, body: exact}
  - name: wildcard-host
    match: {hosts: ["*.example.com"], path: /where}
    upstream: wild
  - name: any-host
    match: {path: /where}
    respond: {status: 200, body: any}
  - name: billing
    match: {path_prefix: /billing}
    upstream: users
    policies: [cors, keys, admins, per-ip]
  - name: staff
    match: {path_prefix: /staff}
    respond: {status: 200, body: staff}
    policies: [basic]
  - name: tokens
    match: {path_prefix: /tokens}
    respond: {status: 204}
    policies: [jwt]
  - name: remote-tokens
    match: {path_prefix: /remote-tokens}
    upstream: users
    policies: [remote-jwt, admins]
  - name: outside
    match: {path_prefix: /outside}
    upstream: users
    policies: [ext]
  - name: admin-only
    match: {path_prefix: /admin}
    respond: {status: 204}
    policies: [admins]
  - name: office
    match: {path_prefix: /office}
    respond: {status: 204}
    policies: [office]
  - name: old
    match: {path: /old}
    redirect: {to: "https://{host}/new{uri}", status: 308}
  - name: teapot
    match: {path: /teapot}
    respond: {status: 418, body: "short and stout"}
  - name: site
    match: {path_prefix: /site}
    static: {root: public}
  - name: cart
    match: {path_prefix: /cart}
    upstream: sticky
    policies: [session]
  - name: versioned
    match: {path_prefix: /v1}
    upstream: users
    policies: [strip-v1, tag]
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ExplainCase(SynchronousTestCase):
    """Writes L{CONFIG} with its keys, htpasswd, JWKS and static files."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        write(self.directory, "keys.yaml", keys_file({API_KEY: {"name": "billing"}}))
        write(self.directory, "htpasswd", htpasswd({"alice": ("bcrypt", PASSWORD)}))
        write(self.directory, "jwks.json", jwks(jwk(rsa_key(), "k1")))
        write(os.path.join(self.directory, "public", "site"), "index.html", "<h1>hi</h1>\n")
        self.closed = closed_port()
        text = CONFIG.replace("{closed}", str(self.closed))
        self.path = write(self.directory, "gateway.yaml", text)
        self.config = load_config(self.path)

    def rewrite(self, old: str, new: str) -> None:
        """Replace C{old} by C{new} in the config file and load it again."""
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        write(self.directory, "gateway.yaml", text.replace(old, new))
        self.config = load_config(self.path)

    def grant_admin(self) -> None:
        """Give L{API_KEY} the admin scope (and load the config again)."""
        scoped = {API_KEY: {"name": "billing", "scopes": ["admin"]}}
        write(self.directory, "keys.yaml", keys_file(scoped))
        self.config = load_config(self.path)

    def explain(self, method: str, url: str, *headers: str, **options: Any) -> dict[str, Any]:
        pairs = [(name, value) for name, _, value in (h.partition(": ") for h in headers)]
        return explain(self.config, method, url, pairs, **options)

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        """C{gatewaykit explain} in this process: exit code, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["explain", *args])
        return code, out.getvalue(), err.getvalue()


def bearer(**overrides: Any) -> str:
    """An Authorization field with a token valid now, signed by the JWKS key."""
    now = int(time.time())
    times = {"iat": now - 5, "nbf": now - 5, "exp": now + 300, "iss": None, "aud": None}
    return "Authorization: Bearer " + token(rsa_key(), "RS256", "k1", **{**times, **overrides})


class RoutingTests(ExplainCase):
    """Which route matches, and why."""

    def test_route_match(self) -> None:
        """A matching request names its route, why it matched and the target."""
        result = self.explain("GET", "http://shop.test:8080/users/7?page=2")
        self.assertEqual(result["listener"]["name"], "web")
        self.assertEqual(result["listener"]["chosen_by"], "port")
        route = result["route"]
        self.assertEqual(route["name"], "users")
        self.assertEqual(route["host"], {"kind": "any", "pattern": None})
        self.assertEqual(route["path"], {"kind": "prefix", "pattern": "/users"})
        self.assertEqual(route["methods"], ["GET", "POST", "HEAD"])
        self.assertEqual(result["request"]["path"], "/users/7")
        self.assertEqual(result["request"]["query"], "page=2")
        self.assertEqual(result["outcome"], "proxied")
        self.assertIsNone(result["answer"])
        self.assertEqual(result["exit_code"], 0)
        action = result["action"]
        self.assertEqual(
            (action["kind"], action["upstream"], action["balancer"], action["target"]),
            ("upstream", "users", "round_robin", "127.0.0.1:9001"),
        )
        self.assertEqual(action["retries"]["attempts"], 2)
        self.assertEqual(action["retries"]["on"], ["connect_failure", "502"])
        self.assertEqual(action["timeouts"], {"connect": 1.0, "response": 30.0, "idle": 90.0})

    def test_no_route(self) -> None:
        """No route: 404 no_route from the router, exit 2."""
        result = self.explain("GET", "http://shop.test:8080/nothing/here")
        self.assertIsNone(result["route"])
        self.assertEqual(result["status"], 404)
        self.assertEqual(result["answer"]["code"], "no_route")
        self.assertEqual(result["answer"]["by"], "router")
        self.assertEqual((result["outcome"], result["exit_code"]), ("refused", 2))

    def test_method_not_allowed(self) -> None:
        """A path that matches but not its method: 405 with Allow."""
        result = self.explain("DELETE", "http://shop.test:8080/users/7")
        self.assertEqual(result["status"], 405)
        self.assertEqual(result["answer"]["code"], "method_not_allowed")
        self.assertEqual(result["answer"]["headers"]["Allow"], "GET, HEAD, POST")
        self.assertEqual(result["exit_code"], 2)

    def test_escaping_path(self) -> None:
        """A path climbing above the root is 400 from the listener, before routing."""
        result = self.explain("GET", "http://shop.test:8080/users/%2e%2e/%2e%2e/etc/passwd")
        self.assertEqual(result["status"], 400)
        self.assertEqual(result["answer"]["code"], "bad_request")
        self.assertEqual(result["answer"]["detail"], "the path climbs above the root")
        self.assertEqual(result["answer"]["by"], "listener")
        self.assertIsNone(result["route"])
        self.assertIn("400 bad_request: the path climbs above the root", render_text(result))

    def test_normalised_path(self) -> None:
        """Dot segments are removed before routing, as the gateway does."""
        result = self.explain("GET", "http://shop.test:8080/teapot/../users/./7")
        self.assertEqual(result["route"]["name"], "users")
        self.assertEqual(result["request"]["path"], "/users/7")

    def test_host_classes(self) -> None:
        """Exact host beats wildcard beats any host, as the router ranks them."""
        exact = self.explain("GET", "http://api.example.com:8080/where")
        wildcard = self.explain("GET", "http://eu.example.com:8080/where")
        anywhere = self.explain("GET", "http://other.test:8080/where")
        self.assertEqual(
            [r["route"]["name"] for r in (exact, wildcard, anywhere)],
            ["api-host", "wildcard-host", "any-host"],
        )
        self.assertEqual(exact["route"]["host"], {"kind": "exact", "pattern": "api.example.com"})
        self.assertEqual(
            wildcard["route"]["host"], {"kind": "wildcard", "pattern": "*.example.com"}
        )
        self.assertEqual(anywhere["route"]["host"]["kind"], "any")
        self.assertEqual(exact["answer"]["body"], "exact")

    def test_host_field(self) -> None:
        """A Host header replaces the URL's host, as with curl."""
        result = self.explain("GET", "http://127.0.0.1:8080/where", "Host: api.example.com")
        self.assertEqual(result["route"]["name"], "api-host")
        self.assertEqual(result["request"]["host"], "api.example.com")

    def test_header_condition(self) -> None:
        """A route with a header condition wins when it holds, with the value shown."""
        beta = self.explain("GET", "http://shop.test:8080/users/7", "X-Beta: yes")
        plain = self.explain("GET", "http://shop.test:8080/users/7", "X-Beta: no")
        self.assertEqual(beta["route"]["name"], "beta-users")
        self.assertEqual(
            beta["route"]["headers"],
            [{"name": "X-Beta", "condition": "~^(yes|1)$", "value": "yes"}],
        )
        self.assertEqual(beta["action"]["target"], "127.0.0.1:9201")
        self.assertEqual(plain["route"]["name"], "users")


class ListenerTests(ExplainCase):
    """Choosing the listener the request arrives on."""

    def test_by_port(self) -> None:
        """The URL's port picks the listener binding it."""
        result = self.explain("GET", "http://localhost:9090/users")
        self.assertEqual(
            (result["listener"]["name"], result["listener"]["chosen_by"]), ("internal", "port")
        )

    def test_assumed(self) -> None:
        """No listener on the port: the first http one is assumed, and said so."""
        result = self.explain("GET", "http://shop.test/users")
        self.assertEqual(result["listener"]["chosen_by"], "assumed")
        self.assertEqual(result["listener"]["name"], "web")
        self.assertIn("no http listener binds port 80", result["assumptions"][0])

    def test_option(self) -> None:
        """--listener chooses; an unknown name cannot be explained."""
        result = self.explain("GET", "http://shop.test/users", listener="internal")
        self.assertEqual(
            (result["listener"]["name"], result["listener"]["chosen_by"]),
            ("internal", "option"),
        )
        self.assertRaises(
            ExplainError, self.explain, "GET", "http://shop.test/users", listener="nope"
        )


class PolicyTests(ExplainCase):
    """The policy chain, in order, and what each policy decides."""

    def test_missing_api_key(self) -> None:
        """Without a key the api_key policy refuses 401 with its challenge."""
        result = self.explain("GET", "http://shop.test:8080/billing/1")
        self.assertEqual(
            [(p["name"], p["type"], p["outcome"]) for p in result["policies"]],
            [
                ("cors", "cors", "pass"),
                ("keys", "api_key", "refuse"),
                ("admins", "authorize", "not_reached"),
                ("per-ip", "rate_limit", "not_reached"),
            ],
        )
        keys = result["policies"][1]
        self.assertEqual((keys["status"], keys["code"]), (401, "unauthorized"))
        self.assertEqual(
            keys["headers"]["WWW-Authenticate"], 'APIKey realm="gatewaykit", header="X-API-Key"'
        )
        self.assertEqual(result["answer"]["by"], "policy")
        self.assertEqual(result["answer"]["policy"], "keys")
        self.assertIsNone(result["action"]["target"])
        self.assertFalse(result["action"]["reached"])
        self.assertEqual(result["exit_code"], 2)

    def test_valid_api_key(self) -> None:
        """A key from the keys file passes; the identity and the rate limit are shown."""
        result = self.explain("GET", "http://shop.test:8080/billing/1", f"X-API-Key: {API_KEY}")
        outcomes = [(p["name"], p["outcome"]) for p in result["policies"]]
        # The key has no admin scope: authorize refuses.
        self.assertEqual(outcomes[:3], [("cors", "pass"), ("keys", "pass"), ("admins", "refuse")])
        self.assertEqual(result["policies"][1]["identity"], "api_key:billing")
        self.assertEqual(result["status"], 403)

    def test_api_key_passes(self) -> None:
        """With the scope it needs, the request goes on to the upstream."""
        self.grant_admin()
        result = self.explain("GET", "http://shop.test:8080/billing/1", f"X-API-Key: {API_KEY}")
        self.assertEqual(
            [p["outcome"] for p in result["policies"]], ["pass", "pass", "pass", "pass"]
        )
        self.assertIn("9 of 10 left", result["policies"][3]["notes"][0])
        self.assertEqual(result["outcome"], "proxied")
        self.assertEqual(result["action"]["target"], "127.0.0.1:9001")

    def test_cors_preflight(self) -> None:
        """A preflight is routed as the request it asks about and answered by cors."""
        result = self.explain(
            "OPTIONS",
            "http://shop.test:8080/billing/1",
            "Origin: https://app.example.com",
            "Access-Control-Request-Method: POST",
        )
        self.assertEqual(result["route"]["preflight_for"], "POST")
        self.assertEqual(result["policies"][0]["outcome"], "answer")
        self.assertEqual(result["status"], 204)
        self.assertEqual(
            result["answer"]["headers"]["Access-Control-Allow-Origin"], "https://app.example.com"
        )
        self.assertEqual(result["exit_code"], 0)

    def test_basic_auth(self) -> None:
        """basic_auth checks the password offline; the URL's credentials are sent."""
        missing = self.explain("GET", "http://shop.test:8080/staff")
        wrong = self.explain("GET", "http://alice:wrong@shop.test:8080/staff")
        right = self.explain("GET", f"http://alice:{PASSWORD}@shop.test:8080/staff")
        self.assertEqual([r["status"] for r in (missing, wrong, right)], [401, 401, 200])
        self.assertEqual(
            missing["answer"]["headers"]["WWW-Authenticate"],
            'Basic realm="gatewaykit", charset="UTF-8"',
        )
        self.assertEqual(right["policies"][0]["identity"], "basic:alice")

    def test_jwt_file(self) -> None:
        """A token is checked against jwks_file: valid passes, expired is refused."""
        good = self.explain("GET", "http://shop.test:8080/tokens", bearer())
        expired = self.explain(
            "GET", "http://shop.test:8080/tokens", bearer(exp=int(time.time()) - 60)
        )
        self.assertEqual(good["status"], 204)
        self.assertEqual(good["policies"][0]["identity"], "jwt:user-42 (scopes: read, write)")
        self.assertEqual(expired["status"], 401)
        self.assertEqual(expired["policies"][0]["detail"], "the token has expired")

    def test_jwks_url(self) -> None:
        """
        With jwks_url the keys would be fetched: the token and the identity
        after it are assumed good, and said so.
        """
        missing = self.explain("GET", "http://shop.test:8080/remote-tokens")
        self.assertEqual(missing["status"], 401)
        self.assertEqual(
            missing["answer"]["headers"]["WWW-Authenticate"], 'Bearer realm="gatewaykit"'
        )
        result = self.explain("GET", "http://shop.test:8080/remote-tokens", bearer())
        self.assertEqual(
            [p["outcome"] for p in result["policies"]], ["assumed_pass", "assumed_pass"]
        )
        self.assertIn("would fetch the signing keys from http://127.0.0.1:", str(result))
        self.assertEqual(result["outcome"], "proxied")
        self.assertTrue(any("remote-jwt" in a for a in result["assumptions"]))

    def test_forward_auth(self) -> None:
        """forward_auth would ask its service: assumed to answer 2xx."""
        result = self.explain("GET", "http://shop.test:8080/outside")
        step = result["policies"][0]
        self.assertEqual(step["outcome"], "assumed_pass")
        self.assertIn("would ask http://127.0.0.1:", step["notes"][0])
        self.assertEqual(result["outcome"], "proxied")

    def test_authorize_without_identity(self) -> None:
        """authorize with no authentication before it: 401."""
        result = self.explain("GET", "http://shop.test:8080/admin")
        self.assertEqual((result["status"], result["policies"][0]["code"]), (401, "unauthorized"))

    def test_ip_filter(self) -> None:
        """ip_filter judges --client-ip, and X-Forwarded-For from a trusted proxy."""
        local = self.explain("GET", "http://shop.test:8080/office")
        office = self.explain("GET", "http://shop.test:8080/office", client_ip="192.168.3.4")
        proxied = self.explain(
            "GET",
            "http://shop.test:8080/office",
            "X-Forwarded-For: 192.168.3.4",
            client_ip="10.1.1.1",
        )
        untrusted = self.explain(
            "GET",
            "http://shop.test:8080/office",
            "X-Forwarded-For: 192.168.3.4",
            client_ip="172.16.0.1",
        )
        self.assertEqual(
            [r["status"] for r in (local, office, proxied, untrusted)], [403, 204, 204, 403]
        )
        self.assertEqual(proxied["request"]["client_ip"], "192.168.3.4")
        self.assertEqual(proxied["request"]["peer"], "10.1.1.1")

    def test_redis_rate_limit(self) -> None:
        """A rate limit kept in Redis would ask Redis: assumed allowed, and said so."""
        self.rewrite("gateway:\n", 'gateway:\n  redis: {url: "redis://127.0.0.1:1/0"}\n')
        self.grant_admin()
        result = self.explain("GET", "http://shop.test:8080/billing/1", f"X-API-Key: {API_KEY}")
        limit = result["policies"][3]
        self.assertEqual(limit["outcome"], "assumed_pass")
        self.assertIn("would ask Redis at redis://127.0.0.1:1/0", limit["notes"][0])

    def test_session_lookup(self) -> None:
        """A session cookie would be looked up in the store: assumed not found."""
        fresh = self.explain("GET", "http://shop.test:8080/cart")
        self.assertEqual(fresh["policies"][0]["outcome"], "pass")
        cookie = sign(new_session_id(), "test-only-session-secret-0123456789", "session")
        known = self.explain("GET", "http://shop.test:8080/cart", f"Cookie: gk_session={cookie}")
        step = known["policies"][0]
        self.assertEqual(step["outcome"], "assumed_pass")
        self.assertEqual(
            step["notes"], ["would look up the session in the in-process store; assumed not found"]
        )


class ActionTests(ExplainCase):
    """What the route's action would do."""

    def test_redirect(self) -> None:
        """A redirect shows its Location."""
        result = self.explain("GET", "http://shop.test:8080/old?a=1")
        self.assertEqual(result["status"], 308)
        self.assertEqual(result["action"]["location"], "https://shop.test/new/old?a=1")
        self.assertEqual(result["answer"]["headers"]["Location"], "https://shop.test/new/old?a=1")
        self.assertEqual(result["exit_code"], 0)

    def test_respond(self) -> None:
        """A respond route answers its status and body; a 4xx one exits 2."""
        result = self.explain("GET", "http://shop.test:8080/teapot")
        self.assertEqual(
            (result["action"]["kind"], result["status"], result["answer"]["body"]),
            ("respond", 418, "short and stout"),
        )
        self.assertEqual(result["exit_code"], 2)

    def test_static(self) -> None:
        """A static route resolves the file under its root and serves it."""
        folder = os.path.join(self.directory, "public", "site")
        result = self.explain("GET", "http://shop.test:8080/site/")
        action = result["action"]
        self.assertEqual(action["kind"], "static")
        self.assertEqual(action["file"], os.path.join(folder, "index.html"))
        self.assertTrue(action["exists"])
        self.assertEqual((result["status"], result["exit_code"]), (200, 0))
        missing = self.explain("GET", "http://shop.test:8080/site/gone.txt")
        self.assertFalse(missing["action"]["exists"])
        self.assertEqual((missing["status"], missing["answer"]["by"]), (404, "action"))
        folder_without_slash = self.explain("GET", "http://shop.test:8080/site")
        self.assertTrue(folder_without_slash["action"]["folder"])
        self.assertEqual(folder_without_slash["answer"]["headers"]["Location"], "/site/")

    def test_sent_upstream(self) -> None:
        """The head the target would get, after rewrite and headers policies."""
        result = self.explain("GET", "http://shop.test:8080/v1/users/7?x=1", "Cookie: a=b")
        sent = result["action"]["sent"]
        self.assertEqual(sent["request_line"], "GET /users/7?x=1 HTTP/1.1")
        headers = dict(sent["headers"])
        self.assertEqual(headers["X-Client"], "127.0.0.1")
        self.assertEqual(headers["X-Forwarded-Prefix"], "/v1")
        self.assertNotIn("Cookie", headers)
        code, out, _ = self.run_cli(self.path, "GET", "http://shop.test:8080/v1/users/7")
        self.assertIn("sends: GET /users/7 HTTP/1.1", out)

    def test_local_answer_sends_nothing(self) -> None:
        """A route that answers by itself sends nothing upstream."""
        result = self.explain("GET", "http://shop.test:8080/teapot")
        self.assertNotIn("sent", result["action"])

    def test_round_robin_pick(self) -> None:
        """round_robin: a fresh balancer's first target, every time."""
        picks = {self.explain("GET", "http://shop.test:8080/users")["action"]["target"]}
        picks.add(self.explain("GET", "http://shop.test:8080/users/2")["action"]["target"])
        self.assertEqual(picks, {"127.0.0.1:9001"})
        result = self.explain("GET", "http://shop.test:8080/users")
        self.assertIn("first pick of a fresh balancer", result["action"]["pick"])

    def test_hash_pick(self) -> None:
        """hash: one key always goes to one target; keys spread over the targets."""
        picks = {}
        for user in ["ann", "bob", "cyd", "dee", "eve", "fay", "gus", "hal"]:
            first = self.explain("GET", "http://shop.test:8080/carts", f"X-User: {user}")
            again = self.explain("GET", "http://shop.test:8080/carts/x", f"X-User: {user}")
            self.assertEqual(first["action"]["target"], again["action"]["target"])
            picks[user] = first["action"]["target"]
        self.assertGreater(len(set(picks.values())), 1)
        result = self.explain("GET", "http://shop.test:8080/carts", "X-User: ann")
        self.assertEqual(result["action"]["hash_key"], "header:x-user")
        self.assertIn("'ann'", result["action"]["pick"])

    def test_sticky(self) -> None:
        """A sticky cookie would be looked up in the store; without one, balanced."""
        plain = self.explain("GET", "http://shop.test:8080/cart")
        self.assertEqual(plain["action"]["target"], "127.0.0.1:9401")
        self.assertIn("no gk_sticky cookie", plain["action"]["sticky"]["note"])
        cookie = "Cookie: gk_sticky=" + "ab" * 16
        bound = self.explain("GET", "http://shop.test:8080/cart", cookie)
        self.assertEqual(
            bound["action"]["notes"],
            [
                "would look up the target bound to the sticky session in the in-process"
                " store; assumed not found"
            ],
        )
        self.assertIn(bound["action"]["notes"][0], bound["assumptions"])

    def test_nothing_sent(self) -> None:
        """
        Nothing reaches the network: a listening socket standing for the
        target, the auth service and the JWKS URL gets no connection.
        """
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        self.rewrite(f"127.0.0.1:{self.closed}", f"127.0.0.1:{port}")
        self.rewrite("127.0.0.1:9001", f"127.0.0.1:{port}")
        result = self.explain("GET", "http://shop.test:8080/users")
        self.assertEqual(result["action"]["target"], f"127.0.0.1:{port}")
        self.assertEqual(self.explain("GET", "http://shop.test:8080/outside")["outcome"], "proxied")
        remote = self.explain("GET", "http://shop.test:8080/remote-tokens", bearer())
        self.assertEqual(remote["outcome"], "proxied")
        self.assertRaises(BlockingIOError, server.accept)


class OutputTests(ExplainCase):
    """The command: text, JSON, exit codes."""

    def test_text(self) -> None:
        """The readable form names the listener, route, policies, target and result."""
        code, out, _ = self.run_cli(self.path, "GET", "http://shop.test:8080/billing/1")
        self.assertEqual(code, 2)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("request   GET http://shop.test:8080/billing/1"))
        self.assertIn("listener  web (http on 0.0.0.0:8080): by the URL's port", out)
        self.assertIn("route     billing (routes[6])", out)
        self.assertIn("policies  1. cors (cors): pass", out)
        self.assertIn("          2. keys (api_key): refuses 401 unauthorized", out)
        self.assertIn("          3. admins (authorize): not reached", out)
        self.assertIn(
            "result    401 unauthorized: an API key is required - answered by policy keys (exit 2)",
            out,
        )

    def test_json_shape(self) -> None:
        """--json prints one object with the documented members."""
        code, out, _ = self.run_cli(self.path, "GET", "http://shop.test:8080/users", "--json")
        self.assertEqual(code, 0)
        result = json.loads(out)
        self.assertEqual(
            set(result),
            {
                "config",
                "request",
                "listener",
                "route",
                "policies",
                "action",
                "answer",
                "outcome",
                "status",
                "assumptions",
                "exit_code",
            },
        )
        self.assertEqual(
            set(result["request"]),
            {"method", "url", "target", "headers", "peer", "client_ip", "host", "path", "query"},
        )
        self.assertEqual(result["request"]["headers"], [["Host", "shop.test:8080"]])
        self.assertEqual(set(result["listener"]), {"name", "protocol", "bind", "chosen_by", "note"})
        self.assertEqual(
            set(result["route"]),
            {"name", "index", "host", "path", "methods", "headers", "query", "cookies",
             "preflight_for"},
        )  # fmt: skip
        self.assertEqual(result["outcome"], "proxied")
        code, out, _ = self.run_cli(self.path, "GET", "http://shop.test:8080/billing", "--json")
        refused = json.loads(out)
        self.assertEqual(
            set(refused["policies"][0]),
            {"name", "type", "outcome", "status", "code", "detail", "headers", "identity",
             "notes"},
        )  # fmt: skip
        self.assertEqual(
            set(refused["answer"]), {"status", "by", "policy", "code", "detail", "headers", "body"}
        )

    def test_exit_codes(self) -> None:
        """0 served, 2 refused, 1 for an invalid config or request."""
        self.assertEqual(self.run_cli(self.path, "GET", "http://shop.test:8080/users")[0], 0)
        self.assertEqual(self.run_cli(self.path, "GET", "http://shop.test:8080/old")[0], 0)
        self.assertEqual(self.run_cli(self.path, "GET", "http://shop.test:8080/none")[0], 2)
        code, _, err = self.run_cli(self.path, "GET", "ftp://shop.test/users")
        self.assertEqual(code, 1)
        self.assertIn("expected an http:// or https:// URL", err)
        code, _, err = self.run_cli(self.path, "GET", "http://shop.test/", "-H", "no colon")
        self.assertEqual(code, 1)
        broken = write(self.directory, "broken.yaml", "routes:\n  - {name: x, upstream: nope}\n")
        code, out, _ = self.run_cli(broken, "GET", "http://shop.test/")
        self.assertEqual(code, 1)
        self.assertIn(f"{broken}:2:", out)

    def test_module(self) -> None:
        """C{python -m gatewaykit explain} works as a command."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gatewaykit",
                "explain",
                self.path,
                "DELETE",
                "http://shop.test:8080/users/1",
                "--json",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(json.loads(result.stdout)["answer"]["headers"]["Allow"], "GET, HEAD, POST")


class WaitingPluginTests(SynchronousTestCase):
    """A plugin policy that waits for something outside is taken as a pass, and said so."""

    def observe(self, answer: Any) -> tuple[Any, dict[str, Any]]:
        @implementer(IPolicy)
        class Waiting:
            name = "acme"

            def on_request(self, call: Any) -> Any:
                return answer

        journal = Journal()
        observed = ObservedPolicy(Waiting(), "acme.waiting", None, journal)
        call = PolicyCall(Request("GET", b"/", "/"), None)  # type: ignore[arg-type]
        return observed.on_request(call), journal.steps[0]

    def test_later(self) -> None:
        """LATER (it would resume the call itself) lets the explanation go on."""
        result, step = self.observe(LATER)
        self.assertIsNone(result)
        self.assertEqual(step["outcome"], "assumed_pass")
        self.assertIn("not known offline", step["notes"][0])

    def test_deferred_not_fired(self) -> None:
        """A Deferred that does not fire offline is told the same way."""
        result, step = self.observe(Deferred())
        self.assertIsNone(result)
        self.assertEqual(step["outcome"], "assumed_pass")
