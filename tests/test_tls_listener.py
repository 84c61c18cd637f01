"""
Tests for L{gatewaykit.listeners.tls}: https listeners driven in memory,
with real TLS handshakes between a test client and the listener's
factory over C{iosim} transports and a fake reactor.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any, Optional

from attrs import evolve
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import parse_config
from gatewaykit.config.model import Config
from gatewaykit.gateway import Gateway
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.forwarding import UpstreamHeadBuilder
from gatewaykit.http.message import Headers, Request
from gatewaykit.listeners.factories import listener_factory
from gatewaykit.listeners.http import HTTP11ServerFactory, HTTP11ServerProtocol
from gatewaykit.listeners.names import NameTable
from gatewaykit.listeners.tls import (
    ClientCertificate,
    HTTPSServerFactory,
    ServerContexts,
    TLSInfo,
    register_h2_protocol_factory,
)
from gatewaykit.testing import GatewayReactor, parse_response
from gatewaykit.tunnel.passthrough import PassthroughFactory
from gatewaykit.tunnel.tcp import TCPProxyFactory
from tests.fixtures.tls import Authority, ClientCreator, connect_tls, write_pair

AUTHORITY = Authority()

CONFIG = """
gateway: {node: tls-node, access_log: {path: "off"}, limits: {header_timeout: 5s}}
listeners:
  secure:
    protocol: https
    bind: 127.0.0.1:8443
    tls:
      certificates:
        - {cert: a.pem, key: a.key}
        - {cert: b.pem, key: b.key}
      hsts: 3600
%(extra)s
upstreams:
  app: {targets: ["10.0.0.1:80"]}
routes:
  - {name: a, match: {hosts: [a.test]}, respond: {status: 200, body: "route a"}}
  - {name: b, match: {hosts: [b.test, "*.b.test"]}, respond: {status: 200, body: "route b"}}
  - {name: up, match: {path_prefix: /up}, upstream: app}
"""

GET = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n"


def subject_cn(certificate: Any) -> str:
    """The common name of a peer certificate (pyOpenSSL X509)."""
    return str(
        certificate.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    )


def capture_requests(case: SynchronousTestCase, gateway: Gateway) -> list[Request]:
    """Have C{gateway} keep each request it is given (and answer 418)."""
    seen: list[Request] = []

    def dispatch(stream: Any) -> None:
        seen.append(stream.request)
        stream.send_error(GatewayError(418, "teapot", "seen"))

    case.patch(gateway, "dispatch", dispatch)
    return seen


class HTTPSHarness:
    """An https listener's factory for a config, on a fake reactor."""

    def __init__(self, case: SynchronousTestCase, extra: str = "") -> None:
        self.base = os.path.abspath(case.mktemp())
        os.makedirs(self.base)
        AUTHORITY.write(self.base)
        self.certificates: dict[str, x509.Certificate] = {}
        for stem, kind, names in (
            ("a", "rsa", ["a.test", "*.wild.test"]),
            ("b", "ec", ["b.test", "*.b.test"]),
        ):
            certificate, key = AUTHORITY.issue(stem + ".test", dns=names, kind=kind)
            write_pair(self.base, stem, certificate, key)
            self.certificates[stem] = certificate
        self.client_pair = AUTHORITY.issue("client one", client=True)
        self.reactor = GatewayReactor()
        self.config = self.load(extra)
        self.gateway = Gateway(self.config, self.reactor)
        self.factory = HTTPSServerFactory(
            self.config.listeners["secure"], self.gateway, self.reactor
        )

    def load(self, extra: str = "") -> Config:
        text = textwrap.dedent(CONFIG).lstrip("\n") % {"extra": extra}
        return parse_config(text, source="gw.yaml", base_dir=self.base, environ={})

    def connect(self, creator: ClientCreator) -> tuple[Any, Any, iosim.IOPump]:
        server = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 50000))
        return connect_tls(server, creator, self.reactor)

    def get(self, host: str, creator: Optional[ClientCreator] = None) -> Any:
        """One GET to C{host} with SNI C{host} (or C{creator}); the parsed response."""
        client, recorder, pump = self.connect(creator or ClientCreator(host))
        client.write(GET % host.encode("ascii"))
        pump.flush()
        return parse_response(recorder.data)


