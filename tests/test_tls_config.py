"""
Tests for the TLS parts of the configuration (L{gatewaykit.config.tls}):
https listeners' certificates, tls_passthrough listeners' sni mapping and
https upstreams, each mistake at its line and column, and the warnings
C{gatewaykit check} prints.
"""

from __future__ import annotations

import io
import os
import textwrap
from contextlib import redirect_stdout
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit import cli
from gatewaykit.config import ConfigError, loader, parse_config
from gatewaykit.config.model import Config
from gatewaykit.config.tls import certificate_covers
from tests.fixtures.tls import Authority, write_bytes, write_pair

UPSTREAMS = """
upstreams:
  app: {targets: ["127.0.0.1:9001"]}
  web-tls: {targets: ["127.0.0.1:9002"]}
"""


class TLSConfigTestCase(SynchronousTestCase):
    """Parses YAML next to freshly made test certificates."""

    authority = Authority()

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.patch(loader, "balancer_factories", lambda: dict.fromkeys(["round_robin"]))
        self.authority.write(self.base)
        self.pair("site", dns=["site.test", "*.site.test"], kind="rsa")
        self.pair("other", dns=["other.test"])

    def pair(self, stem: str, **issue: Any) -> None:
        certificate, key = self.authority.issue(stem + ".test", **issue)
        write_pair(self.base, stem, certificate, key)

    common = UPSTREAMS

    def parse(self, text: str) -> Config:
        return parse_config(
            textwrap.dedent(text).removeprefix("\n") + self.common,
            source="gw.yaml",
            base_dir=self.base,
            environ={},
        )

    def problems(self, text: str) -> list[str]:
        error = self.assertRaises(ConfigError, self.parse, text)
        return [str(problem) for problem in error.problems]

    def warnings(self, text: str) -> list[str]:
        return [str(warning) for warning in self.parse(text).warnings]


def https(tls: str) -> str:
    """A config with https listener C{secure} whose tls section is C{tls}."""
    return (
        "listeners:\n  secure:\n    protocol: https\n    bind: ':8443'\n    tls:\n"
        + textwrap.indent(textwrap.dedent(tls).strip("\n"), "      ")
        + "\n"
    )


