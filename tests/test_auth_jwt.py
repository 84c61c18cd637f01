"""
Tests for L{gatewaykit.policies.jwt}: bearer tokens verified with a JWKS
(file or URL) or a secret, claims checked, identity set, claims forwarded.
"""

import json

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config.errors import ConfigError
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies import jwt as jwt_module
from gatewaykit.policies.jwt import JWTFactory, JWTPolicy, parse_jwks, scopes_of
from gatewaykit.testing import parse_response
from tests.fixtures.auth import (
    AUDIENCE,
    ISSUER,
    NOW,
    TEST_HS256_SECRET,
    FakeHTTPClient,
    ec_key,
    echoed,
    harness,
    hs256_by_hand,
    jwk,
    jwks,
    parse_options,
    request,
    rsa_key,
    token,
    unsigned_token,
    write,
)

JWKS_URL = "https://id.test.invalid/jwks.json"


def bearer(value: str) -> str:
    return f"Authorization: Bearer {value}"


class JWTCase(SynchronousTestCase):
    """Builds gateways with one jwt policy, the clock at L{NOW}."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        write(self.directory, "jwks.json", jwks(jwk(rsa_key(), "rsa-1"), jwk(ec_key(), "ec-1")))
        self.client = FakeHTTPClient()

    def options(self, text: str) -> object:
        return parse_options(JWTFactory(), text, self.directory)

    def gateway(self, text: str = "", policies: tuple = ()):
        """A gateway running policy C{jwt} with options C{text} (YAML flow keys)."""
        options = self.options(
            "{algorithms: [RS256, ES256], jwks_file: jwks.json,"
            f" issuer: '{ISSUER}', audience: {AUDIENCE}" + (", " + text if text else "") + "}"
        )
        return self.gateway_with(options, policies)

    def gateway_with(self, options, policies: tuple = ()):
        gateway = harness({"jwt": JWTFactory(self.client), **dict(policies)}, [("jwt", "jwt", options)])
        gateway.reactor.advance(NOW)
        self.addCleanup(gateway.gateway.close)
        return gateway

    def assertRefused(self, response, description: str) -> None:
        """A 401 with RFC 6750's invalid_token challenge."""
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.headers.get("www-authenticate").decode(),
            f'Bearer realm="gatewaykit", error="invalid_token", error_description="{description}"',
        )
        problem = json.loads(response.body)
        self.assertEqual(problem["type"], "urn:gatewaykit:error:unauthorized")
        self.assertEqual(problem["detail"], description)


class ValidTokenTests(JWTCase):
    """Tokens that pass."""

    def test_rs256(self):
        """An RS256 token from the JWKS file passes and sets the identity."""
        response = self.gateway().request(request(bearer(token(rsa_key(), "RS256", "rsa-1"))))
        self.assertEqual(response.status, 200)
        identity = echoed(response)["identity"]
        self.assertEqual(
            (identity["kind"], identity["subject"], identity["scopes"]),
            ("jwt", "user-42", ["read", "write"]),
        )
        self.assertEqual(identity["claims"]["iss"], ISSUER)

    def test_es256(self):
        """An ES256 (P-256) token passes."""
        response = self.gateway().request(request(bearer(token(ec_key(), "ES256", "ec-1"))))
        self.assertEqual(response.status, 200)

    def test_without_kid(self):
        """A token without kid is tried with every key of its algorithm's type."""
        response = self.gateway().request(request(bearer(token(ec_key(), "ES256", None))))
        self.assertEqual(response.status, 200)

    def test_hs256_secret(self):
        """HS256 tokens verify with the configured secret."""
        options = self.options(f"{{algorithms: [HS256], secret: {TEST_HS256_SECRET}}}")
        signed = token(TEST_HS256_SECRET, "HS256", None)
        response = self.gateway_with(options).request(request(bearer(signed)))
        self.assertEqual(response.status, 200)

    def test_leeway(self):
        """A token expired less than leeway ago still passes."""
        signed = token(rsa_key(), "RS256", "rsa-1", exp=NOW - 20)
        response = self.gateway("leeway: 30s").request(request(bearer(signed)))
        self.assertEqual(response.status, 200)

    def test_authorization_kept(self):
        """By default the upstream gets the Authorization field too."""
        signed = token(rsa_key(), "RS256", "rsa-1")
        fields = echoed(self.gateway().request(request(bearer(signed))))["fields"]
        self.assertEqual(fields["authorization"], [f"Bearer {signed}"])

    def test_strip(self):
        """With strip: true the token does not go upstream."""
        signed = token(rsa_key(), "RS256", "rsa-1")
        fields = echoed(self.gateway("strip: true").request(request(bearer(signed))))["fields"]
        self.assertNotIn("authorization", fields)

    def test_cookie(self):
        """With cookie: NAME the token may come in that cookie."""
        signed = token(rsa_key(), "RS256", "rsa-1")
        gateway = self.gateway("cookie: access, strip: true")
        response = gateway.request(request(f"Cookie: theme=dark; access={signed}"))
        self.assertEqual(response.status, 200)
        self.assertEqual(echoed(response)["fields"]["cookie"], ["theme=dark"])

    def test_scp_list(self):
        """Scopes may come as an scp list."""
        signed = token(rsa_key(), "RS256", "rsa-1", scope=None, scp=["a", "b"])
        identity = echoed(self.gateway().request(request(bearer(signed))))["identity"]
        self.assertEqual(identity["scopes"], ["a", "b"])

    def test_scopes_of(self):
        """scope is split on spaces; nothing gives no scopes."""
        self.assertEqual(scopes_of({"scope": "a  b"}), {"a", "b"})
        self.assertEqual(scopes_of({}), frozenset())