class CertificateSelectionTests(SynchronousTestCase):
    """The certificate served for each server name."""

    def setUp(self) -> None:
        self.harness = HTTPSHarness(self)

    def served(self, server_name: Optional[str]) -> str:
        client, _, _ = self.harness.connect(ClientCreator(server_name))
        return subject_cn(client.getPeerCertificate())

    def test_exact(self) -> None:
        """An exact SAN picks its certificate, the second as well as the first."""
        self.assertEqual((self.served("a.test"), self.served("b.test")), ("a.test", "b.test"))

    def test_wildcard(self) -> None:
        """A wildcard SAN covers one label."""
        self.assertEqual(self.served("x.b.test"), "b.test")
        self.assertEqual(self.served("x.wild.test"), "a.test")

    def test_default(self) -> None:
        """Without SNI, or for a name no certificate has, the first one is served."""
        self.assertEqual(self.served(None), "a.test")
        self.assertEqual(self.served("unknown.test"), "a.test")
        self.assertEqual(self.served("x.y.b.test"), "a.test")

    def test_context_for(self) -> None:
        """ServerContexts chooses by name the same way."""
        contexts = self.harness.factory.contexts
        self.assertIs(contexts.context_for(None), contexts.default)
        self.assertIsNot(contexts.context_for("B.TEST."), contexts.default)

    def test_reconfigure(self) -> None:
        """A new listener config (as a reload sets it) serves new handshakes."""
        client, _, _ = self.harness.connect(ClientCreator(None))
        certificate, key = AUTHORITY.issue("new.test", dns=["new.test"])
        write_pair(self.harness.base, "a", certificate, key)
        self.harness.factory.listener = self.harness.load().listeners["secure"]
        self.assertEqual(self.served(None), "new.test")
        self.assertEqual(subject_cn(client.getPeerCertificate()), "a.test")


class NameTableTests(SynchronousTestCase):
    """L{NameTable}: exact, wildcard, default."""

    def test_any_depth(self) -> None:
        """As routes: a wildcard matches any depth, the longest suffix first."""
        table = NameTable([("a.test", 1), ("*.test", 2), ("*.b.test", 3)], default=0)
        self.assertEqual(
            [table.lookup(n) for n in ("a.test", "x.test", "x.y.test", "x.b.test", "test", None)],
            [1, 2, 2, 3, 0, 0],
        )

    def test_one_label(self) -> None:
        """As certificates: a wildcard stands for one label."""
        table = NameTable([("*.test", 2)], default=0, any_depth=False)
        self.assertEqual([table.lookup("x.test"), table.lookup("x.y.test")], [2, 0])

    def test_first_wins(self) -> None:
        """The first entry for a name is kept."""
        self.assertEqual(NameTable([("a.test", 1), ("A.test", 2)]).lookup("a.test"), 1)


class HTTPSRequestTests(SynchronousTestCase):
    """Requests over TLS."""

    def setUp(self) -> None:
        self.harness = HTTPSHarness(self)

    def test_routes_by_host(self) -> None:
        """Each host reaches its route, with Strict-Transport-Security."""
        for host, body in ((b"a.test", b"route a"), (b"b.test", b"route b")):
            response = self.harness.get(host.decode())
            self.assertEqual((response.status, response.body), (200, body))
            self.assertEqual(
                response.headers.get_all(b"strict-transport-security"), [b"max-age=3600"]
            )

    def test_no_hsts_by_default(self) -> None:
        """hsts 0 adds nothing."""
        listener = self.harness.config.listeners["secure"]
        self.harness.factory.reconfigure(evolve(listener, tls=evolve(listener.tls, hsts=0)))
        self.assertIsNone(self.harness.get("a.test").headers.get(b"strict-transport-security"))

    def test_scheme_and_tls_info(self) -> None:
        """Requests say https and carry the connection's TLS facts."""
        seen = capture_requests(self, self.harness.gateway)
        self.harness.get("b.test", ClientCreator("b.test", alpn=[b"http/1.1"]))
        request = seen[0]
        self.assertEqual(request.scheme, "https")
        info = request.tls
        self.assertIsInstance(info, TLSInfo)
        self.assertEqual(
            (info.server_name, info.alpn, info.client_cert), ("b.test", "http/1.1", None)
        )
        self.assertEqual(info.version, "TLSv1.3")

    def test_close_sends_close_notify(self) -> None:
        """A Connection: close response arrives whole and the TLS session ends cleanly."""
        client, recorder, pump = self.harness.connect(ClientCreator("a.test"))
        client.write(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        pump.flush()
        self.assertEqual(parse_response(recorder.data).body, b"route a")
        assert recorder.reason is not None
        # ConnectionDone, not ConnectionLost: the close_notify came first.
        self.assertTrue(recorder.reason.check(ConnectionDone), recorder.reason)

    def test_handshake_timeout(self) -> None:
        """A client that never completes a handshake is dropped after header_timeout."""
        server = self.harness.factory.buildProtocol(None)
        silent = Protocol()
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            silent,
            iosim.FakeTransport(silent, isServer=False),
            clock=self.harness.reactor,
        )
        self.harness.reactor.advance(4.9)
        pump.flush()
        self.assertFalse(server.transport.disconnecting)
        self.harness.reactor.advance(0.2)
        pump.flush()
        self.assertTrue(server.transport.disconnecting)

    def test_looks_like_http_factory(self) -> None:
        """The service and reload see gateway, listener and connections."""
        factory = self.harness.factory
        other = Gateway(self.harness.config, self.harness.reactor)
        factory.gateway = other
        self.assertIs(factory.http.gateway, other)
        self.assertEqual(factory.listener.name, "secure")
        client, _, pump = self.harness.connect(ClientCreator("a.test"))
        self.assertEqual(len(factory.connections), 1)


