"""
Tests for L{gatewaykit.policies.ip_filter}: allow and deny lists, their
precedence, IPv6 and IPv4-mapped addresses, and trusted proxies.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import PolicyConfig, RespondAction
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.ip_filter import IPFilter, IPFilterFactory, IPFilterOptions
from gatewaykit.testing import (
    GatewayHarness,
    Response,
    make_config,
    parse_response,
    route,
    upstream,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n"


def networks(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


def ip_filter(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> IPFilter:
    return IPFilter("office", IPFilterOptions(allow=networks(*allow), deny=networks(*deny)))


def harness(
    allow: tuple[str, ...] = (),
    deny: tuple[str, ...] = (),
    trusted: tuple[str, ...] = (),
    **action: Any,
) -> GatewayHarness:
    """A gateway whose one route is guarded by an ip_filter policy."""
    if not action:
        action = {"respond": RespondAction(200, "welcome")}
    config = make_config(
        routes=[route("r", path_prefix="/", policies=("office",), **action)],
        upstreams=[upstream("app", "10.0.0.1:8000")],
        policies=[
            PolicyConfig(
                "office",
                "ip_filter",
                IPFilterOptions(allow=networks(*allow), deny=networks(*deny)),
            )
        ],
        trusted_proxies=networks(*trusted),
    )
    return GatewayHarness(config, policy_types={"ip_filter": IPFilterFactory()})


def get(gateway: GatewayHarness, client: str, fields: bytes = b"") -> Response:
    """The response to a GET from C{client}."""
    protocol, transport = gateway.connect(client=client)
    protocol.dataReceived(GET + fields + b"\r\n")
    return parse_response(transport.value())


class PrecedenceTests(SynchronousTestCase):
    """Which addresses each combination of lists lets through."""

    def test_allow_list(self) -> None:
        """With an allow list, only addresses in it get through."""
        policy = ip_filter(allow=("10.0.0.0/8", "192.0.2.7"))
        self.assertEqual(
            [policy.allows(a) for a in ("10.1.2.3", "192.0.2.7", "192.0.2.8", "11.0.0.1")],
            [True, True, False, False],
        )

    def test_empty_lists(self) -> None:
        """With neither list, everyone gets through."""
        policy = ip_filter()
        self.assertTrue(policy.allows("203.0.113.9") and policy.allows("2001:db8::1"))

    def test_deny_only(self) -> None:
        """With only a deny list, everyone else gets through."""
        policy = ip_filter(deny=("203.0.113.0/24",))
        self.assertEqual(
            [policy.allows(a) for a in ("203.0.113.9", "198.51.100.1")], [False, True]
        )

    def test_deny_wins(self) -> None:
        """An address in both lists is refused: deny carves holes in allow."""
        policy = ip_filter(allow=("10.0.0.0/8",), deny=("10.66.0.0/16",))
        self.assertEqual([policy.allows(a) for a in ("10.66.1.1", "10.67.1.1")], [False, True])

    def test_not_an_address(self) -> None:
        """A client address that is not an IP is refused, even with only a deny list."""
        self.assertFalse(ip_filter(deny=("10.0.0.0/8",)).allows("unix:/tmp/socket"))


class IPv6Tests(SynchronousTestCase):
    """IPv6 networks, and IPv4 addresses in IPv6 clothing."""

    def test_ipv6_networks(self) -> None:
        """IPv6 clients are matched against IPv6 networks."""
        policy = ip_filter(allow=("2001:db8::/32",), deny=("2001:db8:bad::/48",))
        self.assertEqual(
            [policy.allows(a) for a in ("2001:db8::5", "2001:db9::1", "2001:db8:bad::1")],
            [True, False, False],
        )

    def test_families_never_mix(self) -> None:
        """An IPv6 allow list does not let IPv4 clients in, and the reverse."""
        self.assertFalse(ip_filter(allow=("::/0",)).allows("10.0.0.1"))
        self.assertFalse(ip_filter(allow=("0.0.0.0/0",)).allows("2001:db8::1"))

    def test_mapped_client(self) -> None:
        """A dual-stack socket's ::ffff:10.1.2.3 is the IPv4 client 10.1.2.3."""
        policy = ip_filter(allow=("10.0.0.0/8",), deny=("10.9.0.0/16",))
        self.assertEqual(
            [policy.allows(a) for a in ("::ffff:10.1.2.3", "::ffff:10.9.0.1")], [True, False]
        )

    def test_mapped_network(self) -> None:
        """A network written IPv4-mapped matches IPv4 clients."""
        options = IPFilterOptions(allow=networks("::ffff:10.0.0.0/104"))
        self.assertEqual(options.allow, networks("10.0.0.0/8"))
        self.assertTrue(IPFilter("p", options).allows("10.20.30.40"))

    def test_scoped_address(self) -> None:
        """A link-local address with a zone is matched by its address."""
        self.assertTrue(ip_filter(allow=("fe80::/10",)).allows("fe80::1%eth0"))


