"""
Tests for L{gatewaykit.policies.api_key}: keys looked up by SHA-256 in a
keys file read with the config.
"""

import json
import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config.errors import ConfigError
from gatewaykit.config.loader import load_config
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.api_key import APIKeyFactory, APIKeyPolicy, parse_keys
from tests.fixtures.auth import echoed, harness, keys_file, parse_options, request, write

# Test-only keys.
BILLING_KEY = "test-key-billing-0001"
REPORTS_KEY = "test-key-reports-0002"
KEYS = keys_file(
    {
        BILLING_KEY: {
            "name": "billing",
            "scopes": ["invoices:read", "invoices:write"],
            "metadata": {"team": "billing", "tier": 2},
        },
        REPORTS_KEY: {"name": "reports"},
    }
)


class APIKeyCase(SynchronousTestCase):
    """Builds gateways with one api_key policy over L{KEYS}."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        write(self.directory, "keys.yaml", KEYS)

    def gateway(self, extra: str = ""):
        text = "{keys_file: keys.yaml" + (", " + extra if extra else "") + "}"
        options = parse_options(APIKeyFactory(), text, self.directory)
        return harness({"api_key": APIKeyFactory()}, [("keys", "api_key", options)])


class APIKeyTests(APIKeyCase):
    """Requests with and without keys."""

    def test_good_key(self):
        """A listed key passes; the identity names it with its scopes and metadata."""
        response = self.gateway().request(request(f"X-API-Key: {BILLING_KEY}"))
        self.assertEqual(response.status, 200)
        self.assertEqual(
            echoed(response)["identity"],
            {
                "kind": "api_key",
                "subject": "billing",
                "scopes": ["invoices:read", "invoices:write"],
                "claims": {"team": "billing", "tier": 2},
            },
        )

    def test_bad_key(self):
        """An unknown key: 401 with the APIKey challenge."""
        response = self.gateway().request(request("X-API-Key: test-key-wrong"))
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.headers.get("www-authenticate"), b'APIKey realm="gatewaykit", header="X-API-Key"'
        )
        self.assertEqual(json.loads(response.body)["detail"], "the API key is not valid")

    def test_missing(self):
        """No key: 401."""
        response = self.gateway().request(request())
        self.assertEqual(response.status, 401)
        self.assertEqual(json.loads(response.body)["detail"], "an API key is required")

    def test_stripped(self):
        """The key does not go upstream by default."""
        fields = echoed(self.gateway().request(request(f"X-API-Key: {REPORTS_KEY}")))["fields"]
        self.assertNotIn("x-api-key", fields)

    def test_kept(self):
        """strip: false forwards it."""
        response = self.gateway("strip: false").request(request(f"X-API-Key: {REPORTS_KEY}"))
        self.assertEqual(echoed(response)["fields"]["x-api-key"], [REPORTS_KEY])

    def test_custom_header(self):
        """header: names another field."""
        gateway = self.gateway("header: Api-Token, realm: billing")
        self.assertEqual(gateway.request(request(f"Api-Token: {BILLING_KEY}")).status, 200)
        response = gateway.request(request(f"X-API-Key: {BILLING_KEY}"))
        self.assertEqual(
            response.headers.get("www-authenticate"), b'APIKey realm="billing", header="Api-Token"'
        )

    def test_query(self):
        """query: alone takes the key from the query string, and removes it."""
        gateway = self.gateway("query: api_key")
        response = gateway.request(request(target=f"/a?x=1&api_key={BILLING_KEY}&y=2"))
        self.assertEqual(response.status, 200)
        self.assertEqual(echoed(response)["uri"], "/a?x=1&y=2")
        refused = gateway.request(request(f"X-API-Key: {BILLING_KEY}"))
        self.assertEqual(refused.headers.get("www-authenticate"), b'APIKey realm="gatewaykit", query="api_key"')

    def test_header_and_query(self):
        """With both, either place works."""
        gateway = self.gateway("header: X-API-Key, query: api_key")
        self.assertEqual(gateway.request(request(f"X-API-Key: {BILLING_KEY}")).status, 200)
        self.assertEqual(gateway.request(request(target=f"/?api_key={BILLING_KEY}")).status, 200)

    def test_forward_subject(self):
        """forward_subject sends the key's name upstream, never the client's copy."""
        gateway = self.gateway("forward_subject: X-Consumer")
        response = gateway.request(request(f"X-API-Key: {REPORTS_KEY}", "X-Consumer: billing"))
        self.assertEqual(echoed(response)["fields"]["x-consumer"], ["reports"])


class KeysFileTests(SynchronousTestCase):
    """The keys file is checked when the config loads."""

    def problems(self, content: str) -> str:
        directory = self.mktemp()
        write(directory, "keys.yaml", content)
        error = self.assertRaises(
            ConfigError, parse_options, APIKeyFactory(), "{keys_file: keys.yaml}", directory
        )
        return str(error)

    def test_missing_file(self):
        """An unreadable file is an error at keys_file."""
        error = self.assertRaises(
            ConfigError, parse_options, APIKeyFactory(), "{keys_file: none.yaml}", self.mktemp()
        )
        self.assertIn("policy.yaml:1:13: cannot read keys file 'none.yaml'", str(error))

    def test_not_yaml(self):
        """A file that is not YAML."""
        self.assertIn("keys file 'keys.yaml': not valid YAML", self.problems("- [unclosed"))

    def test_plain_key(self):
        """A key stored as such is refused, with the hint to store its hash."""
        self.assertIn(
            "entry 1 ('a'): unknown field 'key'; store only the key's sha256",
            self.problems("- {name: a, key: secret}"),
        )

    def test_bad_digest(self):
        """A sha256 that is not 64 hex digits."""
        self.assertIn(
            "entry 1 ('a'): sha256 must be the 64 hex digits", self.problems("- {name: a, sha256: abc}")
        )

    def test_duplicate(self):
        """Two entries with one digest."""
        digest = "a" * 64
        self.assertIn(
            "entry 2 ('b'): same sha256 as 'a'",
            self.problems(f"- {{name: a, sha256: {digest}}}\n- {{name: b, sha256: {digest}}}"),
        )

    def test_upper_case_digest(self):
        """Digests are compared in lower case."""
        keys = parse_keys(f"- {{name: a, sha256: {'AB' * 32}}}".encode())
        self.assertEqual(list(keys), ["ab" * 32])

    def test_relative_to_config(self):
        """keys_file is read from the config file's folder, through the plugin."""
        directory = os.path.abspath(self.mktemp())
        write(directory, "keys.yaml", KEYS)
        path = write(
            directory,
            "gateway.yaml",
            "listeners: {web: {protocol: http, bind: '127.0.0.1:0'}}\n"
            "policies: {keys: {type: api_key, keys_file: keys.yaml}}\n",
        )
        config = load_config(path)
        self.assertEqual(
            sorted(k.name for k in config.policies["keys"].options.keys_file.values()),
            ["billing", "reports"],
        )


class InterfaceTests(SynchronousTestCase):
    """zope interfaces."""

    def test_provides(self):
        """The factory and policy provide their interfaces."""
        directory = self.mktemp()
        write(directory, "keys.yaml", KEYS)
        verifyObject(IPolicyFactory, APIKeyFactory())
        options = parse_options(APIKeyFactory(), "{keys_file: keys.yaml}", directory)
        verifyObject(IPolicy, APIKeyPolicy("keys", options))