class SessionTests(SynchronousTestCase):
    """Session resumption and OCSP stapling."""

    def resumed(self, harness: HTTPSHarness, max_version: int) -> bool:
        creator = ClientCreator("a.test", max_version=max_version)
        first, recorder, pump = harness.connect(creator)
        first.write(GET % b"a.test")
        pump.flush()  # TLS 1.3 tickets come after the handshake
        creator.session = first.getHandle().get_session()
        again, _, _ = harness.connect(creator)
        # pyOpenSSL has no public call for this one.
        return bool(_openssl.SSL_session_reused(again.getHandle()._ssl))

    def test_tickets(self) -> None:
        """A client resumes its session (TLS 1.3 and 1.2 tickets)."""
        harness = HTTPSHarness(self)
        self.assertTrue(self.resumed(harness, SSL.TLS1_3_VERSION))
        self.assertTrue(self.resumed(harness, SSL.TLS1_2_VERSION))

    def test_session_cache(self) -> None:
        """Without tickets, TLS 1.2 sessions resume from the server's cache."""
        harness = HTTPSHarness(self)
        listener = harness.config.listeners["secure"]
        harness.factory.reconfigure(
            evolve(listener, tls=evolve(listener.tls, session_tickets=False))
        )
        self.assertTrue(self.resumed(harness, SSL.TLS1_2_VERSION))

    def test_ocsp_staple(self) -> None:
        """A certificate with an OCSP response staples it for clients that ask."""
        harness = HTTPSHarness(self)
        listener = harness.config.listeners["secure"]
        assert listener.tls is not None
        response = AUTHORITY.ocsp_response(harness.certificates["a"])
        stapled = evolve(listener.tls.certificates[0], ocsp="a.ocsp", ocsp_der=response)
        harness.factory.reconfigure(
            evolve(listener, tls=evolve(listener.tls, certificates=(stapled,)))
        )
        asking = ClientCreator("a.test", request_ocsp=True)
        harness.connect(asking)
        self.assertEqual(asking.stapled, [response])


