"""
Tests for the value parsers of L{gatewaykit.config}: durations, sizes,
addresses and C{${VAR}} substitution.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.addresses import (
    parse_bind,
    parse_network,
    parse_route_host,
    parse_target,
)
from gatewaykit.config.units import parse_duration, parse_size
from gatewaykit.config.yamlpos import substitute


class DurationTests(SynchronousTestCase):
    """Tests for L{parse_duration}."""

    def test_units(self) -> None:
        """ms, s, m and h are seconds times 0.001, 1, 60 and 3600."""
        self.assertEqual(
            [parse_duration(t) for t in ("250ms", "5s", "2m", "1h")],
            [0.25, 5.0, 120.0, 3600.0],
        )

    def test_bare_number(self) -> None:
        """A bare number is seconds."""
        self.assertEqual(parse_duration("1.5"), 1.5)

    def test_sum(self) -> None:
        """Parts written one after another add up."""
        self.assertEqual(parse_duration("1m30s"), 90.0)

    def test_fraction(self) -> None:
        """A part may have a fraction."""
        self.assertEqual(parse_duration("1.5s"), 1.5)

    def test_unknown_unit(self) -> None:
        """An unknown unit names the expected form."""
        e = self.assertRaises(ValueError, parse_duration, "5d")
        self.assertEqual(
            str(e), "expected a duration like 250ms, 5s, 2m, 1h or 1m30s, got '5d'"
        )

    def test_negative(self) -> None:
        """A negative duration is refused."""
        self.assertRaises(ValueError, parse_duration, "-5s")


class SizeTests(SynchronousTestCase):
    """Tests for L{parse_size}."""

    def test_bare_number(self) -> None:
        """A bare number is bytes."""
        self.assertEqual(parse_size("512"), 512)

    def test_binary_units(self) -> None:
        """KiB, MiB and GiB are powers of 1024."""
        self.assertEqual(
            [parse_size(t) for t in ("16KiB", "10MiB", "1GiB")],
            [16 * 1024, 10 * 1024**2, 1024**3],
        )

    def test_decimal_units(self) -> None:
        """KB, MB and GB are powers of 1000."""
        self.assertEqual(
            [parse_size(t) for t in ("2KB", "3MB", "1GB")],
            [2000, 3_000_000, 1_000_000_000],
        )

    def test_case_and_space(self) -> None:
        """Units are read in any letter case, after an optional space."""
        self.assertEqual(parse_size("16 kib"), 16 * 1024)

    def test_fraction(self) -> None:
        """A fraction is fine when the result is whole bytes."""
        self.assertEqual(parse_size("1.5KiB"), 1536)

    def test_fraction_of_a_byte(self) -> None:
        """A size that is not whole bytes is refused."""
        e = self.assertRaises(ValueError, parse_size, "1.5B")
        self.assertEqual(str(e), "expected a whole number of bytes, got '1.5B'")

    def test_unknown_unit(self) -> None:
        """An unknown unit names the expected form."""
        e = self.assertRaises(ValueError, parse_size, "16K")
        self.assertEqual(
            str(e), "expected a size like 512, 16KiB, 10MiB or 1GiB, got '16K'"
        )


class BindTests(SynchronousTestCase):
    """Tests for L{parse_bind}."""

    def test_host_port(self) -> None:
        """host:port gives both."""
        self.assertEqual(parse_bind("127.0.0.1:8080"), ("127.0.0.1", 8080))

    def test_ipv6(self) -> None:
        """[v6]:port gives the address without brackets."""
        self.assertEqual(parse_bind("[::1]:8080"), ("::1", 8080))

    def test_port_only(self) -> None:
        """:port and a bare port mean every interface, host ""."""
        self.assertEqual([parse_bind(":80"), parse_bind("80")], [("", 80), ("", 80)])

    def test_port_zero(self) -> None:
        """Port 0 (the OS chooses) is allowed."""
        self.assertEqual(parse_bind("localhost:0"), ("localhost", 0))

    def test_port_out_of_range(self) -> None:
        """A port above 65535 is refused."""
        e = self.assertRaises(ValueError, parse_bind, ":65536")
        self.assertEqual(str(e), "expected a port from 0 to 65535, got '65536'")

    def test_ipv6_without_brackets(self) -> None:
        """An IPv6 address without brackets gets a hint."""
        e = self.assertRaises(ValueError, parse_bind, "::1:80")
        self.assertEqual(str(e), "put an IPv6 address in brackets, like [::1]:80")

    def test_bad_host(self) -> None:
        """A host that is neither a name nor an address is refused."""
        e = self.assertRaises(ValueError, parse_bind, "a b:80")
        self.assertEqual(str(e), "'a b' is not a valid host name or IPv4 address")


class TargetTests(SynchronousTestCase):
    """Tests for L{parse_target}."""

    def test_host_port(self) -> None:
        """host:port gives both."""
        self.assertEqual(parse_target("users.internal:9001"), ("users.internal", 9001))

    def test_host_required(self) -> None:
        """A target needs a host."""
        self.assertRaises(ValueError, parse_target, ":9001")

    def test_port_zero(self) -> None:
        """Port 0 cannot be connected to."""
        e = self.assertRaises(ValueError, parse_target, "h:0")
        self.assertEqual(str(e), "expected a port from 1 to 65535, got '0'")

    def test_port_required(self) -> None:
        """A target without a port is refused."""
        e = self.assertRaises(ValueError, parse_target, "host")
        self.assertEqual(str(e), "expected host:port or [v6]:port, got 'host'")


class NetworkTests(SynchronousTestCase):
    """Tests for L{parse_network}."""

    def test_cidr(self) -> None:
        """A CIDR is a network."""
        self.assertEqual(
            parse_network("10.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8")
        )

    def test_single_address(self) -> None:
        """A single address is a /32 or /128."""
        self.assertEqual(
            [parse_network("10.1.2.3"), parse_network("::1")],
            [ipaddress.ip_network("10.1.2.3/32"), ipaddress.ip_network("::1/128")],
        )

    def test_host_bits(self) -> None:
        """A CIDR with host bits set suggests its network."""
        e = self.assertRaises(ValueError, parse_network, "10.0.0.5/8")
        self.assertEqual(
            str(e), "'10.0.0.5/8' has host bits set; did you mean '10.0.0.0/8'?"
        )

    def test_garbage(self) -> None:
        """Text that is no network names the expected form."""
        e = self.assertRaises(ValueError, parse_network, "10.0.0.0/33")
        self.assertEqual(
            str(e),
            "expected a CIDR like 10.0.0.0/8 or an IP address, got '10.0.0.0/33'",
        )


class RouteHostTests(SynchronousTestCase):
    """Tests for L{parse_route_host}."""

    def test_lower_case(self) -> None:
        """Hosts are lower-cased."""
        self.assertEqual(parse_route_host("API.Example.COM"), "api.example.com")

    def test_trailing_dot(self) -> None:
        """A trailing dot is dropped."""
        self.assertEqual(parse_route_host("example.com."), "example.com")

    def test_wildcard(self) -> None:
        """A leading *. label is a wildcard."""
        self.assertEqual(parse_route_host("*.example.com"), "*.example.com")

    def test_wildcard_elsewhere(self) -> None:
        """A * anywhere else is refused."""
        e = self.assertRaises(ValueError, parse_route_host, "api.*.com")
        self.assertEqual(
            str(e),
            "a wildcard is allowed only as a leading '*.' label, got 'api.*.com'",
        )

    def test_port(self) -> None:
        """A port is refused, with the host to write instead."""
        e = self.assertRaises(ValueError, parse_route_host, "example.com:8080")
        self.assertEqual(str(e), "a host to match has no port: write 'example.com'")

    def test_ipv6_literal(self) -> None:
        """An IPv6 literal in brackets is kept, compressed."""
        self.assertEqual(parse_route_host("[0:0::1]"), "[::1]")


class SubstituteTests(SynchronousTestCase):
    """Tests for L{substitute}."""

    def test_variable(self) -> None:
        """${VAR} is replaced by its value."""
        self.assertEqual(substitute("a-${X}-b", {"X": "1"}), "a-1-b")

    def test_default_when_unset(self) -> None:
        """${VAR:-default} gives the default when VAR is unset."""
        self.assertEqual(substitute("${X:-7}", {}), "7")

    def test_default_when_empty(self) -> None:
        """${VAR:-default} gives the default when VAR is empty, as in a shell."""
        self.assertEqual(substitute("${X:-7}", {"X": ""}), "7")

    def test_empty_default(self) -> None:
        """${VAR:-} gives an empty string."""
        self.assertEqual(substitute("${X:-}", {}), "")

    def test_set_but_empty(self) -> None:
        """${VAR} set to "" is "", not an error."""
        self.assertEqual(substitute("${X}", {"X": ""}), "")

    def test_unset(self) -> None:
        """An unset ${VAR} without default is an error naming it."""
        e = self.assertRaises(ValueError, substitute, "${X}", {})
        self.assertEqual(
            str(e),
            "environment variable 'X' is not set"
            " (write ${X:-default} to give a default)",
        )

    def test_escape(self) -> None:
        """$${ is a literal ${."""
        self.assertEqual(substitute("$${X}", {"X": "1"}), "${X}")

    def test_lone_dollar(self) -> None:
        """A $ not followed by { is kept."""
        self.assertEqual(substitute("$5 $X", {"X": "1"}), "$5 $X")

    def test_malformed(self) -> None:
        """A ${ that is not a reference is an error."""
        self.assertRaises(ValueError, substitute, "${1X}", {})

    def test_value_not_rescanned(self) -> None:
        """A value holding ${ is inserted as it is."""
        self.assertEqual(substitute("${X}", {"X": "${Y}"}), "${Y}")
