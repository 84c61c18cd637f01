"""
C{https} listeners: TLS in front of the HTTP codec.

Each connection starts as a L{HandshakeGate} under Twisted's TLS transport.
The server name the client asked for (SNI) picks one SSL context per
certificate (L{ServerContexts}); once the handshake is done, the gate reads
the negotiated ALPN protocol and hands the connection to the protocol for
it: HTTP/2 through the hook L{register_h2_protocol_factory} installs, or
HTTP/1.1 (L{HTTP11ServerProtocol}, with the connection's L{TLSInfo} as its
C{tls}). The gate then steps out of the way: the TLS transport delivers
straight to the chosen protocol.

Contexts are built from the config (certificates are read when it loads)
and held by the factory as one value, C{contexts}, which a reload replaces:
handshakes from then on use the new one.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocol,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import CertificateConfig, ListenerConfig, ListenerTLSConfig
from gatewaykit.config.tls import INTERMEDIATE_CIPHERS, dns_names
from gatewaykit.http.forwarding import CLIENT_CERT_FIELDS
from gatewaykit.http.wire import serialize_fields
from gatewaykit.listeners.http import HTTP11ServerFactory
from gatewaykit.listeners.names import NameTable
from gatewaykit.timer import Timer

log = Logger()

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_VERIFY = {
    "optional": SSL.VERIFY_PEER,
    "required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


# -- what a connection's handshake settled ------------------------------------------


def _header_text(value: str) -> bytes:
    """
    C{value} as a header value: printable ASCII kept, anything else escaped
    as RFC 4514 hex pairs of its UTF-8 bytes, so a crafted name cannot break
    the header block.
    """
    out = []
    for char in value:
        if " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out).encode("ascii")


class ClientCertificate:
    """
    The certificate a client presented and the listener's C{client_ca}
    verified (mTLS): its subject and issuer as RFC 4514 strings, its
    SHA-256 fingerprint (lower-case hex), serial (hex), common name and
    SANs.

    @ivar upstream_fields: the header lines sent upstream for it
        (C{X-Client-Cert-Subject}, C{-Issuer}, C{-SHA256}).
    """

    __slots__ = (
        "subject",
        "issuer",
        "sha256",
        "serial",
        "common_name",
        "dns_names",
        "emails",
        "upstream_fields",
    )

    def __init__(self, certificate: x509.Certificate) -> None:
        self.subject = certificate.subject.rfc4514_string()
        self.issuer = certificate.issuer.rfc4514_string()
        self.sha256 = certificate.fingerprint(hashes.SHA256()).hex()
        self.serial = f"{certificate.serial_number:x}"
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.common_name = str(names[0].value) if names else ""
        self.dns_names = dns_names(certificate)
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            self.emails = tuple(san.value.get_values_for_type(x509.RFC822Name))
        except x509.ExtensionNotFound:
            self.emails = ()
        subject_name, issuer_name, sha256_name = CLIENT_CERT_FIELDS
        self.upstream_fields = serialize_fields(
            [
                (subject_name, _header_text(self.subject)),
                (issuer_name, _header_text(self.issuer)),
                (sha256_name, self.sha256.encode("ascii")),
            ]
        )

    def identity(self) -> Any:
        """
        The C{Identity} of kind C{mtls} this certificate stands for, for an
        authorization step when no other authentication ran.
        """
        from gatewaykit.policies.chain import Identity

        return Identity(
            "mtls",
            self.subject,
            claims={
                "subject": self.subject,
                "issuer": self.issuer,
                "cn": self.common_name,
                "sha256": self.sha256,
                "serial": self.serial,
                "dns": list(self.dns_names),
                "email": list(self.emails),
            },
        )

    def __repr__(self) -> str:
        return f"<ClientCertificate {self.subject} sha256={self.sha256[:16]}...>"


class TLSInfo:
    """
    What the handshake of one client connection settled: protocol
    C{version} (C{"TLSv1.3"}), C{cipher}, the C{server_name} the client
    asked for (SNI, or C{None}), the C{alpn} protocol (or C{None}) and the
    verified C{client_cert} (or C{None}). Every request on the connection
    carries it as C{request.tls}.
    """

    __slots__ = ("version", "cipher", "server_name", "alpn", "client_cert")

    def __init__(
        self,
        version: str,
        cipher: Optional[str],
        server_name: Optional[str] = None,
        alpn: Optional[str] = None,
        client_cert: Optional[ClientCertificate] = None,
    ) -> None:
        self.version = version
        self.cipher = cipher
        self.server_name = server_name
        self.alpn = alpn
        self.client_cert = client_cert

    @classmethod
    def of(cls, connection: SSL.Connection) -> TLSInfo:
        """The facts of a connection whose handshake is complete."""
        name = connection.get_servername()
        alpn = connection.get_alpn_proto_negotiated()
        peer = connection.get_peer_certificate(as_cryptography=True)
        return cls(
            version=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name(),
            server_name=name.decode("ascii", "replace").lower() if name else None,
            alpn=alpn.decode("ascii", "replace") if alpn else None,
            client_cert=ClientCertificate(peer) if peer is not None else None,
        )

    def __repr__(self) -> str:
        return f"<TLSInfo {self.version} {self.cipher} sni={self.server_name} alpn={self.alpn}>"


# -- SSL contexts ---------------------------------------------------------------------


def _staple(connection: SSL.Connection, response: Optional[bytes]) -> bytes:
    return response or b""


class ServerContexts:
    """
    The SSL contexts of one https listener, one per certificate, all set
    up alike; the first is every connection's start and the default for
    clients without SNI or asking for a name no certificate has.
    """

    def __init__(
        self, listener: str, tls: ListenerTLSConfig, alpn: Sequence[bytes] = (b"http/1.1",)
    ) -> None:
        self.listener = listener
        self.alpn = tuple(alpn)
        # One session id context per listener: sessions (and tickets) of one
        # listener are not resumed on another.
        session_id = hashlib.sha256(b"gatewaykit:" + listener.encode("utf-8")).digest()
        client_cas = (
            x509.load_pem_x509_certificates(tls.client_ca_pem)
            if tls.client_ca_pem is not None and tls.client_auth != "none"
            else []
        )
        contexts = [
            self._context(certificate, tls, session_id, client_cas)
            for certificate in tls.certificates
        ]
        self.default = contexts[0]
        self._by_name: NameTable[SSL.Context] = NameTable(
            (
                (name, context)
                for certificate, context in zip(tls.certificates, contexts, strict=True)
                for name in certificate.names
            ),
            default=self.default,
            any_depth=False,
        )
        # Every handshake starts on the default context; this callback
        # moves it to the one for the name asked for.
        self.default.set_tlsext_servername_callback(self._server_name)
        now = time.time()
        for certificate in tls.certificates:
            if certificate.not_after < now:
                log.warn(
                    "https listener {listener}: certificate {cert} has expired",
                    listener=listener,
                    cert=certificate.cert,
                )

    def _context(
        self,
        certificate: CertificateConfig,
        tls: ListenerTLSConfig,
        session_id: bytes,
        client_cas: list[x509.Certificate],
    ) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(_VERSIONS[tls.min_version])
        options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
        if not tls.session_tickets:
            options |= SSL.OP_NO_TICKET
        context.set_options(options)
        context.set_cipher_list((tls.ciphers or INTERMEDIATE_CIPHERS).encode("ascii"))
        chain = x509.load_pem_x509_certificates(certificate.chain_pem)
        context.use_certificate(chain[0])
        for intermediate in chain[1:]:
            context.add_extra_chain_cert(intermediate)
        key = serialization.load_pem_private_key(certificate.key_pem, password=None)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
        context.set_session_id(session_id)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        if self.alpn:
            context.set_alpn_select_callback(self._select_protocol)
        if certificate.ocsp_der is not None:
            context.set_ocsp_server_callback(_staple, data=certificate.ocsp_der)
        if client_cas:
            store = context.get_cert_store()
            assert store is not None
            for authority in client_cas:
                store.add_cert(crypto.X509.from_cryptography(authority))
                context.add_client_ca(authority)
            context.set_verify(_VERIFY[tls.client_auth])
        return context

    def _select_protocol(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        for protocol in self.alpn:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

    def _server_name(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        chosen = self._by_name.lookup(name.decode("ascii", "replace") if name else None)
        if chosen is not None and chosen is not self.default:
            connection.set_context(chosen)

    def context_for(self, server_name: Optional[str]) -> SSL.Context:
        """The context a client asking for C{server_name} is served with."""
        chosen = self._by_name.lookup(server_name)
        assert chosen is not None
        return chosen

    def connection(self) -> SSL.Connection:
        """A new server-side TLS connection, starting on the default context."""
        return SSL.Connection(self.default, None)


# -- the HTTP/2 seam -------------------------------------------------------------------

H2ProtocolFactory = Callable[["HTTPSServerFactory", TLSInfo], IProtocol]
_h2_protocol_factory: Optional[H2ProtocolFactory] = None


def register_h2_protocol_factory(factory: Optional[H2ProtocolFactory]) -> None:
    """
    Install the HTTP/2 implementation https listeners built from now on
    use (C{None} removes it). Until one is installed, ALPN offers only
    C{http/1.1} and every connection speaks HTTP/1.1.

    C{factory(https_factory, tls_info)} builds the protocol for one
    connection that negotiated C{h2}; see L{HTTPSServerFactory} for what
    that protocol is expected to do.
    """
    global _h2_protocol_factory
    _h2_protocol_factory = factory


# -- connections ------------------------------------------------------------------------


class TLSServerTransport(BufferingTLSTransport):
    """Twisted's TLS transport, with a half-close the HTTP codec can use."""

    def loseWriteConnection(self) -> None:
        """
        End our direction: flush what is buffered, send close_notify, and
        go on reading until the client's close_notify or the caller's
        timer (TLS has no half-close of its own, and a plain TCP one would
        overtake the data still buffered here).
        """
        self.loseConnection()


