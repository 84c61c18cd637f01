"""
Addresses, networks and host names as written in the configuration.

Each parser takes the text of one YAML scalar and raises C{ValueError} with a
message saying what was expected.
"""

from __future__ import annotations

import ipaddress
import re

from gatewaykit.config.model import Network

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _is_host_name(host: str) -> bool:
    return len(host) <= 253 and all(
        _LABEL.fullmatch(label) for label in host.lower().split(".")
    )


def _port(text: str, lowest: int) -> int:
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise ValueError(f"expected a port from {lowest} to 65535, got {text!r}")
    return int(text)


def _split_host_port(text: str, form: str) -> tuple[str, str]:
    """C{host:port} or C{[v6]:port} into the host (no brackets) and port text."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ValueError(f"expected {form}, got {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return host, port
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError(f"expected {form}, got {text!r}")
    if ":" in host:
        raise ValueError(f"put an IPv6 address in brackets, like [{host}]:{port}")
    if host and not _is_host_name(host):
        raise ValueError(f"{host!r} is not a valid host name or IPv4 address")
    return host, port


def parse_bind(text: str) -> tuple[str, int]:
    """
    A listener's C{host:port}, C{[v6]:port}, C{:port} or bare C{port}; the
    host is C{""} for every interface. Port 0 lets the OS choose.
    """
    form = "host:port, [v6]:port, :port or a port"
    text = text.strip()
    if text.isdigit():
        return "", _port(text, 0)
    host, port = _split_host_port(text, form)
    return host, _port(port, 0)


def parse_target(text: str) -> tuple[str, int]:
    """An upstream target's C{host:port} or C{[v6]:port}."""
    form = "host:port or [v6]:port"
    host, port = _split_host_port(text.strip(), form)
    if not host:
        raise ValueError(f"expected {form}, got {text!r}: the host is missing")
    return host, _port(port, 1)


def parse_network(text: str) -> Network:
    """A CIDR such as C{10.0.0.0/8}, or one address (a /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"expected a CIDR like 10.0.0.0/8 or an IP address, got {text!r}"
        ) from None
    raise ValueError(f"{text!r} has host bits set; did you mean '{loose}'?")


def parse_route_host(text: str) -> str:
    """
    A host a route matches: lower-cased, a trailing dot dropped, an optional
    leading C{*.} wildcard label, no port.
    """
    host = text.strip().lower()
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv6 address") from None
    if ":" in host:
        raise ValueError(
            f"a host to match has no port: write {host.partition(':')[0]!r}"
        )
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        raise ValueError(
            f"a wildcard is allowed only as a leading '*.' label, got {text!r}"
        )
    if not _is_host_name(name):
        raise ValueError(f"{text!r} is not a valid host name")
    return host