class RefusedTokenTests(JWTCase):
    """Tokens that do not pass: 401 with an RFC 6750 challenge."""

    def test_missing(self):
        """No token: a challenge without an error code (RFC 6750 3.1)."""
        response = self.gateway().request(request())
        self.assertEqual(response.status, 401)
        self.assertEqual(response.headers.get("www-authenticate"), b'Bearer realm="gatewaykit"')

    def test_other_scheme(self):
        """Authorization: Basic is not a bearer token."""
        response = self.gateway().request(request("Authorization: Basic dTpw"))
        self.assertEqual(response.status, 401)
        self.assertEqual(response.headers.get("www-authenticate"), b'Bearer realm="gatewaykit"')

    def test_expired(self):
        """exp in the past."""
        signed = token(rsa_key(), "RS256", "rsa-1", exp=NOW - 1)
        self.assertRefused(self.gateway().request(request(bearer(signed))), "the token has expired")

    def test_expiry_follows_clock(self):
        """The gateway's clock decides expiry: a token passes, then expires."""
        gateway = self.gateway()
        signed = token(rsa_key(), "RS256", "rsa-1")
        self.assertEqual(gateway.request(request(bearer(signed))).status, 200)
        gateway.reactor.advance(300)
        self.assertRefused(gateway.request(request(bearer(signed))), "the token has expired")

    def test_remembered_token_expires_after_leeway(self):
        """A remembered token passes until exp + leeway, and is refused from then on."""
        gateway = self.gateway("leeway: 30s")
        signed = token(rsa_key(), "RS256", "rsa-1", exp=NOW + 10)
        self.assertEqual(gateway.request(request(bearer(signed))).status, 200)
        gateway.reactor.advance(39)
        self.assertEqual(gateway.request(request(bearer(signed))).status, 200)
        gateway.reactor.advance(1)
        self.assertRefused(gateway.request(request(bearer(signed))), "the token has expired")

    def test_not_yet_valid(self):
        """nbf in the future."""
        signed = token(rsa_key(), "RS256", "rsa-1", nbf=NOW + 60)
        self.assertRefused(
            self.gateway().request(request(bearer(signed))), "the token is not valid yet"
        )

    def test_issued_in_future(self):
        """iat in the future (beyond leeway)."""
        signed = token(rsa_key(), "RS256", "rsa-1", iat=NOW + 60, nbf=None)
        self.assertRefused(
            self.gateway().request(request(bearer(signed))), "the token was issued in the future"
        )

    def test_time_not_number(self):
        """A time claim that is not a number."""
        signed = token(rsa_key(), "RS256", "rsa-1", exp="tomorrow")
        self.assertRefused(
            self.gateway().request(request(bearer(signed))), "the exp claim is not a number"
        )

    def test_missing_exp(self):
        """exp is required unless require says otherwise."""
        signed = token(rsa_key(), "RS256", "rsa-1", exp=None)
        self.assertRefused(
            self.gateway().request(request(bearer(signed))), "the token has no exp claim"
        )
        response = self.gateway("require: []").request(request(bearer(signed)))
        self.assertEqual(response.status, 200)

    def test_wrong_audience(self):
        """aud not the configured audience."""
        signed = token(rsa_key(), "RS256", "rsa-1", aud="other-api")
        self.assertRefused(
            self.gateway().request(request(bearer(signed))),
            "the token is not meant for this audience",
        )

    def test_wrong_issuer(self):
        """iss not the configured issuer."""
        signed = token(rsa_key(), "RS256", "rsa-1", iss="https://evil.test.invalid")
        self.assertRefused(
            self.gateway().request(request(bearer(signed))), "the token's issuer is not accepted"
        )

    def test_wrong_algorithm(self):
        """An RS256 token to an ES256-only policy."""
        options = self.options("{algorithms: [ES256], jwks_file: jwks.json}")
        signed = token(rsa_key(), "RS256", "rsa-1")
        self.assertRefused(
            self.gateway_with(options).request(request(bearer(signed))),
            "the token's algorithm is not accepted",
        )

    def test_alg_none(self):
        """An unsigned token (alg: none) is never accepted."""
        self.assertRefused(
            self.gateway().request(request(bearer(unsigned_token()))),
            "the token's algorithm is not accepted",
        )

    def test_hs256_with_public_key(self):
        """
        An HS256 token "signed" with the RSA public key (algorithm
        confusion) fails: HS* tokens verify only with the secret.
        """
        public_pem = (
            rsa_key()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        forged = hs256_by_hand(public_pem, "rsa-1", sub="admin")
        options = self.options(
            f"{{algorithms: [RS256, HS256], jwks_file: jwks.json, secret: {TEST_HS256_SECRET}}}"
        )
        self.assertRefused(
            self.gateway_with(options).request(request(bearer(forged))),
            "the signature does not verify",
        )

    def test_tampered(self):
        """A changed payload no longer verifies."""
        header, _, signature = token(rsa_key(), "RS256", "rsa-1").split(".")
        _, payload, _ = token(rsa_key(), "RS256", "rsa-1", sub="admin").split(".")
        self.assertRefused(
            self.gateway().request(request(bearer(f"{header}.{payload}x.{signature}"))),
            "the token is malformed",
        )
        other = token(rsa_key("rsa-other"), "RS256", "rsa-1")
        self.assertRefused(
            self.gateway().request(request(bearer(other))), "the signature does not verify"
        )

    def test_malformed(self):
        """Not a JWT at all."""
        self.assertRefused(
            self.gateway().request(request(bearer("not.a-token"))), "the token is malformed"
        )

    def test_unknown_kid_file(self):
        """With only a file, an unknown kid is refused at once, no fetch."""
        signed = token(rsa_key("rsa-2"), "RS256", "rsa-2")
        self.assertRefused(
            self.gateway().request(request(bearer(signed))), "the token's key id is not known"
        )
        self.assertEqual(self.client.requests, [])

    def test_wrong_secret(self):
        """An HS256 token with another secret."""
        options = self.options(f"{{algorithms: [HS256], secret: {TEST_HS256_SECRET}}}")
        signed = token("another-test-secret-0123456789abcdef", "HS256", None)
        self.assertRefused(
            self.gateway_with(options).request(request(bearer(signed))),
            "the signature does not verify",
        )

    def test_realm(self):
        """realm names the challenge's realm."""
        response = self.gateway("realm: api").request(request())
        self.assertEqual(response.headers.get("www-authenticate"), b'Bearer realm="api"')


class ForwardClaimsTests(JWTCase):
    """forward_claims: claims as fields to the upstream, never the client's."""

    def test_forwarded(self):
        """Each listed claim is set as its field."""
        gateway = self.gateway("forward_claims: {sub: X-User-ID, scope: X-Scopes, n: X-N}")
        signed = token(rsa_key(), "RS256", "rsa-1", n=7)
        fields = echoed(gateway.request(request(bearer(signed))))["fields"]
        self.assertEqual(fields["x-user-id"], ["user-42"])
        self.assertEqual(fields["x-scopes"], ["read write"])
        self.assertEqual(fields["x-n"], ["7"])

    def test_client_copies_removed(self):
        """A client's X-User-ID is dropped, even when the claim is absent."""
        gateway = self.gateway("forward_claims: {sub: X-User-ID, tenant: X-Tenant}")
        signed = token(rsa_key(), "RS256", "rsa-1")
        response = gateway.request(
            request(bearer(signed), "X-User-ID: admin", "x-user-id: root", "X-Tenant: other")
        )
        fields = echoed(response)["fields"]
        self.assertEqual(fields["x-user-id"], ["user-42"])
        self.assertNotIn("x-tenant", fields)

    def test_remembered_token_forwards_each_time(self):
        """A remembered token's claims are set again, and client copies dropped, on every request."""
        gateway = self.gateway("forward_claims: {sub: X-User-ID, tenant: X-Tenant}")
        signed = token(rsa_key(), "RS256", "rsa-1", tenant="acme")
        for forged in ("X-User-ID: admin", "X-Tenant: other", "X-User-ID: root"):
            fields = echoed(gateway.request(request(bearer(signed), forged)))["fields"]
            self.assertEqual(
                (fields["x-user-id"], fields["x-tenant"]), (["user-42"], ["acme"]), forged
            )

    def test_control_characters_dropped(self):
        """A claim with CR/LF is not turned into a field."""
        gateway = self.gateway("forward_claims: {sub: X-User-ID}")
        signed = token(rsa_key(), "RS256", "rsa-1", sub="a\r\nX-Admin: 1")
        fields = echoed(gateway.request(request(bearer(signed))))["fields"]
        self.assertNotIn("x-user-id", fields)
        self.assertNotIn("x-admin", fields)


class JWKSURLTests(JWTCase):
    """Keys fetched from jwks_url: cached, refreshed, rate limited."""

    def url_gateway(self, extra: str = ""):
        options = self.options(
            f"{{algorithms: [RS256, ES256], jwks_url: '{JWKS_URL}', jwks_refresh_min: 30s"
            + (", " + extra if extra else "")
            + "}"
        )
        return self.gateway_with(options)

    def test_fetched_at_start(self):
        """The keys are fetched when the policy is built."""
        self.url_gateway()
        self.assertEqual([r.url for r in self.client.requests], [JWKS_URL])

    def test_waits_for_first_fetch(self):
        """A request before the first fetch ends waits for it."""
        gateway = self.url_gateway()
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(bearer(token(rsa_key(), "RS256", "rsa-1"))))
        self.assertEqual(transport.value(), b"")
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        self.assertIn(b"200 OK", transport.value())
        self.assertEqual(len(self.client.requests), 1)

    def test_unknown_kid_refreshes_once(self):
        """An unknown kid triggers one fetch; still unknown: refused."""
        gateway = self.url_gateway()
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(bearer(token(rsa_key("rsa-2"), "RS256", "rsa-2"))))
        self.assertEqual(len(self.client.requests), 2)
        self.client.requests[1].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        self.assertIn(b"the token's key id is not known", transport.value())

    def test_refresh_rate_limited(self):
        """Another unknown kid within jwks_refresh_min fetches nothing."""
        gateway = self.url_gateway()
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.reactor.advance(31)
        stranger = token(rsa_key("rsa-2"), "RS256", "rsa-2")
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(bearer(stranger)))
        self.client.requests[1].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        for _ in range(5):
            self.assertRefused(gateway.request(request(bearer(stranger))), "the token's key id is not known")
        self.assertEqual(len(self.client.requests), 2)
        gateway.reactor.advance(30)
        gateway.connect()[0].dataReceived(request(bearer(stranger)))
        self.assertEqual(len(self.client.requests), 3)

    def test_concurrent_unknown_kids_share_fetch(self):
        """Requests arriving while a fetch runs wait for that same fetch."""
        gateway = self.url_gateway()
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.reactor.advance(31)
        rotated = token(rsa_key("rsa-2"), "RS256", "rsa-2")
        transports = []
        for _ in range(3):
            protocol, transport = gateway.connect()
            protocol.dataReceived(request(bearer(rotated)))
            transports.append(transport)
        self.assertEqual(len(self.client.requests), 2)
        self.client.requests[1].answer(200, jwks(jwk(rsa_key("rsa-2"), "rsa-2")))
        for transport in transports:
            self.assertIn(b"200 OK", transport.value())

    def test_rotated_key(self):
        """After rotation, the new key's tokens pass once refreshed."""
        gateway = self.url_gateway()
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.reactor.advance(31)
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(bearer(token(rsa_key("rsa-2"), "RS256", "rsa-2"))))
        self.client.requests[1].answer(
            200, jwks(jwk(rsa_key(), "rsa-1"), jwk(rsa_key("rsa-2"), "rsa-2"))
        )
        self.assertIn(b"200 OK", transport.value())

    def test_periodic_refresh(self):
        """Keys are fetched again after jwks_refresh."""
        gateway = self.url_gateway("jwks_refresh: 10m")
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.reactor.advance(599)
        self.assertEqual(len(self.client.requests), 1)
        gateway.reactor.advance(1)
        self.assertEqual(len(self.client.requests), 2)

    def test_max_age(self):
        """Cache-Control max-age sets when keys are fetched again."""
        gateway = self.url_gateway("jwks_refresh: 10m")
        self.client.requests[0].answer(
            200, jwks(jwk(rsa_key(), "rsa-1")), (b"Cache-Control", b"public, max-age=120")
        )
        gateway.reactor.advance(120)
        self.assertEqual(len(self.client.requests), 2)

    def test_unreachable_keeps_keys(self):
        """A failed fetch keeps the last good keys, and is retried sooner."""
        gateway = self.url_gateway("jwks_refresh: 10m")
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.reactor.advance(600)
        self.client.requests[1].deferred.errback(ConnectionRefusedError())
        signed = token(rsa_key(), "RS256", "rsa-1", exp=NOW + 3600)
        response = gateway.request(request(bearer(signed)))
        self.assertEqual(response.status, 200)
        gateway.reactor.advance(30)
        self.assertEqual(len(self.client.requests), 3)

    def test_bad_answer_keeps_keys(self):
        """A non-200 answer or a broken document keeps the last good keys."""
        gateway = self.url_gateway("jwks_refresh: 10m")
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.reactor.advance(600)
        self.client.requests[1].answer(500, b"oops")
        gateway.reactor.advance(30)
        self.client.requests[2].answer(200, b"{not json")
        signed = token(rsa_key(), "RS256", "rsa-1", exp=NOW + 3600)
        response = gateway.request(request(bearer(signed)))
        self.assertEqual(response.status, 200)

    def test_no_keys_at_all(self):
        """Without any key set (the first fetch failed), 503: the token is not at fault."""
        gateway = self.url_gateway()
        self.client.requests[0].deferred.errback(ConnectionRefusedError())
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(bearer(token(rsa_key(), "RS256", "rsa-1"))))
        self.client.requests[1].deferred.errback(ConnectionRefusedError())
        response = parse_response(transport.value())
        self.assertEqual(response.status, 503)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:unavailable")

    def test_close(self):
        """Closing the policy stops refreshing and closes the client."""
        gateway = self.url_gateway()
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        gateway.gateway.close()
        gateway.reactor.advance(3600)
        self.assertEqual(len(self.client.requests), 1)
        self.assertTrue(self.client.closed)
        self.assertEqual(gateway.reactor.getDelayedCalls(), [])