@implementer(IHandshakeListener)
class HandshakeGate(Protocol):
    """
    A client connection until its TLS handshake completes (within the
    gateway's C{header_timeout}); then the protocol for the negotiated
    ALPN protocol replaces it.
    """

    transport: Any

    def __init__(self, factory: HTTPSServerFactory) -> None:
        self.factory = factory
        self._timer = Timer(factory.reactor, self._timed_out)
        self._done = False

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self._timer.set(self.factory.gateway.limits.header_timeout)

    def handshakeCompleted(self) -> None:
        self._done = True
        self._timer.cancel()
        transport = self.transport
        try:
            info = TLSInfo.of(transport.getHandle())
            protocol = self.factory.application_protocol(info, transport.getPeer())
        except Exception:
            log.failure(
                "https listener {listener}: cannot serve {client}",
                listener=self.factory.listener.name,
                client=_peer(transport),
            )
            transport.abortConnection()
            return
        # The TLS transport delivers to its wrappedProtocol: pointing it at
        # the chosen protocol takes this gate off every later read.
        transport.wrappedProtocol = protocol
        protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        pass  # nothing is delivered before the handshake completes

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._timer.cancel()
        if not self._done and reason.check(SSL.Error):
            log.info(
                "https listener {listener}: TLS handshake with {client} failed: {error}",
                listener=self.factory.listener.name,
                client=_peer(self.transport),
                error=reason.getErrorMessage(),
            )

    def _timed_out(self) -> None:
        log.info(
            "https listener {listener}: no TLS handshake from {client} in time",
            listener=self.factory.listener.name,
            client=_peer(self.transport),
        )
        self.transport.abortConnection()


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


