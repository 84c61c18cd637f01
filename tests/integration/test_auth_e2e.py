"""
End-to-end tests of authentication: a real C{twistd gatewaykit} process
with jwt (JWKS file, RS256 and ES256), api_key, basic_auth (htpasswd),
forward_auth (an auth service in the test) and authorize policies, between
curl and a real upstream. Refused requests must never reach the upstream.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from twisted.internet import defer
from twisted.web.resource import Resource

from tests.fixtures.auth import (
    AUDIENCE,
    ISSUER,
    TEST_HS256_SECRET,
    ec_key,
    htpasswd,
    jwk,
    jwks,
    keys_file,
    rsa_key,
    unsigned_token,
    write,
)
from tests.fixtures.auth import token as sign
from tests.integration import support
from tests.integration.support import NODE

# Test-only credentials.
API_KEY = "test-e2e-api-key-0001"
USERS = {"alice": ("bcrypt", "alice-e2e-pw"), "bob": ("sha512_crypt", "bob-e2e-pw")}


def token(key: Any, algorithm: str, kid: str, **overrides: Any) -> str:
    """A token valid now (the gateway's clock is the real one)."""
    now = int(time.time())
    times = {"iat": now - 5, "nbf": now - 5, "exp": now + 300}
    return sign(key, algorithm, kid, **{**times, **overrides})


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class JWKSDocument(Resource):
    """Serves C{document} (changed by the test to rotate keys) and counts fetches."""

    isLeaf = True

    def __init__(self, document: bytes) -> None:
        super().__init__()
        self.document = document
        self.fetches = 0

    def render_GET(self, request: Any) -> bytes:
        self.fetches += 1
        request.setHeader(b"Content-Type", b"application/json")
        return self.document


class AuthService(Resource):
    """
    C{GET /check}: 200 with C{X-User: alice} for a request carrying the
    cookie C{sso=ok}, else a 302 to a login page.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.checks: list[dict[str, str]] = []

    def render_GET(self, request: Any) -> bytes:
        self.checks.append(
            {n.decode().lower(): v[0].decode() for n, v in request.requestHeaders.getAllRawHeaders()}
        )
        if b"sso=ok" in (request.getHeader(b"cookie") or b""):
            request.setHeader(b"X-User", b"alice")
            return b""
        request.setResponseCode(302)
        request.setHeader(b"Location", b"https://login.test.invalid/?next=/")
        return b"please log in\n"


def _seen(response: support.Response) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        fields.setdefault(name.lower(), []).append(value)
    return fields


class AuthTests(support.GatewayTestCase):
    """Every authentication policy through a real gateway."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        """Files, the auth service, the upstream and the gateway."""
        directory = os.path.abspath(self.mktemp())
        jwks_path = write(directory, "jwks.json", jwks(jwk(rsa_key(), "rsa-1"), jwk(ec_key(), "ec-1")))
        keys_path = write(
            directory,
            "keys.yaml",
            keys_file({API_KEY: {"name": "billing", "scopes": ["invoices:read"]}}),
        )
        htpasswd_path = write(directory, "htpasswd", htpasswd(USERS))
        self.auth_service = AuthService()
        auth_port = support.serve_resource(self, self.auth_service)
        dead_port = yield support.closed_port()
        self.jwks_document = JWKSDocument(jwks(jwk(rsa_key(), "rsa-1")))
        jwks_port = support.serve_resource(self, self.jwks_document)
        self.upstream = self.start_upstream()

        def site(name: str, policies: list[str]) -> dict[str, Any]:
            return {
                "name": name,
                "match": {"hosts": [f"{name}.test"], "path_prefix": "/"},
                "policies": policies,
                "upstream": "app",
            }

        config = {
            "gateway": {"node": NODE, "access_log": {"path": "off"}},
            "listeners": {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
            "upstreams": {"app": {"targets": [f"127.0.0.1:{self.upstream.port}"]}},
            "policies": {
                "jwt": {
                    "type": "jwt",
                    "algorithms": ["RS256", "ES256"],
                    "jwks_file": jwks_path,
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "leeway": "5s",
                    "forward_claims": {"sub": "X-User-ID", "tenant": "X-Tenant"},
                },
                "jwt-url": {
                    "type": "jwt",
                    "algorithms": ["RS256"],
                    "jwks_url": f"http://127.0.0.1:{jwks_port}/jwks.json",
                    "jwks_refresh_min": "1s",
                },
                "admin": {"type": "authorize", "scopes": ["admin"]},
                "keys": {"type": "api_key", "keys_file": keys_path, "forward_subject": "X-Consumer"},
                "basic": {
                    "type": "basic_auth",
                    "htpasswd": htpasswd_path,
                    "realm": "staff",
                    "forward_subject": "X-User",
                },
                "ext": {
                    "type": "forward_auth",
                    "url": f"http://127.0.0.1:{auth_port}/check",
                    "copy_headers": ["X-User"],
                    "subject_header": "X-User",
                    "timeout": "2s",
                },
                "ext-down": {
                    "type": "forward_auth",
                    "url": f"http://127.0.0.1:{dead_port}/check",
                    "timeout": "1s",
                },
            },
            "routes": [
                site("jwt", ["jwt"]),
                site("admin", ["jwt", "admin"]),
                site("rotating", ["jwt-url"]),
                site("keys", ["keys"]),
                site("basic", ["basic"]),
                site("ext", ["ext"]),
                site("down", ["ext-down"]),
            ],
        }
        self.gateway = yield self.start_gateway(config)

    def get(self, host: str, *fields: str) -> defer.Deferred:
        """GET /headers on virtual host C{host}.test with C{fields}."""
        options = ["-H", f"Host: {host}.test"]
        for field in fields:
            options += ["-H", field]
        return support.curl(self, self.gateway.url("/headers"), *options)

    @defer.inlineCallbacks
    def test_jwt(self) -> support.Steps:
        """
        RS256 and ES256 tokens from the JWKS file pass with their claims
        forwarded (a client's copies dropped); expired, wrong audience, wrong
        algorithm, alg none and unknown kid are 401 and never reach the upstream.
        """
        yield self.start()
        rs = yield self.get(
            "jwt",
            "Authorization: Bearer " + token(rsa_key(), "RS256", "rsa-1", tenant="acme"),
            "X-User-ID: admin",
            "X-Tenant: evil",
        )
        self.assertEqual(rs.status, 200)
        seen = _seen(rs)
        self.assertEqual((seen["x-user-id"], seen["x-tenant"]), (["user-42"], ["acme"]))
        es = yield self.get("jwt", "Authorization: Bearer " + token(ec_key(), "ES256", "ec-1"))
        self.assertEqual(es.status, 200)
        self.assertEqual(self.upstream.requests, 2)

        wrong_algorithm = "the token's algorithm is not accepted"
        refused = [
            ("the token has expired", token(rsa_key(), "RS256", "rsa-1", exp=int(time.time()) - 60)),
            ("the token is not meant for this audience", token(rsa_key(), "RS256", "rsa-1", aud="other")),
            (wrong_algorithm, token(rsa_key(), "PS256", "rsa-1")),
            (wrong_algorithm, token(TEST_HS256_SECRET, "HS256", "rsa-1")),
            (wrong_algorithm, unsigned_token()),
            ("the token's key id is not known", token(rsa_key("rsa-2"), "RS256", "rsa-2")),
        ]
        for description, bad in refused:
            response = yield self.get("jwt", f"Authorization: Bearer {bad}")
            self.assertEqual(response.status, 401, description)
            self.assertEqual(
                response.header("WWW-Authenticate"),
                f'Bearer realm="gatewaykit", error="invalid_token", error_description="{description}"',
            )
            self.assertEqual(response.header("Content-Type"), "application/problem+json")
        missing = yield self.get("jwt")
        self.assertEqual(missing.header("WWW-Authenticate"), 'Bearer realm="gatewaykit"')
        self.assertEqual(self.upstream.requests, 2)

    @defer.inlineCallbacks
    def test_jwks_url(self) -> support.Steps:
        """
        Keys from jwks_url: a rotated key is fetched on its first token; an
        unknown kid right after fetches nothing more (refresh rate limited).
        """
        yield self.start()
        first = yield self.get("rotating", "Authorization: Bearer " + token(rsa_key(), "RS256", "rsa-1"))
        self.assertEqual(first.status, 200)
        self.assertEqual(self.jwks_document.fetches, 1)
        self.jwks_document.document = jwks(jwk(rsa_key(), "rsa-1"), jwk(rsa_key("rsa-2"), "rsa-2"))
        yield support.sleep(1.1)
        rotated = token(rsa_key("rsa-2"), "RS256", "rsa-2")
        response = yield self.get("rotating", f"Authorization: Bearer {rotated}")
        self.assertEqual(response.status, 200)
        self.assertEqual(self.jwks_document.fetches, 2)
        stranger = token(rsa_key("rsa-3"), "RS256", "rsa-3")
        response = yield self.get("rotating", f"Authorization: Bearer {stranger}")
        self.assertEqual(response.status, 401)
        self.assertEqual(self.jwks_document.fetches, 2)

    @defer.inlineCallbacks
    def test_authorize(self) -> support.Steps:
        """A token without the admin scope is 403; with it, 200."""
        yield self.start()
        plain = token(rsa_key(), "RS256", "rsa-1", scope="read")
        response = yield self.get("admin", f"Authorization: Bearer {plain}")
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["detail"], "missing scope 'admin'")
        self.assertIn('error="insufficient_scope", scope="admin"', response.header("WWW-Authenticate"))
        self.assertEqual(self.upstream.requests, 0)
        admin = token(rsa_key(), "RS256", "rsa-1", scope="read admin")
        response = yield self.get("admin", f"Authorization: Bearer {admin}")
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_api_key(self) -> support.Steps:
        """A listed key passes (stripped, its name forwarded); another is 401."""
        yield self.start()
        response = yield self.get("keys", f"X-API-Key: {API_KEY}", "X-Consumer: root")
        self.assertEqual(response.status, 200)
        seen = _seen(response)
        self.assertEqual(seen["x-consumer"], ["billing"])
        self.assertNotIn("x-api-key", seen)
        bad = yield self.get("keys", "X-API-Key: test-e2e-wrong-key")
        self.assertEqual(bad.status, 401)
        self.assertEqual(bad.header("WWW-Authenticate"), 'APIKey realm="gatewaykit", header="X-API-Key"')
        self.assertEqual(self.upstream.requests, 1)

    @defer.inlineCallbacks
    def test_basic(self) -> support.Steps:
        """bcrypt and SHA-512 crypt users pass; a wrong password is 401."""
        yield self.start()
        for user, (_, password) in USERS.items():
            response = yield self.get("basic", basic(user, password))
            self.assertEqual(response.status, 200, user)
            seen = _seen(response)
            self.assertEqual(seen["x-user"], [user])
            self.assertNotIn("authorization", seen)
        wrong = yield self.get("basic", basic("alice", "nope"))
        self.assertEqual(wrong.status, 401)
        self.assertEqual(wrong.header("WWW-Authenticate"), 'Basic realm="staff", charset="UTF-8"')
        self.assertEqual(self.upstream.requests, 2)

    @defer.inlineCallbacks
    def test_forward_auth(self) -> support.Steps:
        """
        The auth service's yes lets the request on with X-User copied; its
        302 reaches the client as is; a service that is down gives 503.
        """
        yield self.start()
        allowed = yield self.get("ext", "Cookie: sso=ok", "X-User: mallory")
        self.assertEqual(allowed.status, 200)
        self.assertEqual(_seen(allowed)["x-user"], ["alice"])
        check = self.auth_service.checks[0]
        self.assertEqual(
            (check["x-forwarded-method"], check["x-forwarded-uri"], check["x-forwarded-host"]),
            ("GET", "/headers", "ext.test"),
        )
        self.assertEqual(check["x-forwarded-for"], "127.0.0.1")
        denied = yield self.get("ext")
        self.assertEqual(denied.status, 302)
        self.assertEqual(denied.header("Location"), "https://login.test.invalid/?next=/")
        self.assertEqual(denied.body, b"please log in\n")
        down = yield self.get("down")
        self.assertEqual(down.status, 503)
        self.assertEqual(down.json()["type"], "urn:gatewaykit:error:unavailable")
        self.assertEqual(self.upstream.requests, 1)

    @defer.inlineCallbacks
    def test_clean_shutdown(self) -> support.Steps:
        """
        After basic_auth (its thread pool), forward_auth and jwks_url (their
        connection pools) served requests, SIGTERM still exits 0 promptly.
        """
        yield self.start()
        yield self.get("basic", basic("alice", USERS["alice"][1]))
        yield self.get("ext", "Cookie: sso=ok")
        started = time.monotonic()
        code = yield self.gateway.stop(timeout=15)
        self.assertEqual(code, 0, self.gateway.output)
        self.assertLess(time.monotonic() - started, 10)
        self.assertNotIn("Traceback", self.gateway.output)