class RefusalTests(SynchronousTestCase):
    """What a refused client sees, through the gateway."""

    def test_allowed(self) -> None:
        """An allowed client reaches the route's action."""
        response = get(harness(allow=("10.0.0.0/8",)), "10.1.2.3")
        self.assertEqual((response.status, response.body), (200, b"welcome"))

    def test_refused(self) -> None:
        """A refused client gets 403 with the forbidden problem type."""
        response = get(harness(allow=("10.0.0.0/8",)), "192.0.2.1")
        self.assertEqual(response.status, 403)
        self.assertEqual(response.headers.get("content-type"), b"application/problem+json")
        problem = json.loads(response.body)
        self.assertEqual(problem["type"], "urn:gatewaykit:error:forbidden")
        self.assertIn("192.0.2.1", problem["detail"])

    def test_refused_never_connects_upstream(self) -> None:
        """A refused request never makes a connection to the upstream."""
        gateway = harness(deny=("192.0.2.0/24",), upstream="app")
        self.assertEqual(get(gateway, "192.0.2.1").status, 403)
        self.assertEqual(gateway.reactor.tcpClients, [])

    def test_ipv6_peer(self) -> None:
        """An IPv6 peer is judged by its address."""
        gateway = harness(allow=("2001:db8::/32",))
        self.assertEqual(
            [get(gateway, client).status for client in ("2001:db8::1", "2001:db9::1")],
            [200, 403],
        )

    def test_connection_kept(self) -> None:
        """A refusal leaves the connection open for the next request."""
        gateway = harness(allow=("10.0.0.0/8",))
        protocol, transport = gateway.connect(client="192.0.2.1")
        protocol.dataReceived(GET + b"\r\n")
        self.assertFalse(transport.disconnecting)


class ClientAddressTests(SynchronousTestCase):
    """The address judged is the client's as the gateway can vouch for it."""

    def test_untrusted_forwarded_for_ignored(self) -> None:
        """X-Forwarded-For from a peer that is not a trusted proxy changes nothing."""
        gateway = harness(allow=("10.0.0.0/8",))
        response = get(gateway, "192.0.2.1", b"X-Forwarded-For: 10.1.2.3\r\n")
        self.assertEqual(response.status, 403)

    def test_trusted_proxy(self) -> None:
        """Behind a trusted proxy, the client it names is judged."""
        gateway = harness(allow=("192.0.2.0/24",), trusted=("10.0.0.0/8",))
        allowed = get(gateway, "10.0.0.5", b"X-Forwarded-For: 192.0.2.7\r\n")
        refused = get(gateway, "10.0.0.5", b"X-Forwarded-For: 198.51.100.1\r\n")
        self.assertEqual((allowed.status, refused.status), (200, 403))

    def test_trusted_proxy_itself_not_allowed(self) -> None:
        """The proxy's own address does not let its clients in."""
        gateway = harness(allow=("10.0.0.0/8",), trusted=("10.0.0.0/8",))
        response = get(gateway, "10.0.0.5", b"X-Forwarded-For: 198.51.100.1\r\n")
        self.assertEqual(response.status, 403)

    def test_prepended_address_ignored(self) -> None:
        """An address a client puts before the proxy's entry is not believed."""
        gateway = harness(allow=("192.0.2.0/24",), trusted=("10.0.0.0/8",))
        response = get(gateway, "10.0.0.5", b"X-Forwarded-For: 192.0.2.7, 198.51.100.1\r\n")
        self.assertEqual(response.status, 403)


CONFIG = """\
listeners: {web: {protocol: http, bind: "127.0.0.1:0"}}
policies:
  office: %s
routes:
  - {name: r, respond: {status: 200}, policies: [office]}
"""


class OptionsTests(SynchronousTestCase):
    """The policy's keys in a config file."""

    def test_parsed(self) -> None:
        """CIDRs and single addresses of both families are accepted."""
        config = parse_config(
            CONFIG % '{type: ip_filter, allow: [10.0.0.0/8, "2001:db8::/32"], deny: [10.1.2.3]}'
        )
        options = config.policies["office"].options
        self.assertEqual(options.allow, networks("10.0.0.0/8", "2001:db8::/32"))
        self.assertEqual(options.deny, networks("10.1.2.3/32"))

    def test_host_bits(self) -> None:
        """A CIDR with host bits set is an error with the intended network."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG % "{type: ip_filter, allow: [10.0.0.1/8]}")
        self.assertIn("did you mean '10.0.0.0/8'", str(caught.exception))

    def test_unknown_key(self) -> None:
        """A misspelt key is reported with a hint."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG % "{type: ip_filter, alow: [10.0.0.0/8]}")
        self.assertIn("did you mean 'allow'", str(caught.exception))

    def test_provides_interfaces(self) -> None:
        """The factory and the policy provide their interfaces."""
        verifyObject(IPolicyFactory, IPFilterFactory())
        verifyObject(IPolicy, ip_filter())