class ALPNTests(SynchronousTestCase):
    """The protocol negotiated, and the HTTP/2 seam."""

    def setUp(self) -> None:
        # A gateway built earlier in this process may have registered HTTP/2.
        register_h2_protocol_factory(None)
        self.harness = HTTPSHarness(self)
        self.addCleanup(register_h2_protocol_factory, None)

    def test_http11_only_without_h2(self) -> None:
        """Without an HTTP/2 implementation only http/1.1 is offered."""
        client, _, _ = self.harness.connect(ClientCreator("a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(client.negotiatedProtocol, b"http/1.1")
        client, _, _ = self.harness.connect(ClientCreator("a.test", alpn=[b"h2"]))
        self.assertIsNone(client.negotiatedProtocol)

    def test_h2_hook(self) -> None:
        """With one registered, h2 is negotiated and its factory builds the protocol."""
        built: list[tuple[Any, TLSInfo]] = []

        def h2(factory: HTTPSServerFactory, info: TLSInfo) -> Protocol:
            built.append((factory, info))
            return Protocol()

        register_h2_protocol_factory(h2)
        factory = HTTPSServerFactory(
            self.harness.config.listeners["secure"], self.harness.gateway, self.harness.reactor
        )
        self.assertEqual(factory.contexts.alpn, (b"h2", b"http/1.1"))
        server = factory.buildProtocol(None)
        client, _, _ = connect_tls(
            server, ClientCreator("a.test", alpn=[b"h2", b"http/1.1"]), self.harness.reactor
        )
        self.assertEqual(client.negotiatedProtocol, b"h2")
        self.assertEqual([(f, i.alpn) for f, i in built], [(factory, "h2")])
        # A client asking for http/1.1 still gets the HTTP/1.1 codec.
        server = factory.buildProtocol(None)
        connect_tls(server, ClientCreator("a.test", alpn=[b"http/1.1"]), self.harness.reactor)
        self.assertIsInstance(server.wrappedProtocol, HTTP11ServerProtocol)


class CipherPolicyTests(SynchronousTestCase):
    """What the default policy refuses."""

    def setUp(self) -> None:
        self.harness = HTTPSHarness(self)

    def test_tls11_refused(self) -> None:
        """A TLS 1.1 client gets no session."""
        client, recorder, _ = self.harness.connect(
            ClientCreator("a.test", max_version=SSL.TLS1_1_VERSION, ciphers="DEFAULT:@SECLEVEL=0")
        )
        self.assertIsNotNone(recorder.reason)
        self.assertFalse(recorder.data)

    def test_cbc_refused(self) -> None:
        """A TLS 1.2 client offering only CBC suites gets no session."""
        _, recorder, _ = self.harness.connect(
            ClientCreator("a.test", max_version=SSL.TLS1_2_VERSION, ciphers="ECDHE-RSA-AES128-SHA")
        )
        self.assertIsNotNone(recorder.reason)

    def test_tls12_aead(self) -> None:
        """A TLS 1.2 client gets an ECDHE AEAD suite."""
        client, _, _ = self.harness.connect(ClientCreator("a.test", max_version=SSL.TLS1_2_VERSION))
        connection = client.getHandle()
        self.assertEqual(connection.get_protocol_version_name(), "TLSv1.2")
        self.assertRegex(connection.get_cipher_name(), r"^ECDHE-RSA-(AES\d+-GCM|CHACHA20)")

    def test_min_13(self) -> None:
        """min_version 1.3 refuses TLS 1.2."""
        harness = HTTPSHarness(self)
        listener = harness.config.listeners["secure"]
        assert listener.tls is not None
        contexts = ServerContexts("secure", evolve(listener.tls, min_version="1.3"))
        self.patch(harness.factory, "contexts", contexts)
        _, recorder, _ = harness.connect(ClientCreator("a.test", max_version=SSL.TLS1_2_VERSION))
        self.assertIsNotNone(recorder.reason)


class MutualTLSTests(SynchronousTestCase):
    """client_ca and client_auth."""

    def harness(self, auth: str) -> HTTPSHarness:
        harness = HTTPSHarness(self)
        listener = harness.config.listeners["secure"]
        assert listener.tls is not None
        with open(os.path.join(harness.base, "ca.pem"), "rb") as f:
            ca = f.read()
        tls = evolve(listener.tls, client_ca="ca.pem", client_ca_pem=ca, client_auth=auth)
        harness.factory.reconfigure(evolve(listener, tls=tls))
        return harness

    def test_required_refuses(self) -> None:
        """Without a client certificate a required listener ends the handshake."""
        harness = self.harness("required")
        _, recorder, _ = harness.connect(ClientCreator("a.test"))
        self.assertIsNotNone(recorder.reason)
        self.assertFalse(recorder.data)

    def test_unknown_ca_refused(self) -> None:
        """A certificate from another CA is refused."""
        harness = self.harness("optional")
        stranger = Authority("stranger CA").issue("stranger", client=True)
        client, recorder, pump = harness.connect(ClientCreator("a.test", certificate=stranger))
        client.write(GET % b"a.test")
        pump.flush()
        self.assertEqual((recorder.data, recorder.reason is not None), (b"", True))

    def test_optional_without(self) -> None:
        """optional lets a client without a certificate in, with no client_cert."""
        harness = self.harness("optional")
        self.assertEqual(harness.get("a.test").status, 200)

    def test_verified_upstream_fields(self) -> None:
        """The verified certificate's subject, issuer and hash go upstream; client copies never."""
        harness = self.harness("required")
        seen = capture_requests(self, harness.gateway)
        client, recorder, pump = harness.connect(
            ClientCreator("a.test", certificate=harness.client_pair)
        )
        client.write(
            b"GET /up HTTP/1.1\r\nHost: a.test\r\nX-Client-Cert-Subject: CN=forged\r\n"
            b"x-client-cert-sha256: 00\r\n\r\n"
        )
        pump.flush()
        request = seen[0]
        cert = request.tls.client_cert
        expected = harness.client_pair[0].fingerprint(hashes.SHA256()).hex()
        self.assertEqual((cert.subject, cert.sha256), ("CN=client one,O=gatewaykit test", expected))
        head = UpstreamHeadBuilder("n", ()).build(request, b"/up", None)
        lines = head.decode("latin-1").split("\r\n")
        self.assertIn("X-Client-Cert-Subject: CN=client one,O=gatewaykit test", lines)
        self.assertIn("X-Client-Cert-Issuer: CN=gatewaykit test CA,O=gatewaykit test", lines)
        self.assertIn(f"X-Client-Cert-SHA256: {expected}", lines)
        self.assertNotIn("forged", head.decode("latin-1"))
        self.assertNotIn("x-client-cert-sha256: 00", head.decode("latin-1"))

    def test_identity(self) -> None:
        """The certificate stands for an identity of kind mtls."""
        identity = ClientCertificate(AUTHORITY.issue("svc-a", client=True)[0]).identity()
        self.assertEqual(
            (identity.kind, identity.subject, identity.claims["cn"]),
            ("mtls", "CN=svc-a,O=gatewaykit test", "svc-a"),
        )


class ClientCertificateTests(SynchronousTestCase):
    """How a certificate is told upstream."""

    def test_header_escaping(self) -> None:
        """Characters outside printable ASCII are RFC 4514 hex escapes; no CR/LF gets through."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "é\r\nX-Evil: 1")])
        certificate, key = AUTHORITY.issue("x", client=True)
        forged = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(certificate.issuer)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(certificate.not_valid_before_utc)
            .not_valid_after(certificate.not_valid_after_utc)
            .sign(AUTHORITY.key, hashes.SHA256())
        )
        fields = ClientCertificate(forged).upstream_fields
        self.assertIn(b"X-Client-Cert-Subject: CN=\\C3\\A9\\0D\\0AX-Evil: 1\r\n", fields)
        self.assertEqual(fields.count(b"\r\n"), 3)

    def test_no_cert_no_fields(self) -> None:
        """Without TLS, the builder adds nothing and still drops client copies."""
        request = Request(
            "GET", b"/", "/", headers=Headers([(b"Host", b"h"), (b"X-Client-Cert-Issuer", b"x")])
        )
        head = UpstreamHeadBuilder("n", ()).build(request, b"/", None)
        self.assertNotIn(b"client-cert", head.lower())


class ListenerFactoryTests(SynchronousTestCase):
    """L{listener_factory}: one factory type per protocol."""

    def test_types(self) -> None:
        """http, https, tcp and tls_passthrough each get theirs."""
        harness = HTTPSHarness(
            self,
            extra=(
                "  web: {protocol: http, bind: ':80'}\n"
                "  db: {protocol: tcp, bind: ':5432', upstream: app}\n"
                '  mux: {protocol: tls_passthrough, bind: ":9443", sni: {"*": app}}'
            ),
        )
        kinds = {
            name: type(listener_factory(listener, harness.gateway, harness.reactor))
            for name, listener in harness.config.listeners.items()
        }
        self.assertEqual(
            kinds,
            {
                "secure": HTTPSServerFactory,
                "web": HTTP11ServerFactory,
                "db": TCPProxyFactory,
                "mux": PassthroughFactory,
            },
        )
        self.assertEqual(set(harness.gateway.routers), {"secure", "web"})
