"""
The C{ip_filter} policy: let a route be used only from some networks.

The client address is L{Request.client_ip}: the peer's address, or the one
a trusted proxy (C{gateway.trusted_proxies}) named in C{X-Forwarded-For};
a header from any other peer is never believed. The rule, in order:

  1. an address in C{deny} is refused;
  2. with a non-empty C{allow}, an address not in it is refused;
  3. anything else goes on.

So C{deny} carves holes in C{allow}, whatever order they are written in.
IPv4-mapped IPv6 addresses (C{::ffff:10.1.2.3}, as a dual-stack socket
reports IPv4 peers) are taken as the IPv4 address they carry, on both the
request's and the config's side. See C{docs/access-control.md}.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional, Union

from attrs import field, frozen
from zope.interface import implementer

from gatewaykit.config.addresses import parse_network
from gatewaykit.config.model import Network
from gatewaykit.config.schema import Section, converted, list_of
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def normalise_address(text: str) -> Optional[Address]:
    """
    C{text} as an address, an IPv4-mapped IPv6 one as IPv4; C{None} when it
    is not an IP address.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalise_network(network: Network) -> Network:
    """C{network}, an IPv4-mapped IPv6 one (C{::ffff:10.0.0.0/104}) as IPv4."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_MAPPED)
    ):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _networks(networks: Iterable[Network]) -> tuple[Network, ...]:
    return tuple(normalise_network(network) for network in networks)


@frozen
class IPFilterOptions:
    """An C{ip_filter} policy's keys."""

    allow: tuple[Network, ...] = field(default=(), converter=_networks)
    deny: tuple[Network, ...] = field(default=(), converter=_networks)


_NETWORKS = list_of(
    converted(parse_network, "a CIDR like 10.0.0.0/8 or an IP address"),
    unique=str,
    what="network",
)

OPTIONS = Section({"allow": _NETWORKS, "deny": _NETWORKS}).into(IPFilterOptions)


def _in_any(address: Address, networks: tuple[Network, ...]) -> bool:
    # An IPv4 address is never "in" an IPv6 network (and the reverse), so
    # mixed lists need no sorting by version.
    return any(address in network for network in networks)


@implementer(IPolicy)
class IPFilter:
    """Refuses (403 C{forbidden}) clients outside C{allow} or inside C{deny}."""

    def __init__(self, name: str, options: IPFilterOptions) -> None:
        self.name = name
        self._allow = options.allow
        self._deny = options.deny

    def allows(self, client_ip: str) -> bool:
        """Whether a client at C{client_ip} may go on."""
        address = normalise_address(client_ip)
        if address is None:
            # Not an IP (never expected from the listener): refuse rather
            # than let an unparsed value slip past a deny list.
            return False
        if self._deny and _in_any(address, self._deny):
            return False
        return not self._allow or _in_any(address, self._allow)

    def on_request(self, call: Any) -> Optional[GatewayError]:
        client_ip = call.request.client_ip
        if self.allows(client_ip):
            return None
        return GatewayError(
            403, "forbidden", f"client address {client_ip} may not use this route"
        )


@implementer(IPolicyFactory)
class IPFilterFactory:
    """The C{ip_filter} policy type."""

    name = "ip_filter"
    options = OPTIONS

    def build(self, name: str, options: IPFilterOptions, context: Any) -> IPFilter:
        return IPFilter(name, options)