class VerifiedTokenTests(JWTCase):
    """Verified tokens are remembered: checked for their times only, forgotten with their keys."""

    def counting_decode(self) -> list:
        """Count PyJWT's verifications from now on."""
        calls: list = []
        real = jwt_module.jwt.decode

        def decode(*args, **kwargs):
            calls.append(args[0])
            return real(*args, **kwargs)

        self.patch(jwt_module.jwt, "decode", decode)
        return calls

    def test_verified_once(self):
        """The same token again is not verified again."""
        gateway = self.gateway()
        calls = self.counting_decode()
        signed = token(rsa_key(), "RS256", "rsa-1")
        for _ in range(3):
            self.assertEqual(gateway.request(request(bearer(signed))).status, 200)
        other = token(rsa_key(), "RS256", "rsa-1", sub="someone-else")
        self.assertEqual(gateway.request(request(bearer(other))).status, 200)
        self.assertEqual(len(calls), 2)

    def test_refused_not_remembered(self):
        """A token that fails verification is verified (and refused) each time."""
        gateway = self.gateway()
        calls = self.counting_decode()
        signed = token(rsa_key(), "RS256", "rsa-1", aud="somebody-else")
        for _ in range(2):
            response = gateway.request(request(bearer(signed)))
            self.assertRefused(response, "the token is not meant for this audience")
        self.assertEqual(len(calls), 2)

    def test_forgotten_with_its_key(self):
        """When a refresh drops a token's key, the remembered token is refused."""
        options = self.options(
            f"{{algorithms: [RS256], jwks_url: '{JWKS_URL}', jwks_refresh: 10m}}"
        )
        gateway = self.gateway_with(options)
        self.client.requests[0].answer(200, jwks(jwk(rsa_key(), "rsa-1")))
        signed = token(rsa_key(), "RS256", "rsa-1")
        self.assertEqual(gateway.request(request(bearer(signed))).status, 200)
        gateway.reactor.advance(600)
        self.client.requests[1].answer(200, jwks(jwk(rsa_key("rsa-2"), "rsa-2")))
        gateway.reactor.advance(31)  # past jwks_refresh_min: the unknown kid may fetch again
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(bearer(signed)))
        self.client.requests[2].answer(200, jwks(jwk(rsa_key("rsa-2"), "rsa-2")))
        self.assertIn(b"the token's key id is not known", transport.value())

    def test_bounded(self):
        """At most VERIFIED_TOKENS are kept, the least recently used first out."""
        self.patch(jwt_module, "VERIFIED_TOKENS", 3)
        options = self.options(f"{{algorithms: [HS256], secret: {TEST_HS256_SECRET}}}")
        gateway = self.gateway_with(options)
        tokens = [token(TEST_HS256_SECRET, "HS256", None, sub=f"user-{n}") for n in range(5)]
        for signed in tokens[:3] + tokens[:1] + tokens[3:]:
            self.assertEqual(gateway.request(request(bearer(signed))).status, 200)
        remembered = gateway.gateway.policies["jwt"]._verified
        self.assertEqual(
            [pyjwt.decode(t, options={"verify_signature": False})["sub"] for t in remembered],
            ["user-0", "user-3", "user-4"],
        )