class ListenerTLSTests(TLSConfigTestCase):
    """The tls section of an https listener."""

    def test_defaults(self) -> None:
        """One certificate is enough; the rest has the documented defaults."""
        config = self.parse(https("certificates: [{cert: site.pem, key: site.key}]"))
        tls = config.listeners["secure"].tls
        assert tls is not None
        self.assertEqual(
            (tls.min_version, tls.alpn, tls.client_auth, tls.hsts, tls.ciphers),
            ("1.2", ("h2", "http/1.1"), "none", 0, None),
        )
        certificate = tls.certificates[0]
        self.assertEqual(certificate.names, ("site.test", "*.site.test"))
        self.assertTrue(certificate.chain_pem.startswith(b"-----BEGIN CERTIFICATE-----"))
        self.assertNotIn("key_pem", repr(certificate).replace("key_pem", "") + "x")
        self.assertEqual(config.warnings, ())

    def test_key_not_in_repr(self) -> None:
        """The private key never shows in a repr (logs, /config)."""
        config = self.parse(https("certificates: [{cert: site.pem, key: site.key}]"))
        self.assertNotIn("PRIVATE KEY", repr(config))

    def test_settings(self) -> None:
        """Every key is read."""
        config = self.parse(
            https(
                """
                certificates:
                  - {cert: site.pem, key: site.key}
                  - {cert: other.pem, key: other.key}
                min_version: "1.3"
                alpn: [http/1.1]
                client_ca: ca.pem
                client_auth: optional
                hsts: 8760h
                ciphers: ECDHE-ECDSA-AES128-GCM-SHA256
                session_tickets: false
                """
            )
        )
        tls = config.listeners["secure"].tls
        assert tls is not None
        self.assertEqual(
            (tls.min_version, tls.alpn, tls.client_ca, tls.client_auth, tls.hsts),
            ("1.3", ("http/1.1",), "ca.pem", "optional", 365 * 86400),
        )
        self.assertEqual((tls.ciphers, tls.session_tickets), ("ECDHE-ECDSA-AES128-GCM-SHA256", False))
        self.assertEqual([c.cert for c in tls.certificates], ["site.pem", "other.pem"])

    def test_client_ca_turns_mtls_on(self) -> None:
        """client_ca without client_auth means required."""
        config = self.parse(
            https("certificates: [{cert: site.pem, key: site.key}]\nclient_ca: ca.pem")
        )
        tls = config.listeners["secure"].tls
        assert tls is not None
        self.assertEqual(tls.client_auth, "required")
        self.assertIsNotNone(tls.client_ca_pem)

    def test_client_auth_needs_ca(self) -> None:
        """client_auth required without client_ca is an error at the value."""
        self.assertEqual(
            self.problems(
                https("certificates: [{cert: site.pem, key: site.key}]\nclient_auth: required")
            ),
            [
                "gw.yaml:7:20: client_auth: required needs client_ca: a PEM bundle of the CAs"
                " that sign client certificates"
            ],
        )

    def test_unreadable_certificate(self) -> None:
        """A missing file is reported at its name."""
        problems = self.problems(https("certificates: [{cert: nope.pem, key: site.key}]"))
        self.assertEqual(len(problems), 1)
        self.assertTrue(
            problems[0].startswith("gw.yaml:6:29: cannot read 'nope.pem': No such file"),
            problems[0],
        )

    def test_not_a_certificate(self) -> None:
        """A file without a PEM certificate is an error."""
        write_bytes(self.base, "junk.pem", b"hello\n")
        self.assertEqual(
            self.problems(https("certificates: [{cert: junk.pem, key: site.key}]")),
            ["gw.yaml:6:29: 'junk.pem' holds no PEM certificate"],
        )

    def test_key_mismatch(self) -> None:
        """A key that is not the certificate's is reported at the key."""
        self.assertEqual(
            self.problems(https("certificates: [{cert: site.pem, key: other.key}]")),
            [
                "gw.yaml:6:44: key 'other.key' does not match certificate 'site.pem'"
                " (the first certificate in the file must be the one the key signs for)"
            ],
        )

    def test_encrypted_key(self) -> None:
        """An encrypted key is refused with the reason."""
        certificate, key = self.authority.issue("locked.test", dns=["locked.test"])
        write_pair(self.base, "locked", certificate, key)
        write_bytes(
            self.base,
            "locked.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        self.assertEqual(
            self.problems(https("certificates: [{cert: locked.pem, key: locked.key}]")),
            ["gw.yaml:6:46: 'locked.key' is an encrypted key; gatewaykit needs it unencrypted"],
        )

    def test_weak_key(self) -> None:
        """A key OpenSSL would refuse at start is an error at load."""
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.pair("weak", dns=["weak.test"], key=weak)
        self.assertEqual(
            self.problems(https("certificates: [{cert: weak.pem, key: weak.key}]")),
            ["gw.yaml:6:29: OpenSSL refuses 'weak.pem': ee key too small"],
        )

    def test_expired_warns(self) -> None:
        """An expired certificate loads, with a warning at its file name."""
        self.pair("old", dns=["old.test"], expired=True)
        warnings = self.warnings(https("certificates: [{cert: old.pem, key: old.key}]"))
        self.assertEqual(len(warnings), 1)
        self.assertRegex(warnings[0], r"^gw.yaml:6:29: certificate 'old.pem' expired on \d{4}-")

    def test_no_names_warns(self) -> None:
        """A certificate after the first without DNS names can never be chosen."""
        self.pair("bare")
        warnings = self.warnings(
            https(
                """
                certificates:
                  - {cert: site.pem, key: site.key}
                  - {cert: bare.pem, key: bare.key}
                """
            )
        )
        self.assertEqual(
            warnings,
            [
                "gw.yaml:8:11: certificate 'bare.pem' has no DNS names (subjectAltName):"
                " SNI never chooses it, only the first certificate is a default"
            ],
        )

    def test_ocsp_next_to_certificate(self) -> None:
        """site.pem.ocsp is stapled without being named."""
        certificate, key = self.authority.issue("stapled.test", dns=["stapled.test"])
        write_pair(self.base, "stapled", certificate, key)
        response = self.authority.ocsp_response(certificate)
        write_bytes(self.base, "stapled.pem.ocsp", response)
        config = self.parse(https("certificates: [{cert: stapled.pem, key: stapled.key}]"))
        tls = config.listeners["secure"].tls
        assert tls is not None
        self.assertEqual(
            (tls.certificates[0].ocsp, tls.certificates[0].ocsp_der),
            ("stapled.pem.ocsp", response),
        )

    def test_ocsp_named(self) -> None:
        """An ocsp key names the response; one for another certificate warns."""
        other, _ = self.authority.issue("x.test", dns=["x.test"])
        write_bytes(self.base, "x.ocsp", self.authority.ocsp_response(other))
        warnings = self.warnings(
            https("certificates: [{cert: site.pem, key: site.key, ocsp: x.ocsp}]")
        )
        self.assertEqual(
            warnings, ["gw.yaml:6:60: OCSP response 'x.ocsp' is for another certificate"]
        )

    def test_ocsp_garbage(self) -> None:
        """An ocsp file that is no OCSP response is an error."""
        write_bytes(self.base, "bad.ocsp", b"nope")
        self.assertEqual(
            self.problems(https("certificates: [{cert: site.pem, key: site.key, ocsp: bad.ocsp}]")),
            ["gw.yaml:6:60: 'bad.ocsp' is not a DER OCSP response"],
        )

    def test_bad_values(self) -> None:
        """Each wrong value is reported at its place, all at once."""
        problems = self.problems(
            https(
                """
                certificates: []
                min_version: "1.1"
                alpn: [spdy]
                client_auth: sometimes
                ciphers: NOTACIPHER
                """
            )
        )
        self.assertEqual(
            problems,
            [
                "gw.yaml:6:21: expected a list of at least one certificate",
                "gw.yaml:7:20: unknown TLS version '1.1'; expected one of: 1.2, 1.3;"
                " did you mean '1.3'?",
                "gw.yaml:8:14: unknown ALPN protocol 'spdy'; expected one of: h2, http/1.1",
                "gw.yaml:9:20: unknown client_auth 'sometimes'; expected one of:"
                " none, optional, required",
                "gw.yaml:10:16: OpenSSL knows no cipher in 'NOTACIPHER'",
            ],
        )

    def test_tls_only_on_https(self) -> None:
        """A tls section on an http listener is an error at the key."""
        self.assertEqual(
            self.problems(
                "listeners:\n  web:\n    protocol: http\n    bind: ':80'\n"
                "    tls: {certificates: [{cert: site.pem, key: site.key}]}\n"
            ),
            ["gw.yaml:5:5: 'tls' is only for https listeners"],
        )


