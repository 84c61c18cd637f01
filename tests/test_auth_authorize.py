"""
Tests for L{gatewaykit.policies.authorize}: scopes and claims required of
the identity an authentication policy set.
"""

import json

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config.errors import ConfigError
from gatewaykit.config.model import Condition
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.authorize import AuthorizeFactory, AuthorizePolicy, claim_matches
from gatewaykit.policies.chain import Identity
from tests.fixtures.auth import harness, parse_options, request


@implementer(IPolicy)
class Identify:
    """Sets the identity its options describe (or none)."""

    name = "identify"

    def __init__(self, identity):
        self.identity = identity

    def on_request(self, call):
        call.identity = self.identity
        return None


@implementer(IPolicyFactory)
class IdentifyFactory:
    """Makes L{Identify} policies."""

    name = "test.identify"
    options = None

    def build(self, name, options, context):
        return Identify(options)


def gateway(identity, text: str):
    options = parse_options(AuthorizeFactory(), text)
    return harness(
        {"authorize": AuthorizeFactory(), "test.identify": IdentifyFactory()},
        [("who", "test.identify", identity), ("staff", "authorize", options)],
    )


def jwt_identity(scopes=(), **claims):
    return Identity("jwt", "user-42", frozenset(scopes), claims)


class ScopeTests(SynchronousTestCase):
    """scopes and any_scopes."""

    def test_no_identity(self):
        """Without an identity (no authentication ran): 401."""
        response = gateway(None, "{scopes: [admin]}").request(request())
        self.assertEqual(response.status, 401)
        self.assertEqual(response.headers.get("www-authenticate"), b'Bearer realm="gatewaykit"')

    def test_all_scopes(self):
        """Every scope of scopes is needed."""
        response = gateway(jwt_identity(["admin", "read"]), "{scopes: [admin, read]}").request(request())
        self.assertEqual(response.status, 200)

    def test_missing_scope(self):
        """A missing scope: 403 naming it, with RFC 6750's insufficient_scope for jwt."""
        response = gateway(jwt_identity(["read"]), "{scopes: [admin, read]}").request(request())
        self.assertEqual(response.status, 403)
        problem = json.loads(response.body)
        self.assertEqual(problem["type"], "urn:gatewaykit:error:forbidden")
        self.assertEqual(problem["detail"], "missing scope 'admin'")
        self.assertEqual(
            response.headers.get("www-authenticate"),
            b'Bearer realm="gatewaykit", error="insufficient_scope", scope="admin read"',
        )

    def test_other_kinds_no_challenge(self):
        """For non-jwt identities the 403 has no Bearer challenge."""
        identity = Identity("api_key", "billing", frozenset())
        response = gateway(identity, "{scopes: [admin]}").request(request())
        self.assertEqual(response.status, 403)
        self.assertIsNone(response.headers.get("www-authenticate"))

    def test_any_scopes(self):
        """One of any_scopes is enough; none is 403."""
        text = "{any_scopes: [admin, support]}"
        self.assertEqual(gateway(jwt_identity(["support"]), text).request(request()).status, 200)
        response = gateway(jwt_identity(["read"]), text).request(request())
        self.assertEqual(json.loads(response.body)["detail"], "missing scope 'admin' or 'support'")

    def test_nothing_required(self):
        """Without requirements any identity passes."""
        self.assertEqual(gateway(jwt_identity(), "{}").request(request()).status, 200)


class ClaimTests(SynchronousTestCase):
    """claims: exact, ~regex, "*"."""

    def test_exact(self):
        """A plain value must equal the claim."""
        self.assertEqual(gateway(jwt_identity(tenant="acme"), "{claims: {tenant: acme}}").request(request()).status, 200)
        response = gateway(jwt_identity(tenant="other"), "{claims: {tenant: acme}}").request(request())
        self.assertEqual(response.status, 403)
        self.assertEqual(json.loads(response.body)["detail"], "claim 'tenant' does not match")

    def test_regex(self):
        """A ~value is a regular expression searched in the claim."""
        text = "{claims: {email: '~@example\\.com$'}}"
        self.assertEqual(gateway(jwt_identity(email="a@example.com"), text).request(request()).status, 200)
        self.assertEqual(gateway(jwt_identity(email="a@example.org"), text).request(request()).status, 403)

    def test_present(self):
        """A "*" condition only needs the claim present."""
        text = "{claims: {email_verified: '*'}}"
        self.assertEqual(gateway(jwt_identity(email_verified=True), text).request(request()).status, 200)
        self.assertEqual(gateway(jwt_identity(), text).request(request()).status, 403)

    def test_list_claim(self):
        """A list claim matches when one item does."""
        self.assertTrue(claim_matches(Condition.parse("groups", "admins"), ["dev", "admins"]))
        self.assertFalse(claim_matches(Condition.parse("groups", "admins"), ["dev"]))
        self.assertTrue(claim_matches(Condition.parse("level", "3"), 3))
        self.assertTrue(claim_matches(Condition.parse("ok", "true"), True))

    def test_forward_auth_claims(self):
        """Claims of other identities (copied headers) work the same."""
        identity = Identity("forward_auth", "alice", frozenset(), {"X-Role": "admin"})
        self.assertEqual(gateway(identity, "{claims: {X-Role: admin}}").request(request()).status, 200)


class ConfigTests(SynchronousTestCase):
    """Options and interfaces."""

    def test_bad_regex(self):
        """An invalid regular expression is reported at its value."""
        error = self.assertRaises(ConfigError, parse_options, AuthorizeFactory(), "{claims: {a: '~('}}")
        self.assertIn("policy.yaml:1:14: invalid regular expression", str(error))

    def test_provides(self):
        """The factory and policy provide their interfaces."""
        verifyObject(IPolicyFactory, AuthorizeFactory())
        verifyObject(IPolicy, AuthorizePolicy("staff", parse_options(AuthorizeFactory(), "{}")))
