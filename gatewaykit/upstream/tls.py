"""
Upstreams with C{scheme: https}: TLS to the targets, checked with
Twisted's C{optionsForClientTLS} (the chain against the trust store or the
upstream's C{ca}, the name through service-identity).

A TLS connection joins the pool only once its handshake verified the
target, so a failed handshake is a failed connect (with a log line saying
why), and a pooled TLS connection is reused like a plain one.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Optional

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import UpstreamConfig
from gatewaykit.interfaces import ITarget
from gatewaykit.timer import Timer
from gatewaykit.upstream.connection import UpstreamConnection

log = Logger()

def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """Client connections that check nothing of the server (C{verify: false})."""

    def __init__(self, options: ssl.CertificateOptions, server_name: str) -> None:
        self._options = options
        self._server_name = server_name.encode("idna")
        self._send_name = not _is_ip(server_name)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        if self._send_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


class UpstreamTLS:
    """
    The TLS settings of one https upstream: a client connection creator per
    server name (the configured C{server_name}, else each target's host).
    """

    def __init__(self, config: UpstreamConfig, clock: Any) -> None:
        self.upstream = config.name
        self.config = config.tls
        self._clock = clock
        self._handshake_timeout = config.timeouts.connect
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}
        tls = self.config
        self._client: Optional[ssl.PrivateCertificate] = None
        self._client_chain: list[crypto.X509] = []
        if tls.client_cert_pem is not None and tls.client_key_pem is not None:
            self._client = ssl.PrivateCertificate.loadPEM(tls.client_cert_pem + tls.client_key_pem)
            self._client_chain = [
                crypto.X509.from_cryptography(extra)
                for extra in x509.load_pem_x509_certificates(tls.client_cert_pem)[1:]
            ]
        self._trust: Any = None
        if tls.ca_pem is not None:
            self._trust = ssl.trustRootFromCertificates(
                [
                    ssl.Certificate(crypto.X509.from_cryptography(authority))
                    for authority in x509.load_pem_x509_certificates(tls.ca_pem)
                ]
            )
        if not tls.verify:
            log.warn(
                "upstream {upstream}: tls.verify is false: the targets' certificates"
                " are not checked",
                upstream=config.name,
            )

    def server_name(self, target: ITarget) -> str:
        """The name sent as SNI to C{target} and verified in its certificate."""
        return self.config.server_name or target.host

    def creator(self, server_name: str) -> IOpenSSLClientConnectionCreator:
        """The connection creator for targets reached as C{server_name}."""
        creator = self._creators.get(server_name)
        if creator is None:
            creator = self._creators[server_name] = self._new_creator(server_name)
        return creator

    def _new_creator(self, server_name: str) -> IOpenSSLClientConnectionCreator:
        # No ALPN: upstreams speak HTTP/1.1 anyway, and a server with no
        # protocol in common (Twisted's by default) would fail the handshake.
        extra: dict[str, Any] = {}
        if self._client_chain:
            extra["extraCertChain"] = self._client_chain
        if not self.config.verify:
            if self._client is not None:
                extra["privateKey"] = self._client.privateKey.original
                extra["certificate"] = self._client.original
            options = ssl.CertificateOptions(**extra)
            return _UnverifiedCreator(options, server_name)
        return ssl.optionsForClientTLS(
            server_name,
            trustRoot=self._trust,
            clientCertificate=self._client,
            extraCertificateOptions=extra or None,
        )

    def wrap(self, factory: IProtocolFactory, target: ITarget) -> TLSMemoryBIOFactory:
        """C{factory}'s connection to C{target}, over TLS."""
        return TLSMemoryBIOFactory(
            self.creator(self.server_name(target)), True, factory, clock=self._clock
        )

    def connection(
        self,
        pool: Any,
        target: ITarget,
        on_connect: Callable[[UpstreamConnection], None],
        on_failed: Callable[[Failure], None],
    ) -> TLSUpstreamConnection:
        """A connection for the pool, handed to C{on_connect} once verified."""

        def failed(reason: Failure) -> None:
            self.handshake_failed(target, reason)
            on_failed(reason)

        return TLSUpstreamConnection(
            pool, target, on_connect, failed, self._clock, self._handshake_timeout
        )

    def handshake_failed(self, target: ITarget, reason: Failure) -> None:
        """Log why the TLS handshake with C{target} failed."""
        log.warn(
            "upstream {upstream}: TLS handshake with {target} failed: {why}",
            upstream=self.upstream,
            target=target.address,
            why=describe_failure(reason, self.server_name(target)),
        )


def describe_failure(reason: Failure, server_name: str) -> str:
    """A one-line account of a failed client handshake."""
    if reason.check(VerificationError):
        return (
            f"certificate name mismatch: the certificate does not name {server_name!r}"
            f" ({reason.value})"
        )
    if reason.check(SSL.Error):
        errors = reason.value.args[0] if reason.value.args else []
        texts = [entry[2] for entry in errors if isinstance(entry, tuple) and len(entry) == 3]
        return "; ".join(texts) or reason.getErrorMessage()
    if reason.check(ConnectTimeout):
        return "no handshake in time"
    return reason.getErrorMessage()


@implementer(IHandshakeListener)
class TLSUpstreamConnection(UpstreamConnection):
    """
    An upstream connection over TLS. It is handed to the pool's waiter once
    the handshake is done (the target verified), not when TCP connects; a
    handshake that fails or takes longer than the connect timeout reports
    C{on_failed(reason)} instead.
    """

    def __init__(
        self,
        pool: Any,
        target: ITarget,
        on_connect: Callable[[UpstreamConnection], None],
        on_failed: Callable[[Failure], None],
        clock: Any,
        timeout: float,
    ) -> None:
        super().__init__(pool, target, self._tcp_connected)
        self._on_verified: Optional[Callable[[UpstreamConnection], None]] = on_connect
        self._on_failed: Optional[Callable[[Failure], None]] = on_failed
        self._timeout = timeout
        self._handshake_timer = Timer(clock, self._handshake_timed_out)
        self._timed_out = False

    def _tcp_connected(self, connection: UpstreamConnection) -> None:
        self._handshake_timer.set(self._timeout)

    def handshakeCompleted(self) -> None:
        self._handshake_timer.cancel()
        on_connect, self._on_verified = self._on_verified, None
        self._on_failed = None
        if on_connect is not None:
            on_connect(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._handshake_timer.cancel()
        on_failed = self._on_failed
        self._on_verified = self._on_failed = None
        super().connectionLost(reason)
        if on_failed is not None:
            if self._timed_out:
                reason = Failure(ConnectTimeout(string="TLS handshake timed out"))
            on_failed(reason)

    def _handshake_timed_out(self) -> None:
        self._timed_out = True
        self.transport.abortConnection()