class JWKSTests(SynchronousTestCase):
    """Reading JWKS documents."""

    def test_keys(self):
        """RSA and EC public keys are read with their kid."""
        keys, skipped = parse_jwks(jwks(jwk(rsa_key(), "a"), jwk(ec_key(), "b")))
        self.assertEqual(([k.kid for k in keys], skipped), (["a", "b"], []))
        self.assertTrue(keys[0].fits("PS256") and not keys[0].fits("ES256"))
        self.assertTrue(keys[1].fits("ES256") and not keys[1].fits("ES384"))

    def test_jwk_alg_binds(self):
        """A JWK naming its alg verifies only that algorithm."""
        (key,), _ = parse_jwks(jwks(jwk(rsa_key(), "a", alg="RS256")))
        self.assertTrue(key.fits("RS256"))
        self.assertFalse(key.fits("PS256"))

    def test_skipped(self):
        """Private, symmetric and encryption keys are left out, with the reason."""
        private = pyjwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(), as_dict=True)
        document = jwks(
            {**private, "kid": "p"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "s"},
            jwk(rsa_key(), "e", use="enc"),
        )
        keys, skipped = parse_jwks(document)
        self.assertEqual(keys, ())
        self.assertEqual(len(skipped), 3)
        self.assertIn("private key material", skipped[0])

    def test_not_jwks(self):
        """Something else is a ValueError."""
        self.assertRaises(ValueError, parse_jwks, b"[]")
        self.assertRaises(ValueError, parse_jwks, b"{")