class RouteHostTests(TLSConfigTestCase):
    """Route hosts served on https listeners against the certificates."""

    def config(self, *hosts: str) -> str:
        return https("certificates: [{cert: site.pem, key: site.key}]") + (
            "routes:\n  - name: r\n    match: {hosts: [%s]}\n    upstream: app\n"
            % ", ".join(f'"{host}"' for host in hosts)
        )

    def test_covered(self) -> None:
        """Exact and one-label wildcard names cover a host."""
        self.assertEqual(self.warnings(self.config("site.test", "a.site.test", "*.site.test")), [])

    def test_not_covered(self) -> None:
        """A host no certificate names is a warning at the host."""
        self.assertEqual(
            self.warnings(self.config("site.test", "a.b.site.test")),
            [
                "gw.yaml:9:34: no certificate of https listener 'secure' names"
                " 'a.b.site.test', so clients will refuse it (names: site.test, *.site.test)"
            ],
        )

    def test_covers(self) -> None:
        """A wildcard stands for one whole label, not more, not less."""
        self.assertTrue(certificate_covers("*.site.test", "a.site.test"))
        self.assertFalse(certificate_covers("*.site.test", "site.test"))
        self.assertFalse(certificate_covers("*.site.test", "a.b.site.test"))
        self.assertFalse(certificate_covers("site.test", "*.site.test"))
        self.assertTrue(certificate_covers("*.site.test", "*.site.test"))