@implementer(IOpenSSLServerConnectionCreator)
class HTTPSServerFactory(TLSMemoryBIOFactory):
    """
    An https listener: TLS with the listener's L{ServerContexts}, then
    HTTP/1.1 through C{http} (an L{HTTP11ServerFactory} with scheme
    C{https}) or HTTP/2 through C{h2_protocol_factory}.

    For the service and a reload it looks like the HTTP factory:
    C{gateway}, C{listener}, C{reactor} and C{connections} are C{http}'s.
    Setting C{listener} (or calling L{reconfigure}) applies a new listener
    config: new contexts for new handshakes, new HSTS.

    An HTTP/2 protocol built by C{h2_protocol_factory(self, info)} gets its
    transport through C{makeConnection}; it should put C{info} as C{tls} on
    each request, add C{self.http.added_fields} to each response head, and
    join C{connections} (through C{self.http.connection_made} and
    C{connection_lost}) with a C{drain()} method so shutdown can drain it.
    """

    protocol = TLSServerTransport
    noisy = False

    def __init__(self, listener: ListenerConfig, gateway: Any, reactor: Any) -> None:
        self.http = HTTP11ServerFactory(listener, gateway, reactor, scheme="https")
        self.h2_protocol_factory: Optional[H2ProtocolFactory] = _h2_protocol_factory
        self.contexts: ServerContexts
        self.reconfigure(listener)
        super().__init__(self, False, self.http, clock=reactor)

    # -- what the service and reload use ------------------------------------------------

    @property
    def listener(self) -> ListenerConfig:
        return self.http.listener

    @listener.setter
    def listener(self, listener: ListenerConfig) -> None:
        self.reconfigure(listener)

    @property
    def reactor(self) -> Any:
        return self.http.reactor

    @property
    def gateway(self) -> Any:
        return self.http.gateway

    @gateway.setter
    def gateway(self, gateway: Any) -> None:
        self.http.gateway = gateway

    @property
    def connections(self) -> set[Any]:
        return self.http.connections

    def reconfigure(self, listener: ListenerConfig) -> None:
        """Serve C{listener}'s TLS settings to new connections from now on."""
        tls = listener.tls
        if tls is None:
            raise ValueError(f"listener {listener.name} has no tls section")
        offered = [
            protocol.encode("ascii")
            for protocol in tls.alpn
            if protocol != "h2" or self.h2_protocol_factory is not None
        ]
        self.contexts = ServerContexts(listener.name, tls, offered)
        self.http.listener = listener
        self.http.added_fields = (
            serialize_fields([(b"Strict-Transport-Security", b"max-age=%d" % tls.hsts)])
            if tls.hsts > 0
            else b""
        )

    # -- TLS ---------------------------------------------------------------------------

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.contexts.connection()

    def buildProtocol(self, addr: Any) -> TLSServerTransport:
        return self.protocol(self, HandshakeGate(self))

    def application_protocol(self, info: TLSInfo, addr: Any) -> IProtocol:
        """The protocol that serves a connection whose handshake settled C{info}."""
        if info.alpn == "h2" and self.h2_protocol_factory is not None:
            return self.h2_protocol_factory(self, info)
        protocol = self.http.buildProtocol(addr)
        protocol.tls = info
        return protocol

    def logPrefix(self) -> str:
        return f"gatewaykit/{self.listener.name} (TLS)"
