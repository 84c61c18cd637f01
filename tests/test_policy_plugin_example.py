"""
The policy plugin example of docs/policies.md, installed as a third party
would install it, used by name in a config, and checked against the docs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.plugins import policy_factories
from gatewaykit.testing import GatewayHarness, install_plugin_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "tests", "fixtures", "third_party", "acme_policy")
FILES = ("acme_hmac.py", "twisted/plugins/acme_policy_plugins.py")

CONFIG = """\
listeners:
  web: {protocol: http, bind: "127.0.0.1:0"}
policies:
  signed: {type: acme.hmac_signature, secret: s3cret, max_skew: 1m}
routes:
  - name: api
    policies: [signed]
    respond: {body: "in"}
"""

NOW = 1_700_000_000


def signed(method: bytes, uri: bytes, secret: bytes = b"s3cret", at: int = NOW) -> bytes:
    message = b"%s %s %d" % (method, uri, at)
    signature = hmac.new(secret, message, hashlib.sha256).hexdigest().encode()
    return (
        method + b" " + uri + b" HTTP/1.1\r\nHost: a\r\nX-Timestamp: %d\r\n" % at
        + b"X-Signature: " + signature + b"\r\n\r\n"
    )


class PolicyPluginExampleTests(SynchronousTestCase):
    """acme.hmac_signature, from its own folder on sys.path."""

    def setUp(self) -> None:
        folder = os.path.abspath(self.mktemp())
        shutil.copytree(EXAMPLE, folder)
        install_plugin_folder(self, folder)
        self.gateway = GatewayHarness(parse_config(CONFIG, environ={}))
        self.gateway.reactor.advance(NOW)

    def test_found_by_name(self) -> None:
        """The plugin is found beside the built-in policy types."""
        self.assertTrue({"acme.hmac_signature", "rate_limit", "jwt"} <= set(policy_factories()))

    def test_signed_request_goes_on(self) -> None:
        """A correctly signed request reaches the route's action."""
        response = self.gateway.request(signed(b"GET", b"/orders?id=7"))
        self.assertEqual((response.status, response.body), (200, b"in"))

    def test_unsigned_refused(self) -> None:
        """A request without a signature gets 401 with WWW-Authenticate."""
        response = self.gateway.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(response.status, 401)
        self.assertEqual(response.headers.get("www-authenticate"), b'HMAC realm="acme"')

    def test_wrong_secret_refused(self) -> None:
        """A signature made with another secret is refused."""
        response = self.gateway.request(signed(b"GET", b"/", secret=b"guess"))
        self.assertEqual(response.status, 401)

    def test_stale_refused(self) -> None:
        """A signature older than max_skew is refused."""
        response = self.gateway.request(signed(b"GET", b"/", at=NOW - 61))
        self.assertEqual(response.status, 401)

    def test_options_checked_with_positions(self) -> None:
        """The plugin's options are checked like any config key, with line:col."""
        bad = CONFIG.replace("secret: s3cret, max_skew: 1m", "max_skew: soon")
        error = self.assertRaises(ConfigError, parse_config, bad, environ={})
        self.assertEqual(
            [str(p) for p in error.problems],
            [
                "inline.yaml:4:11: missing required key 'secret'",
                "inline.yaml:4:49: expected a duration like 250ms, 5s, 2m, 1h or 1m30s,"
                " got 'soon'",
            ],
        )

    def test_docs_show_this_code(self) -> None:
        """docs/policies.md shows exactly the example files tested here."""
        with open(os.path.join(ROOT, "docs", "policies.md"), encoding="utf-8") as f:
            docs = f.read()
        for name in FILES:
            with open(os.path.join(EXAMPLE, name), encoding="utf-8") as f:
                code = f.read()
            block = re.search(r"```python\n# " + re.escape(name) + r"\n(.*?)```", docs, re.S)
            self.assertIsNotNone(block, f"no code block for {name} in docs/policies.md")
            self.assertEqual(block.group(1), code, name)
