"""
The header fields a proxy adds and removes on each hop (SPEC section 5).
"""

from __future__ import annotations

import ipaddress
import random
import re
from binascii import hexlify
from typing import Optional, Sequence

from gatewaykit.config.model import Network
from gatewaykit.http.message import Request
from gatewaykit.http.wire import HOP_BY_HOP

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16

# The fields naming the client certificate an https listener verified
# (mTLS): subject, issuer (RFC 4514) and SHA-256 fingerprint (hex).
CLIENT_CERT_FIELDS = (b"X-Client-Cert-Subject", b"X-Client-Cert-Issuer", b"X-Client-Cert-SHA256")

# Fields the gateway sets itself on the way upstream, so a client's copy is
# dropped first (the X-Forwarded-* ones are kept from trusted proxies; the
# client certificate ones never are).
FORWARDING_FIELDS = frozenset(
    {
        *(name.lower() for name in CLIENT_CERT_FIELDS),
        b"x-request-id",
        b"traceparent",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
    }
)
"""The request fields the gateway sets on every request it forwards (SPEC section 5)."""
_REPLACED_UPSTREAM = FORWARDING_FIELDS | {b"content-length", b"expect"}
_FORWARDED_TRUSTED = frozenset(
    {b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
)
_REPLACED_DOWNSTREAM = frozenset({b"content-length", b"x-request-id", b"via"})


# Ids need to be unique, not secret: the process's Mersenne Twister (seeded
# from the OS) is much cheaper than a getrandom() call per request.
_random_bits = random.getrandbits


def new_request_id() -> str:
    """A random request id: 32 hex digits."""
    return _random_bits(128).to_bytes(16, "big").hex()


def is_sane_request_id(value: bytes) -> bool:
    """Whether a client's X-Request-ID may be kept: 1-200 visible ASCII characters."""
    return 0 < len(value) <= 200 and all(0x21 <= c <= 0x7E for c in value)


def is_valid_traceparent(value: bytes) -> bool:
    """Whether C{value} is a W3C traceparent we can pass on."""
    match = _TRACEPARENT.match(value)
    return (
        match is not None
        and not value.startswith(b"ff")
        and match.group(1) != _ZERO_TRACE
        and match.group(2) != _ZERO_PARENT
    )


def new_traceparent() -> bytes:
    """A traceparent starting a new, sampled trace."""
    trace = (_random_bits(128) or 1).to_bytes(16, "big")
    parent = (_random_bits(64) or 1).to_bytes(8, "big")
    return b"00-" + hexlify(trace) + b"-" + hexlify(parent) + b"-01"


def client_ip(peer: str, forwarded_for: Sequence[bytes], trusted: Sequence[Network]) -> str:
    """
    The client's address: the peer's, unless the peer is a trusted proxy;
    then the last address in C{X-Forwarded-For} not itself trusted (walking
    from the right, as nginx's real_ip_recursive does).
    """
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    chain = [a.strip() for v in forwarded_for for a in v.decode("latin-1").split(",")]
    for address in reversed(chain):
        if not address:
            continue
        if not is_trusted(address, trusted):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return peer
    return chain[0] if chain and chain[0] else peer


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether C{address} lies in one of the C{trusted} networks."""
    if not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class UpstreamHeadBuilder:
    """
    Serialises the request head sent upstream: the client's
    fields minus hop-by-hop ones, plus X-Forwarded-*, X-Request-ID,
    traceparent and Via.
    """

    def __init__(self, node: str, trusted: Sequence[Network]) -> None:
        self._via = b"1.1 " + node.encode("ascii", "replace")
        self._trusted = tuple(trusted)
        # "X-Forwarded-Proto: ...\r\n" and "X-Forwarded-Port: ...\r\n" by
        # (scheme, port): a listener's are the same on every request.
        self._listener_fields: dict[tuple[str, int], tuple[bytes, bytes]] = {}

    def build(
        self, request: Request, uri: bytes, host: Optional[bytes], upgrade: bool = False
    ) -> bytes:
        """
        The head for C{request}, with request-target C{uri} and C{Host} C{host}
        (C{None}: keep the client's; an HTTP/1.0 request without one gets
        C{host}). Framing fields are added for the body.
        With C{upgrade}, the client's C{Upgrade} is passed on (with
        C{Connection: Upgrade}) so the upstream may switch protocols.
        """
        drop = request.hop_by_hop
        keep_forwarded = bool(self._trusted) and is_trusted(request.client_host, self._trusted)
        # Pieces joined once at the end, rather than a bytes object per line.
        out = [request.method.encode("ascii"), b" ", uri, b" HTTP/1.1\r\n"]
        forwarded_for: list[bytes] = []
        via: list[bytes] = []
        traceparent = None
        kept_forwarded: set[bytes] = set()
        original_host: Optional[bytes] = None
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower in drop:
                continue
            if lower in _REPLACED_UPSTREAM:
                if lower == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif lower == b"via":
                    via.append(value)
                elif lower == b"traceparent":
                    traceparent = value
                elif keep_forwarded and lower in _FORWARDED_TRUSTED:
                    kept_forwarded.add(lower)
                    out += (name, b": ", value, b"\r\n")
                continue
            if lower == b"host":
                if original_host is None:
                    original_host = value
                out += (b"Host: ", value if host is None else host, b"\r\n")
                continue
            out += (name, b": ", value, b"\r\n")
        if host is not None and original_host is None:
            out += (b"Host: ", host, b"\r\n")
        forwarded_for.append(request.client_host.encode("ascii"))
        out += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\n")
        proto, port = self._forwarded_proto_port(request.scheme, request.server_port)
        if b"x-forwarded-proto" not in kept_forwarded:
            out.append(proto)
        if b"x-forwarded-host" not in kept_forwarded and original_host is not None:
            out += (b"X-Forwarded-Host: ", original_host, b"\r\n")
        if b"x-forwarded-port" not in kept_forwarded:
            out.append(port)
        tls = request.tls
        if tls is not None and tls.client_cert is not None:
            out.append(tls.client_cert.upstream_fields)
        out += (b"X-Request-ID: ", request.request_id.encode("ascii"), b"\r\n")
        if traceparent is None or not is_valid_traceparent(traceparent):
            traceparent = new_traceparent()
        out += (b"traceparent: ", traceparent, b"\r\n")
        via.append(self._via)
        out += (b"Via: ", b", ".join(via), b"\r\n")
        if upgrade:
            offered = request.headers.get(b"upgrade")
            if offered is not None:
                out += (b"Connection: Upgrade\r\nUpgrade: ", offered, b"\r\n")
        if request.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif request.content_length is not None:
            out.append(b"Content-Length: %d\r\n" % request.content_length)
        out.append(b"\r\n")
        return b"".join(out)

    def _forwarded_proto_port(self, scheme: str, port: int) -> tuple[bytes, bytes]:
        fields = self._listener_fields.get((scheme, port))
        if fields is None:
            fields = self._listener_fields[(scheme, port)] = (
                b"X-Forwarded-Proto: " + scheme.encode("ascii") + b"\r\n",
                b"X-Forwarded-Port: %d\r\n" % port,
            )
        return fields


def downstream_fields(
    upstream_fields: list[tuple[bytes, bytes]],
    request_id: str,
    via: bytes,
    drop: frozenset[bytes] = HOP_BY_HOP,
) -> list[tuple[bytes, bytes]]:
    """
    The response fields for the client: the upstream's minus C{drop}
    (hop-by-hop ones) and framing ones, plus X-Request-ID and Via.
    """
    fields = []
    vias = []
    for name, value in upstream_fields:
        lower = name.lower()
        if lower in drop or lower in _REPLACED_DOWNSTREAM:
            if lower == b"via":
                vias.append(value)
            continue
        fields.append((name, value))
    vias.append(via)
    fields.append((b"Via", b", ".join(vias)))
    fields.append((b"X-Request-ID", request_id.encode("ascii")))
    return fields