class JWTConfigTests(SynchronousTestCase):
    """Mistakes in a jwt policy's options are config errors at their key."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        write(self.directory, "jwks.json", jwks(jwk(rsa_key(), "rsa-1")))

    def problems(self, text: str) -> str:
        error = self.assertRaises(ConfigError, parse_options, JWTFactory(), text, self.directory)
        return str(error)

    def test_none_refused(self):
        """'none' is never an accepted algorithm."""
        self.assertIn(
            "policy.yaml:1:22: the 'none' algorithm is never accepted",
            self.problems("{algorithms: [RS256, none], jwks_file: jwks.json}"),
        )

    def test_algorithms_required(self):
        """algorithms must be given."""
        self.assertIn("missing required key 'algorithms'", self.problems("{jwks_file: jwks.json}"))

    def test_unknown_algorithm(self):
        """An unknown algorithm name, with a hint."""
        self.assertIn("did you mean 'RS256'", self.problems("{algorithms: [RS265], jwks_file: jwks.json}"))

    def test_hs_needs_secret(self):
        """HS256 without a secret."""
        self.assertIn("HS256 needs a secret", self.problems("{algorithms: [HS256]}"))

    def test_short_secret(self):
        """A secret shorter than the hash."""
        self.assertIn(
            "a secret for HS256 must be at least 32 bytes",
            self.problems("{algorithms: [HS256], secret: short}"),
        )

    def test_secret_without_hs(self):
        """A secret no algorithm uses."""
        self.assertIn(
            "secret is only used by HS256",
            self.problems(f"{{algorithms: [RS256], jwks_file: jwks.json, secret: {TEST_HS256_SECRET}}}"),
        )

    def test_asymmetric_needs_keys(self):
        """RS256 without jwks_file or jwks_url."""
        self.assertIn("RS256 needs jwks_file or jwks_url", self.problems("{algorithms: [RS256]}"))

    def test_unreadable_jwks_file(self):
        """A missing file is an error at jwks_file."""
        self.assertIn(
            "policy.yaml:1:34: cannot read JWKS file 'nope.json'",
            self.problems("{algorithms: [RS256], jwks_file: nope.json}"),
        )

    def test_invalid_jwks_file(self):
        """A file that is not a JWKS."""
        write(self.directory, "bad.json", b"{}")
        self.assertIn(
            "JWKS file 'bad.json': expected a JSON object with a \"keys\" list",
            self.problems("{algorithms: [RS256], jwks_file: bad.json}"),
        )

    def test_no_fitting_key(self):
        """A file without a key for the algorithms."""
        self.assertIn(
            "no key in the file fits the algorithms ES256",
            self.problems("{algorithms: [ES256], jwks_file: jwks.json}"),
        )

    def test_refresh_without_url(self):
        """jwks_refresh only makes sense with jwks_url."""
        self.assertIn(
            "jwks_refresh is only used with jwks_url",
            self.problems("{algorithms: [RS256], jwks_file: jwks.json, jwks_refresh: 1m}"),
        )

    def test_reserved_forward_header(self):
        """forward_claims cannot set Host or framing fields."""
        self.assertIn(
            "'Content-Length' cannot be set by a policy",
            self.problems("{algorithms: [RS256], jwks_file: jwks.json, forward_claims: {sub: Content-Length}}"),
        )

    def test_secret_not_in_repr(self):
        """The secret never shows in the options' repr (logs)."""
        options = parse_options(JWTFactory(), f"{{algorithms: [HS256], secret: {TEST_HS256_SECRET}}}")
        self.assertNotIn(TEST_HS256_SECRET, repr(options))


class InterfaceTests(SynchronousTestCase):
    """The factory and policy provide their interfaces."""

    def test_provides(self):
        """The factory and policy provide their interfaces."""
        verifyObject(IPolicyFactory, JWTFactory())
        options = parse_options(JWTFactory(), f"{{algorithms: [HS256], secret: {TEST_HS256_SECRET}}}")
        verifyObject(IPolicy, JWTPolicy("jwt", options, None))