class PassthroughConfigTests(TLSConfigTestCase):
    """The sni mapping of a tls_passthrough listener."""

    def test_mapping(self) -> None:
        """Exact, wildcard and default names, in file order."""
        config = self.parse(
            "listeners:\n  mux:\n    protocol: tls_passthrough\n    bind: ':9443'\n"
            '    sni: {"DB.test": app, "*.site.test": web-tls, "*": app}\n'
            "    idle_timeout: 10m\n"
        )
        listener = config.listeners["mux"]
        self.assertEqual(
            listener.sni, (("db.test", "app"), ("*.site.test", "web-tls"), ("*", "app"))
        )
        self.assertEqual(listener.idle_timeout, 600.0)

    def test_needs_sni(self) -> None:
        """A tls_passthrough listener without sni says what it needs."""
        self.assertEqual(
            self.problems("listeners:\n  mux: {protocol: tls_passthrough, bind: ':9443'}\n"),
            [
                "gw.yaml:2:8: tls_passthrough listener 'mux' needs an sni mapping of"
                ' server names to upstreams ("*": NAME)'
            ],
        )

    def test_bad_entries(self) -> None:
        """A bad name and an unknown upstream are reported where they are."""
        self.assertEqual(
            self.problems(
                "listeners:\n  mux:\n    protocol: tls_passthrough\n    bind: ':9443'\n"
                '    sni: {"a.*.test": app, "b.test": nope}\n'
            ),
            [
                "gw.yaml:5:11: a wildcard is allowed only as a leading '*.' label,"
                " got 'a.*.test'",
                "gw.yaml:5:38: no upstream named 'nope'",
            ],
        )

    def test_sni_only_on_passthrough(self) -> None:
        """sni on a tcp listener is an error at the key."""
        self.assertEqual(
            self.problems(
                "listeners:\n  db:\n    protocol: tcp\n    bind: ':5432'\n    upstream: app\n"
                '    sni: {"*": app}\n'
            ),
            ["gw.yaml:6:5: 'sni' is only for tls_passthrough listeners"],
        )


class UpstreamTLSConfigTests(TLSConfigTestCase):
    """The tls section of an https upstream."""

    common = ""

    def upstream(self, tls: str) -> str:
        return (
            "upstreams:\n  secure:\n    targets: ['10.0.0.1:443']\n    scheme: https\n"
            f"    tls: {tls}\n"
        )

    def test_settings(self) -> None:
        """Files are read; names kept for messages."""
        self.pair("client", client=True)
        config = self.parse(
            self.upstream(
                "{ca: ca.pem, server_name: API.test, client_cert: client.pem,"
                " client_key: client.key}"
            )
        )
        tls = config.upstreams["secure"].tls
        self.assertEqual((tls.verify, tls.ca, tls.server_name), (True, "ca.pem", "api.test"))
        self.assertIsNotNone(tls.ca_pem)
        self.assertIsNotNone(tls.client_key_pem)

    def test_verify_false_warns(self) -> None:
        """verify: false loads, with a warning at the value."""
        self.assertEqual(
            self.warnings(self.upstream("{verify: false}")),
            [
                "gw.yaml:5:19: verify: false: the upstream's certificate is not checked,"
                " so anyone on the path can pose as it"
            ],
        )

    def test_client_pair(self) -> None:
        """client_cert needs client_key, and they must match."""
        self.assertEqual(
            self.problems(self.upstream("{client_cert: site.pem}")),
            ["gw.yaml:5:10: client_cert and client_key go together: give both or neither"],
        )
        self.assertEqual(
            self.problems(self.upstream("{client_cert: site.pem, client_key: other.key}")),
            [
                "gw.yaml:5:46: key 'other.key' does not match certificate 'site.pem'"
                " (the first certificate in the file must be the one the key signs for)"
            ],
        )

    def test_tls_needs_https(self) -> None:
        """A tls section on a plain http upstream is a mistake."""
        self.assertEqual(
            self.problems("upstreams:\n  u:\n    targets: ['h:1']\n    tls: {verify: true}\n"),
            ["gw.yaml:4:5: 'tls' is only for scheme: https upstreams"],
        )

    def test_wildcard_server_name(self) -> None:
        """server_name names one host."""
        self.assertEqual(
            self.problems(self.upstream('{server_name: "*.test"}')),
            ["gw.yaml:5:24: a server name cannot be a wildcard, got '*.test'"],
        )


class CheckCommandTests(TLSConfigTestCase):
    """gatewaykit check prints warnings and still succeeds."""

    def test_warning_lines(self) -> None:
        """Each warning is one PATH:LINE:COL: warning: line before the summary."""
        path = os.path.join(self.base, "gw.yaml")
        with open(path, "w") as f:
            f.write(UPSTREAMS.lstrip("\n") + "  insecure:\n    targets: ['h:1']\n"
                    "    scheme: https\n    tls: {verify: false}\n")
        out = io.StringIO()
        with redirect_stdout(out):
            code = cli.main(["check", path])
        lines = out.getvalue().splitlines()
        self.assertEqual(code, 0)
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith(f"{path}:7:19: warning: verify: false"), lines[0])
        self.assertTrue(lines[1].endswith("OK (0 listeners, 3 upstreams, 0 routes)"), lines[1])
