"""
End-to-end tests of TLS: a real gateway process with https and
tls_passthrough listeners and https upstreams, driven by curl, openssl
s_client and Twisted TLS clients, with test certificates made here.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import crypto
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.tls import TLSMemoryBIOFactory

from gatewaykit.config.tls import dns_names
from tests.fixtures.tls import Authority, Recorder, write_pair
from tests.integration import support

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def server_options(certificate: Any, key: Any) -> ssl.CertificateOptions:
    """Twisted server TLS options for a test certificate."""
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(certificate),
    )


class TLSUpstreamServer(support.UpstreamServer):
    """The test upstream, spoken to over TLS."""

    def listen_tls(self, test_case: Any, options: ssl.CertificateOptions) -> TLSUpstreamServer:
        wrapped = TLSMemoryBIOFactory(options, False, self)
        self._port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")  # type: ignore[arg-type]
        test_case.addCleanup(self.stop)
        return self


class Greeter(Protocol):
    """A TLS service behind the passthrough: says its name, then echoes."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connectionMade(self) -> None:
        self.transport.write(b"I am " + self.name + b"\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


@defer.inlineCallbacks
def s_client(*args: str) -> Any:
    """Run C{openssl s_client} with C{args} and no input; fire with its output text."""
    out, err, _ = yield getProcessOutputAndValue(
        OPENSSL, ("s_client", *args), env=dict(os.environ), stdinBytes=b""
    )
    return (out + err).decode("utf-8", "replace")


def served_certificate(shown: str) -> x509.Certificate:
    """The server certificate s_client printed."""
    start = shown.index("-----BEGIN CERTIFICATE-----")
    end = shown.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return x509.load_pem_x509_certificate(shown[start:end].encode("ascii"))


class TLSTestCase(support.GatewayTestCase):
    """Certificates for C{*.test} names from one test CA, in a fresh folder."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.authority = Authority()
        self.ca = self.authority.write(self.dir)

    def pair(self, stem: str, names: list[str], kind: str = "ec", **issue: Any) -> dict:
        """A certificate for C{names} written as STEM.pem/STEM.key: its config entry."""
        certificate, key = self.authority.issue(names[0], dns=names, kind=kind, **issue)
        cert, key_path = write_pair(self.dir, stem, certificate, key)
        return {"cert": cert, "key": key_path}

    def gateway_config(self, listeners: dict, upstreams: dict, routes: list) -> dict:
        return {
            "gateway": {"node": support.NODE, "access_log": {"path": "off"}, "drain_timeout": "2s"},
            "listeners": listeners,
            "upstreams": upstreams,
            "routes": routes,
        }

    def curl_https(self, port: int, host: str, path: str, *options: str) -> defer.Deferred:
        return support.curl(
            self,
            f"https://{host}:{port}{path}",
            "--http1.1",
            "--cacert",
            self.ca,
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            *options,
            max_time=20,
        )


class HTTPSListenerTests(TLSTestCase):
    """An https listener with two certificates chosen by SNI."""

    @defer.inlineCallbacks
    def start(self, tls: Optional[dict] = None) -> Any:
        self.apps = [self.start_upstream(), self.start_upstream()]
        tls = tls or {
            "certificates": [
                self.pair("a", ["a.test"], kind="rsa"),
                self.pair("b", ["b.test", "*.b.test"]),
            ],
            "hsts": 600,
        }
        config = self.gateway_config(
            {
                "web": {"protocol": "http", "bind": "127.0.0.1:0"},
                "websecure": {"protocol": "https", "bind": "127.0.0.1:0", "tls": tls},
            },
            {
                "a": {"targets": [f"127.0.0.1:{self.apps[0].port}"]},
                "b": {"targets": [f"127.0.0.1:{self.apps[1].port}"]},
            },
            [
                {
                    "name": "to-https",
                    "listeners": ["web"],
                    "redirect": {"to": "https://{host}{uri}", "status": 308},
                },
                {
                    "name": "a",
                    "listeners": ["websecure"],
                    "match": {"hosts": ["a.test"]},
                    "upstream": "a",
                },
                {
                    "name": "b",
                    "listeners": ["websecure"],
                    "match": {"hosts": ["b.test"]},
                    "upstream": "b",
                },
            ],
        )
        self.gateway = yield self.start_gateway(config, ("web", "websecure"))
        self.port = self.gateway.port("websecure")

    @defer.inlineCallbacks
    def test_sni_two_hosts(self) -> Any:
        """Each name gets its certificate, its route and the same forwarded headers."""
        yield self.start()
        headers = {}
        for index, host in enumerate(("a.test", "b.test")):
            response = yield self.curl_https(self.port, host, "/headers?x=1")
            self.assertEqual(response.status, 200)
            self.assertEqual(self.apps[index].requests, 1)
            self.assertEqual(response.header("Strict-Transport-Security"), "max-age=600")
            received = dict(response.json()["headers"])
            self.assertEqual(received["X-Forwarded-Proto"], "https")
            self.assertEqual(received["Host"], f"{host}:{self.port}")
            headers[host] = sorted(received)
            shown = yield s_client("-connect", f"127.0.0.1:{self.port}", "-servername", host)
            self.assertIn(f"subject=O = gatewaykit test, CN = {host}", shown)
            self.assertIn(host, dns_names(served_certificate(shown)))
        self.assertEqual(headers["a.test"], headers["b.test"])

    @defer.inlineCallbacks
    def test_no_sni_default(self) -> Any:
        """A client without SNI gets the first certificate."""
        yield self.start()
        shown = yield s_client("-connect", f"127.0.0.1:{self.port}", "-noservername")
        self.assertIn("subject=O = gatewaykit test, CN = a.test", shown)

    @defer.inlineCallbacks
    def test_reload_new_certificate(self) -> Any:
        """A renewed certificate is served after SIGHUP, on the same port."""
        yield self.start()
        before = served_certificate(
            (yield s_client("-connect", f"127.0.0.1:{self.port}", "-servername", "a.test"))
        )
        self.pair("a", ["a.test"], kind="rsa")
        self.gateway.signal("HUP")
        yield support.wait_for(
            lambda: "configuration reloaded" in self.gateway.output, what="the reload"
        )
        after = served_certificate(
            (yield s_client("-connect", f"127.0.0.1:{self.port}", "-servername", "a.test"))
        )
        self.assertNotEqual(after.serial_number, before.serial_number)
        response = yield self.curl_https(self.port, "a.test", "/headers")
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_redirect_to_https(self) -> Any:
        """An http listener's route sends clients to https with 308."""
        yield self.start()
        response = yield support.curl(
            self, self.gateway.url("/login?next=%2F", "web"), "-H", "Host: a.test"
        )
        self.assertEqual(response.status, 308)
        self.assertEqual(response.header("Location"), "https://a.test/login?next=%2F")

    @defer.inlineCallbacks
    def test_weak_protocols_and_ciphers_refused(self) -> Any:
        """TLS 1.0, 1.1, CBC and non-forward-secret suites get no session; an AEAD one does."""
        yield self.start()
        target = ("-connect", f"127.0.0.1:{self.port}", "-servername", "a.test")
        anything = ("-cipher", "ALL:@SECLEVEL=0")
        for version in ("-tls1", "-tls1_1"):
            shown = yield s_client(*target, version, *anything)
            self.assertIn("alert protocol version", shown, version)
        for cipher in ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256"):
            shown = yield s_client(*target, "-tls1_2", "-cipher", cipher + ":@SECLEVEL=0")
            self.assertIn("alert handshake failure", shown, cipher)
        shown = yield s_client(*target, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        self.assertIn("Cipher is ECDHE-RSA-AES128-GCM-SHA256", shown)


class MutualTLSTests(TLSTestCase):
    """client_ca with client_auth: required."""

    @defer.inlineCallbacks
    def test_client_certificate(self) -> Any:
        """Without a certificate: no handshake; with one: the upstream sees who it is."""
        app = self.start_upstream()
        client_certificate, client_key = self.authority.issue("client one", client=True)
        client_cert, client_key_path = write_pair(
            self.dir, "client", client_certificate, client_key
        )
        config = self.gateway_config(
            {
                "mtls": {
                    "protocol": "https",
                    "bind": "127.0.0.1:0",
                    "tls": {
                        "certificates": [self.pair("a", ["a.test"])],
                        "client_ca": self.ca,
                        "client_auth": "required",
                    },
                }
            },
            {"app": {"targets": [f"127.0.0.1:{app.port}"]}},
            [{"name": "all", "upstream": "app"}],
        )
        gateway = yield self.start_gateway(config, ("mtls",))
        port = gateway.port("mtls")
        failed = yield self.assertFailure(
            self.curl_https(port, "a.test", "/headers"), AssertionError
        )
        self.assertIn("alert", str(failed))
        self.assertEqual(app.requests, 0)
        response = yield self.curl_https(
            port,
            "a.test",
            "/headers",
            "--cert",
            client_cert,
            "--key",
            client_key_path,
            "-H",
            "X-Client-Cert-Subject: CN=forged",
        )
        received = response.json()["headers"]
        subjects = [value for name, value in received if name == "X-Client-Cert-Subject"]
        self.assertEqual(subjects, ["CN=client one,O=gatewaykit test"])
        fingerprint = client_certificate.fingerprint(hashes.SHA256()).hex()
        self.assertIn(["X-Client-Cert-Sha256", fingerprint], received)


class UpstreamTLSTests(TLSTestCase):
    """Upstreams with scheme: https."""

    @defer.inlineCallbacks
    def test_verified_and_pooled(self) -> Any:
        """A verified upstream works over one pooled TLS connection; a wrong name is 502."""
        certificate, key = self.authority.issue("up.test", dns=["up.test"])
        app = TLSUpstreamServer().listen_tls(self, server_options(certificate, key))
        target = [f"127.0.0.1:{app.port}"]
        config = self.gateway_config(
            {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
            {
                "good": {
                    "targets": target,
                    "scheme": "https",
                    "tls": {"ca": self.ca, "server_name": "up.test"},
                },
                "wrong": {
                    "targets": target,
                    "scheme": "https",
                    "tls": {"ca": self.ca, "server_name": "wrong.test"},
                },
            },
            [
                {"name": "wrong", "match": {"path_prefix": "/wrong"}, "upstream": "wrong"},
                {"name": "good", "upstream": "good"},
            ],
        )
        gateway = yield self.start_gateway(config)
        for _ in range(5):
            response = yield support.curl(self, gateway.url("/headers"))
            self.assertEqual(response.status, 200)
        self.assertEqual((app.requests, app.connections_accepted), (5, 1))
        response = yield support.curl(self, gateway.url("/wrong"))
        self.assertEqual(response.status, 502)
        yield support.wait_for(
            lambda: "certificate name mismatch" in gateway.output, what="the mismatch logged"
        )
        self.assertIn("upstream wrong: TLS handshake with", gateway.output)
        self.assertIn("does not name 'wrong.test'", gateway.output)
        self.assertEqual(app.requests, 5)


class PassthroughTests(TLSTestCase):
    """Two TLS services behind one tls_passthrough port."""

    @defer.inlineCallbacks
    def test_by_server_name(self) -> Any:
        """Each name reaches its service, encrypted end to end with its own key."""
        ports = {}
        for name in ("db", "www"):
            certificate, key = self.authority.issue(
                f"{name}.example.test", dns=[f"{name}.example.test"]
            )
            factory = Factory.forProtocol(lambda name=name: Greeter(name.encode()))
            port = reactor.listenSSL(
                0, factory, server_options(certificate, key), interface="127.0.0.1"
            )
            self.addCleanup(port.stopListening)
            ports[name] = port.getHost().port
        config = self.gateway_config(
            {
                "mux": {
                    "protocol": "tls_passthrough",
                    "bind": "127.0.0.1:0",
                    "sni": {"db.example.test": "db", "*.example.test": "www"},
                }
            },
            {name: {"targets": [f"127.0.0.1:{port}"]} for name, port in ports.items()},
            [],
        )
        gateway = yield self.start_gateway(config, ("mux",))
        mux = gateway.port("mux")
        trust = ssl.Certificate(crypto.X509.from_cryptography(self.authority.certificate))
        for name, greeting in (
            ("db.example.test", b"I am db\n"),
            ("www.example.test", b"I am www\n"),
        ):
            recorder = Recorder()
            options = ssl.optionsForClientTLS(name, trustRoot=trust)
            endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", mux, options)
            yield connectProtocol(endpoint, recorder)
            recorder.transport.write(b"ping\n")  # type: ignore[union-attr]
            yield support.wait_for(
                lambda r=recorder, g=greeting: r.data == g + b"ping\n", what=f"{name} to answer"
            )
            recorder.transport.loseConnection()  # type: ignore[union-attr]
        shown = yield s_client(
            "-connect", f"127.0.0.1:{mux}", "-servername", "db.example.test", "-CAfile", self.ca
        )
        self.assertIn("CN = db.example.test", shown)
        self.assertIn("Verify return code: 0 (ok)", shown)
        # No "*": a client asking for another name is closed.
        shown = yield s_client("-connect", f"127.0.0.1:{mux}", "-servername", "other.test")
        self.assertNotIn("CN = ", shown)
