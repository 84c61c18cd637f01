"""
The TLS parts of the configuration: an https listener's C{tls} section, a
tls_passthrough listener's C{sni} mapping, an upstream's C{tls} section,
and the checks that need the files they name.

Certificates, keys and CA bundles are read and checked here, when the
config loads, so that C{gatewaykit check} reports a missing file, a key
that does not match its certificate or an expired certificate at its line,
and a reload that validated has every byte it needs.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp

from gatewaykit.config.addresses import parse_route_host
from gatewaykit.config.model import (
    CertificateConfig,
    ListenerConfig,
    ListenerTLSConfig,
    RouteConfig,
    UpstreamTLSConfig,
)
from gatewaykit.config.schema import (
    MISSING,
    Context,
    Invalid,
    Key,
    Section,
    boolean,
    converted,
    duration,
    expect_list,
    expect_map,
    list_of,
    one_of,
    reference,
    text,
)
from gatewaykit.config.yamlpos import ListNode, MapNode, Node, ScalarNode

# Mozilla's "intermediate" TLS 1.2 suites without the DHE ones: ECDHE key
# exchange (forward secrecy) with an AEAD cipher only.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_PATH = text(expected="a file path")


# -- files ---------------------------------------------------------------------


def _read(ctx: Context, node: Node) -> tuple[str, bytes]:
    """The path as written at C{node}, and the bytes of the file it names."""
    written = _PATH(ctx, node)
    path = os.path.normpath(os.path.join(ctx.base_dir, written))
    try:
        with open(path, "rb") as f:
            return written, f.read()
    except OSError as e:
        raise Invalid(node, f"cannot read {written!r}: {e.strerror} ({path})") from None


def _certificates(node: Node, written: str, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise Invalid(node, f"{written!r} holds no PEM certificate") from None


def _private_key(node: Node, written: str, data: bytes) -> Any:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise Invalid(
            node, f"{written!r} is an encrypted key; gatewaykit needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise Invalid(node, f"{written!r} holds no PEM private key") from None
    if not isinstance(key, _KEY_TYPES):
        raise Invalid(node, f"{written!r}: unsupported key type {type(key).__name__}")
    return key


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _key_pair(
    ctx: Context, cert_node: Node, key_node: Node
) -> tuple[str, bytes, list[x509.Certificate], str, bytes]:
    """Read a certificate chain and its key; C{Invalid} unless they belong together."""
    cert_written, chain_pem = _read(ctx, cert_node)
    chain = _certificates(cert_node, cert_written, chain_pem)
    key_written, key_pem = _read(ctx, key_node)
    key = _private_key(key_node, key_written, key_pem)
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise Invalid(
            key_node,
            f"key {key_written!r} does not match certificate {cert_written!r}"
            " (the first certificate in the file must be the one the key signs for)",
        )
    _check_openssl(cert_node, cert_written, chain[0], key)
    return cert_written, chain_pem, chain, key_written, key_pem


def _check_openssl(node: Node, written: str, leaf: x509.Certificate, key: Any) -> None:
    """Refuse what OpenSSL would refuse when the listener starts (a too small key...)."""
    from OpenSSL import SSL

    try:
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(leaf)
        context.use_privatekey(key)
    except SSL.Error as e:
        reasons = [entry[2] for entry in e.args[0] if len(entry) == 3] if e.args else []
        raise Invalid(
            node, f"OpenSSL refuses {written!r}: {'; '.join(reasons) or e}"
        ) from None


def _check_validity(ctx: Context, node: Node, written: str, leaf: x509.Certificate) -> None:
    now = time.time()
    if leaf.not_valid_after_utc.timestamp() < now:
        ctx.warn(node, f"certificate {written!r} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    elif leaf.not_valid_before_utc.timestamp() > now:
        ctx.warn(
            node,
            f"certificate {written!r} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}",
        )


def dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The lower-case DNS names of a certificate's subjectAltName."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names = extension.value.get_values_for_type(x509.DNSName)
    return tuple(name.lower().rstrip(".") for name in names)


def _ocsp_response(
    ctx: Context, where: Node, path: str, written: str, leaf: x509.Certificate
) -> bytes:
    """The DER OCSP response in C{path}, checked against C{leaf}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Invalid(where, f"cannot read {written!r}: {e.strerror} ({path})") from None
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise Invalid(where, f"{written!r} is not a DER OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise Invalid(where, f"{written!r}: OCSP response status {response.response_status.name}")
    if response.serial_number != leaf.serial_number:
        ctx.warn(where, f"OCSP response {written!r} is for another certificate")
    elif (expiry := response.next_update_utc) is not None and expiry.timestamp() < time.time():
        ctx.warn(where, f"OCSP response {written!r} expired on {expiry:%Y-%m-%d}")
    return data


# -- https listeners ---------------------------------------------------------------


_CERTIFICATE = Section(
    {"cert": Key(_PATH, required=True), "key": Key(_PATH, required=True), "ocsp": _PATH}
)


def _certificate(ctx: Context, node: Node) -> CertificateConfig:
    """One C{{cert, key, ocsp}} entry, its files read and checked."""
    values = _CERTIFICATE(ctx, node)
    entries = expect_map(node).entries
    cert_node, key_node = entries["cert"][1], entries["key"][1]
    cert, chain_pem, chain, key, key_pem = _key_pair(ctx, cert_node, key_node)
    leaf = chain[0]
    _check_validity(ctx, cert_node, cert, leaf)
    # A staple is found next to the certificate (site.pem.ocsp) unless named.
    ocsp_written = values.get("ocsp")
    ocsp_der = None
    if ocsp_written is not None:
        path = os.path.normpath(os.path.join(ctx.base_dir, ocsp_written))
        ocsp_der = _ocsp_response(ctx, entries["ocsp"][1], path, ocsp_written, leaf)
    else:
        path = os.path.normpath(os.path.join(ctx.base_dir, cert)) + ".ocsp"
        if os.path.exists(path):
            ocsp_written = cert + ".ocsp"
            ocsp_der = _ocsp_response(ctx, cert_node, path, ocsp_written, leaf)
    return CertificateConfig(
        cert=cert,
        key=key,
        chain_pem=chain_pem,
        key_pem=key_pem,
        names=dns_names(leaf),
        not_after=leaf.not_valid_after_utc.timestamp(),
        ocsp=ocsp_written,
        ocsp_der=ocsp_der,
    )


def _certificate_list(ctx: Context, node: Node) -> tuple[CertificateConfig, ...]:
    certificates: tuple[CertificateConfig, ...] = list_of(
        _certificate, non_empty=True, what="certificate"
    )(ctx, node)
    items = expect_list(node).items
    for index, certificate in enumerate(certificates[1:], start=1):
        if not certificate.names and index < len(items):
            ctx.warn(
                items[index],
                f"certificate {certificate.cert!r} has no DNS names (subjectAltName):"
                " SNI never chooses it, only the first certificate is a default",
            )
    return certificates


def _ca_bundle(ctx: Context, node: Node) -> tuple[str, bytes]:
    written, data = _read(ctx, node)
    _certificates(node, written, data)
    return written, data


def _cipher_string(value: str) -> str:
    from OpenSSL import SSL

    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(value.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ValueError(f"OpenSSL knows no cipher in {value!r}") from None
    return value


def _hsts(ctx: Context, node: Node) -> int:
    return int(duration(positive=False)(ctx, node))


LISTENER_TLS = Section(
    {
        "certificates": Key(_certificate_list, required=True),
        "min_version": one_of("1.2", "1.3", what="TLS version"),
        "alpn": list_of(
            one_of("h2", "http/1.1", what="ALPN protocol"),
            non_empty=True,
            unique=str,
            what="ALPN protocol",
        ),
        "client_ca": _ca_bundle,
        "client_auth": one_of("none", "optional", "required", what="client_auth"),
        "hsts": _hsts,
        "ciphers": converted(_cipher_string, "an OpenSSL cipher string"),
        "session_tickets": boolean,
    }
)


def listener_tls(ctx: Context, node: Node) -> ListenerTLSConfig:
    """An https listener's C{tls} section."""
    values = LISTENER_TLS(ctx, node)
    entries = expect_map(node).entries
    client_ca = values.pop("client_ca", None)
    auth = values.get("client_auth")
    if client_ca is not None:
        values["client_ca"], values["client_ca_pem"] = client_ca
        if auth is None:
            # Giving the CA is what turns mTLS on (SPEC: "enables mTLS").
            values["client_auth"] = "required"
        elif auth == "none":
            ctx.warn(entries["client_ca"][0], "client_ca is unused with client_auth: none")
    elif auth in ("optional", "required") and "client_ca" not in entries:
        ctx.report(
            entries["client_auth"][1],
            f"client_auth: {auth} needs client_ca: a PEM bundle of the CAs"
            " that sign client certificates",
        )
    return ListenerTLSConfig(**values)


# -- tls_passthrough listeners --------------------------------------------------------


def _sni_name(value: str) -> str:
    return value if value == "*" else parse_route_host(value)


def sni_mapping(ctx: Context, node: Node) -> tuple[tuple[str, str], ...]:
    """C{{server name: upstream}}; names are exact, C{*.suffix} or C{*}."""
    entries = expect_map(node, "a mapping of server names to upstreams").entries
    if not entries:
        raise Invalid(node, "expected at least one server name: upstream")
    upstream = reference("upstream")
    found: dict[str, str] = {}
    for written, (key_node, value_node) in entries.items():
        try:
            name = _sni_name(written)
        except ValueError as e:
            ctx.report(key_node, str(e))
            continue
        if name in found:
            ctx.report(key_node, f"server name {written!r} is listed twice")
            continue
        target = ctx.attempt(upstream, value_node)
        if target is not MISSING:
            found[name] = target
    return tuple(found.items())


# -- https upstreams ----------------------------------------------------------------


def _server_name(value: str) -> str:
    name = parse_route_host(value)
    if "*" in name:
        raise ValueError(f"a server name cannot be a wildcard, got {value!r}")
    return name


UPSTREAM_TLS = Section(
    {
        "verify": boolean,
        "ca": _ca_bundle,
        "server_name": converted(_server_name, "a host name"),
        "client_cert": _PATH,
        "client_key": _PATH,
    }
)


def upstream_tls(ctx: Context, node: Node) -> UpstreamTLSConfig:
    """An upstream's C{tls} section."""
    values = UPSTREAM_TLS(ctx, node)
    mapping = expect_map(node)
    entries = mapping.entries
    ca = values.pop("ca", None)
    if ca is not None:
        values["ca"], values["ca_pem"] = ca
    if ("client_cert" in values) != ("client_key" in values):
        ctx.report(mapping, "client_cert and client_key go together: give both or neither")
    elif "client_cert" in values:
        cert, chain_pem, chain, key, key_pem = _key_pair(
            ctx, entries["client_cert"][1], entries["client_key"][1]
        )
        _check_validity(ctx, entries["client_cert"][1], cert, chain[0])
        values["client_cert_pem"], values["client_key_pem"] = chain_pem, key_pem
    if values.get("verify") is False:
        ctx.warn(
            entries["verify"][1],
            "verify: false: the upstream's certificate is not checked, so anyone"
            " on the path can pose as it",
        )
    return UpstreamTLSConfig(**values)


# -- route hosts against certificates -------------------------------------------------


def certificate_covers(name: str, host: str) -> bool:
    """
    Whether a certificate DNS name covers C{host} for a client: equal, or a
    C{*.} wildcard standing for exactly one label (RFC 6125).
    """
    if name == host:
        return True
    if name.startswith("*.") and not host.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == name[2:]
    return False


def _host_nodes(item: Node) -> Sequence[Node]:
    if not isinstance(item, MapNode) or "match" not in item.entries:
        return ()
    match = item.entries["match"][1]
    if not isinstance(match, MapNode) or "hosts" not in match.entries:
        return ()
    hosts = match.entries["hosts"][1]
    return hosts.items if isinstance(hosts, ListNode) else ()


def check_route_hosts(
    ctx: Context,
    node: Node,
    routes: Sequence[RouteConfig],
    listeners: Mapping[str, ListenerConfig],
) -> None:
    """Warn about each route host served on an https listener no certificate names."""
    if not isinstance(node, ListNode):
        return
    for route in routes:
        if route.index >= len(node.items):
            continue
        secure = [
            listeners[name]
            for name in route.listeners
            if name in listeners and listeners[name].tls is not None
        ]
        for host_node in _host_nodes(node.items[route.index]):
            if not isinstance(host_node, ScalarNode) or not isinstance(host_node.value, str):
                continue
            try:
                host = parse_route_host(host_node.value)
            except ValueError:
                continue
            for listener in secure:
                assert listener.tls is not None
                names = [n for c in listener.tls.certificates for n in c.names]
                if not any(certificate_covers(name, host) for name in names):
                    ctx.warn(
                        host_node,
                        f"no certificate of https listener {listener.name!r} names"
                        f" {host!r}, so clients will refuse it"
                        f" (names: {', '.join(names) or 'none'})",
                    )
