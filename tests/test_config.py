"""
Tests for L{gatewaykit.config}: loading YAML into the model, and every kind
of mistake reported at its line and column.
"""

from __future__ import annotations

import hashlib
import ipaddress
import operator
import os
import re
import socket
import textwrap
from typing import Any, Mapping, Optional

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import (
    ConfigError,
    ConfigProblem,
    load_config,
    loader,
    parse_config,
)
from gatewaykit.config.model import (
    AccessLogConfig,
    CircuitBreakerConfig,
    Condition,
    Config,
    GatewayConfig,
    HashKey,
    HealthCheckConfig,
    Limits,
    ListenerConfig,
    Match,
    OutlierConfig,
    PoolConfig,
    RedirectAction,
    RespondAction,
    RetryConfig,
    RouteConfig,
    StaticAction,
    TargetConfig,
    UpstreamConfig,
    UpstreamTimeouts,
)
from gatewaykit.plugins import DuplicatePluginName, balancer_factories

# Appended after the text under test so that its line numbers start at 1.
COMMON = """
listeners:
  web: {protocol: http, bind: ":8080"}
upstreams:
  users: {targets: ["127.0.0.1:9001"]}
"""


class ConfigTestCase(SynchronousTestCase):
    """Parses YAML written in the test, relative to a fresh folder."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.base, "public"))
        self.patch(
            loader,
            "balancer_factories",
            lambda: dict.fromkeys(["round_robin", "least_request"]),
        )

    def parse(self, text: str, environ: Optional[Mapping[str, str]] = None) -> Config:
        """The config in C{text} (dedented; a first newline dropped)."""
        return parse_config(
            textwrap.dedent(text).removeprefix("\n"),
            source="gw.yaml",
            base_dir=self.base,
            environ={} if environ is None else environ,
        )

    def problems(
        self, text: str, environ: Optional[Mapping[str, str]] = None
    ) -> list[str]:
        """The problem lines that C{text} gives."""
        e = self.assertRaises(ConfigError, self.parse, text, environ)
        return [str(p) for p in e.problems]

    def parse_with_common(self, text: str, **kwargs: Any) -> Config:
        """C{text} followed by a listener and an upstream."""
        return self.parse(textwrap.dedent(text) + COMMON, **kwargs)

    def problems_with_common(self, text: str) -> list[str]:
        """The problems of C{text} followed by a listener and an upstream."""
        return self.problems(textwrap.dedent(text) + COMMON)


class ConfigErrorTests(SynchronousTestCase):
    """Tests for L{ConfigProblem} and L{ConfigError}."""

    def test_problem_str(self) -> None:
        """A problem reads PATH:LINE:COL: message."""
        self.assertEqual(str(ConfigProblem("a.yaml", 3, 7, "bad")), "a.yaml:3:7: bad")

    def test_sorted(self) -> None:
        """Problems are sorted by line, then column."""
        error = ConfigError(
            [
                ConfigProblem("a", 2, 1, "c"),
                ConfigProblem("a", 1, 5, "b"),
                ConfigProblem("a", 1, 2, "a"),
            ]
        )
        self.assertEqual([p.message for p in error.problems], ["a", "b", "c"])

    def test_str(self) -> None:
        """The error's text is one line per problem."""
        error = ConfigError(
            [ConfigProblem("a", 2, 1, "y"), ConfigProblem("a", 1, 1, "x")]
        )
        self.assertEqual(str(error), "a:1:1: x\na:2:1: y")


class YAMLTests(ConfigTestCase):
    """Tests for problems with the YAML itself."""

    def test_syntax_error(self) -> None:
        """A syntax error is reported at its mark."""
        self.assertEqual(
            self.problems("gateway:\n  workers: [1\nroutes: []\n"),
            [
                "gw.yaml:3:7: invalid YAML: while parsing a flow sequence,"
                " expected ',' or ']', but got ':'"
            ],
        )

    def test_duplicate_key(self) -> None:
        """A key given twice in one mapping is reported at the second."""
        self.assertEqual(
            self.problems(
                """
                gateway:
                  workers: 1
                  workers: 2
                """
            ),
            ["gw.yaml:3:3: duplicate key 'workers' (first at 2:3)"],
        )

    def test_empty(self) -> None:
        """An empty file is an error at 1:1."""
        self.assertEqual(
            self.problems("# nothing here\n"),
            [
                "gw.yaml:1:1: the configuration is empty; expected a mapping"
                " with gateway, listeners, upstreams and routes"
            ],
        )

    def test_not_a_mapping(self) -> None:
        """A top level that is not a mapping is an error at 1:1."""
        self.assertEqual(
            self.problems("# a list\n- a\n"),
            ["gw.yaml:1:1: expected a mapping at the top level, got a list"],
        )

    def test_two_documents(self) -> None:
        """A second document is an error."""
        self.assertEqual(
            self.problems("gateway: {}\n---\ngateway: {}\n"),
            [
                "gw.yaml:2:1: invalid YAML: expected a single document in the"
                " stream, but found another document"
            ],
        )

    def test_complex_key(self) -> None:
        """A key that is not a scalar is an error."""
        self.assertEqual(
            self.problems("? [a]\n: 1\n"), ["gw.yaml:1:3: a key must be a plain string"]
        )

    def test_unknown_tag(self) -> None:
        """A tag SafeLoader does not know is an error at its value."""
        self.assertEqual(
            self.problems("gateway:\n  node: !secret x\n"),
            [
                "gw.yaml:2:9: invalid value: could not determine a constructor"
                " for the tag '!secret'"
            ],
        )

    def test_merge_key(self) -> None:
        """Anchors and << merge keys work; the mapping's own keys win."""
        config = self.parse(
            """
            upstreams:
              a: &base {targets: ["h:1"], balancer: least_request}
              b:
                <<: *base
                targets: ["h:2"]
            """
        )
        self.assertEqual(
            (config.upstreams["b"].balancer, config.upstreams["b"].targets),
            ("least_request", (TargetConfig("h", 2),)),
        )

    def test_alias_cycle(self) -> None:
        """An alias inside its own anchor is an error, not endless recursion."""
        self.assertEqual(
            self.problems("gateway: &g\n  limits: *g\n"),
            ["gw.yaml:1:10: an alias cannot refer to its own anchor"],
        )

    def test_all_problems(self) -> None:
        """Every problem is reported, sorted by position."""
        self.assertEqual(
            self.problems(
                """
                routes: []
                gateway:
                  workers: none
                  drain_timeout: soon
                """
            ),
            [
                "gw.yaml:3:12: expected an integer >= 1 or 'auto', got 'none'",
                "gw.yaml:4:18: expected a duration like 250ms, 5s, 2m, 1h or 1m30s,"
                " got 'soon'",
            ],
        )


class EnvironmentTests(ConfigTestCase):
    """Tests for ${VAR} substitution."""

    def test_plain_scalar_typed(self) -> None:
        """A plain scalar is typed after substitution: a number is an int."""
        config = self.parse("gateway:\n  workers: ${W}\n", {"W": "3"})
        self.assertEqual(config.gateway.workers, 3)

    def test_default_typed(self) -> None:
        """A default is typed like the rest of the scalar."""
        config = self.parse("gateway:\n  workers: ${W:-2}\n")
        self.assertEqual(config.gateway.workers, 2)

    def test_quoted_stays_string(self) -> None:
        """A quoted scalar stays a string after substitution."""
        self.assertEqual(
            self.problems('gateway:\n  workers: "${W:-2}"\n'),
            ["gw.yaml:2:12: expected an integer >= 1 or 'auto', got '2'"],
        )

    def test_inside_text(self) -> None:
        """A reference inside a longer value is replaced in place."""
        config = self.parse("gateway:\n  node: edge-${N}-a\n", {"N": "7"})
        self.assertEqual(config.gateway.node, "edge-7-a")

    def test_unset(self) -> None:
        """An unset variable without default is an error at its scalar."""
        self.assertEqual(
            self.problems("gateway:\n  node: ${NODE}\n"),
            [
                "gw.yaml:2:9: environment variable 'NODE' is not set"
                " (write ${NODE:-default} to give a default)"
            ],
        )

    def test_unset_and_other_problems(self) -> None:
        """An unset variable does not hide the other problems."""
        self.assertEqual(
            self.problems("gateway:\n  node: ${NODE}\n  workers: 0\n"),
            [
                "gw.yaml:2:9: environment variable 'NODE' is not set"
                " (write ${NODE:-default} to give a default)",
                "gw.yaml:3:12: expected an integer >= 1 or 'auto', got 0",
            ],
        )

    def test_unset_reported_once(self) -> None:
        """An unset variable is not reported again as a wrong type."""
        self.assertEqual(
            self.problems("gateway:\n  workers: ${W}\n"),
            [
                "gw.yaml:2:12: environment variable 'W' is not set"
                " (write ${W:-default} to give a default)"
            ],
        )

    def test_malformed(self) -> None:
        """A malformed reference is an error at its scalar."""
        self.assertEqual(
            self.problems('gateway:\n  node: "${N"\n'),
            [
                "gw.yaml:2:9: malformed '${' reference: write ${NAME} or"
                " ${NAME:-default}, or '$${' for a literal '${'"
            ],
        )

    def test_escape(self) -> None:
        """$${ is a literal ${."""
        config = self.parse("gateway:\n  node: a$${B}\n", {"B": "x"})
        self.assertEqual(config.gateway.node, "a${B}")

    def test_comments_untouched(self) -> None:
        """A reference in a comment is never looked at."""
        config = self.parse("gateway:  # ${UNSET}\n  node: a  # ${UNSET}\n")
        self.assertEqual(config.gateway.node, "a")

    def test_keys_untouched(self) -> None:
        """Keys are not substituted."""
        self.assertEqual(
            self.problems("gateway:\n  ${K}: 1\n", {"K": "workers"}),
            [
                "gw.yaml:2:3: unknown key '${K}'; expected one of: node, workers,"
                " drain_timeout, trusted_proxies, limits, access_log, redis, admin"
            ],
        )

    def test_os_environ_default(self) -> None:
        """Without environ, os.environ is used."""
        self.patch(os, "environ", {"GK_NODE": "from-env"})
        config = parse_config("gateway:\n  node: ${GK_NODE}\n")
        self.assertEqual(config.gateway.node, "from-env")


class UnknownKeyTests(ConfigTestCase):
    """Tests for keys the config does not have."""

    def test_did_you_mean(self) -> None:
        """A misspelt key gets the closest known key as a hint."""
        self.assertEqual(
            self.problems("lisenters: {}\n"),
            ["gw.yaml:1:1: unknown key 'lisenters'; did you mean 'listeners'?"],
        )

    def test_no_close_key(self) -> None:
        """A key far from every known key lists the known keys."""
        self.assertEqual(
            self.problems("gateway:\n  limits: {zzz: 1}\n"),
            [
                "gw.yaml:2:12: unknown key 'zzz'; expected one of: max_header_bytes,"
                " max_body_bytes, max_uri_bytes, header_timeout, idle_timeout, body_timeout"
            ],
        )

    def test_not_yet_supported(self) -> None:
        """A key a section marks as upcoming says so."""
        from gatewaykit.config.schema import Section, identity

        section = Section({"known": identity}, upcoming={"later": "a later feature"})
        self.assertEqual(
            section.unknown("later"),
            "unknown key 'later': not supported yet (coming with a later feature)",
        )

    def test_nested(self) -> None:
        """An unknown key deep in a route is reported at that key."""
        self.assertEqual(
            self.problems_with_common(
                """
                routes:
                  - name: a
                    upstream: users
                    match: {pth: /x}
                """
            ),
            ["gw.yaml:4:13: unknown key 'pth'; did you mean 'path'?"],
        )


class DefaultsTests(ConfigTestCase):
    """Tests for what keys left out mean."""

    def test_empty_mapping(self) -> None:
        """An empty top-level mapping is a valid, empty config."""
        config = self.parse("{}")
        self.assertEqual(
            (config.listeners, config.upstreams, config.routes), ({}, {}, ())
        )

    def test_gateway(self) -> None:
        """The gateway section defaults to the model's defaults and the host name."""
        config = self.parse("{}")
        self.assertEqual(config.gateway, GatewayConfig(node=socket.gethostname()))

    def test_null_section(self) -> None:
        """A section left empty is the same as one left out."""
        config = self.parse("gateway:\n  limits:\n")
        self.assertEqual(config.gateway.limits, Limits())

    def test_upstream(self) -> None:
        """An upstream needs only targets."""
        config = self.parse('upstreams:\n  u: {targets: ["h:1"]}\n')
        self.assertEqual(
            config.upstreams["u"],
            UpstreamConfig(
                name="u",
                targets=(TargetConfig("h", 1),),
                balancer="round_robin",
                scheme="http",
                timeouts=UpstreamTimeouts(),
                pool=PoolConfig(),
            ),
        )

    def test_route_listeners(self) -> None:
        """A route without listeners gets every http listener, in file order."""
        config = self.parse(
            """
            listeners:
              b: {protocol: http, bind: ":81"}
              a: {protocol: http, bind: ":80"}
            routes:
              - {name: r, respond: {}}
            """
        )
        self.assertEqual(config.routes[0].listeners, ("b", "a"))

    def test_respond(self) -> None:
        """respond defaults to 200, an empty body and no headers."""
        config = self.parse_with_common("routes:\n  - {name: r, respond: {}}\n")
        self.assertEqual(config.routes[0].respond, RespondAction(200, "", ()))

    def test_redirect_status(self) -> None:
        """redirect defaults to 302."""
        config = self.parse_with_common("routes:\n  - {name: r, redirect: {to: /x}}\n")
        self.assertEqual(config.routes[0].redirect, RedirectAction("/x", 302))

    def test_static_index(self) -> None:
        """static defaults to index.html."""
        config = self.parse_with_common(
            "routes:\n  - {name: r, static: {root: public}}\n"
        )
        self.assertEqual(
            config.routes[0].static,
            StaticAction(os.path.join(self.base, "public"), "index.html"),
        )


class GatewayTests(ConfigTestCase):
    """Tests for the gateway section."""

    def test_workers_auto(self) -> None:
        """workers may be auto."""
        self.assertEqual(self.parse("gateway: {workers: auto}").gateway.workers, "auto")

    def test_workers_zero(self) -> None:
        """workers below 1 is an error at the value."""
        self.assertEqual(
            self.problems("gateway:\n  workers: 0\n"),
            ["gw.yaml:2:12: expected an integer >= 1 or 'auto', got 0"],
        )

    def test_node_with_space(self) -> None:
        """A node name with a space is an error."""
        self.assertEqual(
            self.problems("gateway:\n  node: edge 1\n"),
            ["gw.yaml:2:9: a node name cannot contain spaces, got 'edge 1'"],
        )

    def test_trusted_proxies(self) -> None:
        """trusted_proxies are networks; a single address is a /32."""
        config = self.parse("gateway: {trusted_proxies: [10.0.0.0/8, 192.0.2.1]}")
        self.assertEqual(
            config.gateway.trusted_proxies,
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.1/32")),
        )

    def test_bad_cidr(self) -> None:
        """A bad CIDR is an error at that item."""
        self.assertEqual(
            self.problems("gateway:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n"),
            [
                "gw.yaml:2:33: expected a CIDR like 10.0.0.0/8 or an IP address,"
                " got '10.0.0.0/33'"
            ],
        )

    def test_limits(self) -> None:
        """Limits take sizes and durations."""
        config = self.parse(
            """
            gateway:
              limits:
                max_header_bytes: 32KiB
                max_body_bytes: 1GiB
                max_uri_bytes: 4096
                header_timeout: 500ms
                idle_timeout: 2m
                body_timeout: 20s
            """
        )
        self.assertEqual(
            config.gateway.limits, Limits(32 * 1024, 1024**3, 4096, 0.5, 120.0, 20.0)
        )

    def test_size_wrong_type(self) -> None:
        """A size given as a list names the expected form and what was given."""
        self.assertEqual(
            self.problems("gateway:\n  limits:\n    max_body_bytes: [1]\n"),
            [
                "gw.yaml:3:21: expected a size like 512, 16KiB, 10MiB or 1GiB,"
                " got a list"
            ],
        )

    def test_duration_wrong_type(self) -> None:
        """A duration given as a list names the expected form."""
        self.assertEqual(
            self.problems("gateway:\n  drain_timeout: [5s]\n"),
            [
                "gw.yaml:2:18: expected a duration like 250ms, 5s, 2m, 1h or 1m30s,"
                " got a list"
            ],
        )

    def test_zero_timeout(self) -> None:
        """A timeout of zero is an error."""
        self.assertEqual(
            self.problems("gateway:\n  limits: {header_timeout: 0s}\n"),
            ["gw.yaml:2:28: expected a duration greater than 0, got '0s'"],
        )

    def test_drain_timeout_zero(self) -> None:
        """drain_timeout may be zero: stop at once."""
        self.assertEqual(
            self.parse("gateway: {drain_timeout: 0}").gateway.drain_timeout, 0.0
        )

    def test_access_log_relative(self) -> None:
        """An access log file is made absolute from the config's folder."""
        config = self.parse("gateway:\n  access_log: {path: logs/access.log}\n")
        self.assertEqual(
            config.gateway.access_log,
            AccessLogConfig(os.path.join(self.base, "logs", "access.log"), "combined"),
        )

    def test_access_log_special(self) -> None:
        """'-' and 'off' are kept as they are."""
        self.assertEqual(
            [
                self.parse(
                    f'gateway: {{access_log: {{path: "{p}"}}}}'
                ).gateway.access_log.path
                for p in ("-", "off")
            ],
            ["-", "off"],
        )

    def test_access_log_format(self) -> None:
        """An unknown format lists the known ones."""
        self.assertEqual(
            self.problems("gateway:\n  access_log: {format: jsno}\n"),
            [
                "gw.yaml:2:24: unknown format 'jsno'; expected one of: combined, json;"
                " did you mean 'json'?"
            ],
        )


class ListenerTests(ConfigTestCase):
    """Tests for the listeners section."""

    def test_listener(self) -> None:
        """A listener has its name, protocol, host and port."""
        config = self.parse("listeners:\n  web: {protocol: http, bind: 127.0.0.1:0}\n")
        self.assertEqual(
            config.listeners["web"], ListenerConfig("web", "http", "127.0.0.1", 0)
        )

    def test_bare_port(self) -> None:
        """A bare port binds every interface."""
        config = self.parse("listeners:\n  web: {protocol: http, bind: 8080}\n")
        self.assertEqual(
            (config.listeners["web"].host, config.listeners["web"].port), ("", 8080)
        )

    def test_https_needs_tls(self) -> None:
        """An https listener without a tls section says what it needs."""
        self.assertEqual(
            self.problems("listeners:\n  tls: {protocol: https, bind: ':443'}\n"),
            [
                "gw.yaml:2:8: https listener 'tls' needs a tls section with certificates:"
                " [{cert: FILE, key: FILE}]"
            ],
        )

    def test_unknown_protocol(self) -> None:
        """An unknown protocol is an error at the value."""
        self.assertEqual(
            self.problems("listeners:\n  x: {protocol: htp, bind: ':80'}\n"),
            [
                "gw.yaml:2:17: unknown protocol 'htp'; expected one of: http, https, tcp,"
                " tls_passthrough; did you mean 'http'?"
            ],
        )

    def test_missing_bind(self) -> None:
        """bind is required."""
        self.assertEqual(
            self.problems("listeners:\n  web:\n    protocol: http\n"),
            ["gw.yaml:3:5: missing required key 'bind'"],
        )

    def test_bad_port(self) -> None:
        """A port out of range is an error at the bind."""
        self.assertEqual(
            self.problems("listeners:\n  web: {protocol: http, bind: ':70000'}\n"),
            ["gw.yaml:2:31: expected a port from 0 to 65535, got '70000'"],
        )

    def test_same_bind(self) -> None:
        """Two listeners on the same address are an error at the second."""
        self.assertEqual(
            self.problems(
                """
                listeners:
                  a: {protocol: http, bind: "127.0.0.1:80"}
                  b: {protocol: http, bind: "127.0.0.1:80"}
                """
            ),
            [
                "gw.yaml:3:29: listener 'b' binds the same port as listener 'a'"
                " (127.0.0.1:80)"
            ],
        )

    def test_every_interface_overlaps(self) -> None:
        """Binding every interface overlaps a bind to one address on that port."""
        self.assertEqual(
            self.problems(
                """
                listeners:
                  a: {protocol: http, bind: ":80"}
                  b: {protocol: http, bind: "127.0.0.1:80"}
                """
            ),
            ["gw.yaml:3:29: listener 'b' binds the same port as listener 'a' (*:80)"],
        )

    def test_port_zero_twice(self) -> None:
        """Two listeners on port 0 do not clash: the OS gives each its own."""
        config = self.parse(
            """
            listeners:
              a: {protocol: http, bind: "127.0.0.1:0"}
              b: {protocol: http, bind: "127.0.0.1:0"}
            """
        )
        self.assertEqual(list(config.listeners), ["a", "b"])

    def test_bad_name(self) -> None:
        """A listener name with a space is an error at the name."""
        self.assertEqual(
            self.problems("listeners:\n  my web: {protocol: http, bind: ':80'}\n"),
            [
                "gw.yaml:2:3: listener name 'my web' may contain only letters,"
                " digits, '.', '_' and '-', and must start with a letter or digit"
            ],
        )


class UpstreamTests(ConfigTestCase):
    """Tests for the upstreams section."""

    def test_targets(self) -> None:
        """Targets are host:port strings or {address, weight}."""
        config = self.parse(
            """
            upstreams:
              u:
                targets:
                  - 10.0.0.1:80
                  - {address: "[::1]:81", weight: 3}
            """
        )
        self.assertEqual(
            config.upstreams["u"].targets,
            (TargetConfig("10.0.0.1", 80), TargetConfig("::1", 81, 3)),
        )

    def test_settings(self) -> None:
        """balancer, timeouts and pool are read."""
        config = self.parse(
            """
            upstreams:
              u:
                targets: ["h:1"]
                balancer: least_request
                timeouts: {connect: 1s, response: 30s, idle: 1m}
                pool: {max_idle_per_target: 0, idle_timeout: 5s}
            """
        )
        upstream = config.upstreams["u"]
        self.assertEqual(
            (upstream.balancer, upstream.timeouts, upstream.pool),
            ("least_request", UpstreamTimeouts(1.0, 30.0, 60.0), PoolConfig(0, 5.0)),
        )

    def test_no_targets(self) -> None:
        """An empty target list is an error."""
        self.assertEqual(
            self.problems("upstreams:\n  u: {targets: []}\n"),
            ["gw.yaml:2:16: expected a list of at least one target"],
        )

    def test_missing_targets(self) -> None:
        """targets is required."""
        self.assertEqual(
            self.problems("upstreams:\n  u:\n    balancer: round_robin\n"),
            ["gw.yaml:3:5: missing required key 'targets'"],
        )

    def test_weight(self) -> None:
        """A weight outside 1 to 1000 is an error at the weight."""
        self.assertEqual(
            self.problems(
                "upstreams:\n  u:\n    targets: [{address: 'h:1', weight: 0},"
                " {address: 'h:2', weight: 1001}]\n"
            ),
            [
                "gw.yaml:3:40: expected an integer from 1 to 1000, got 0",
                "gw.yaml:3:69: expected an integer from 1 to 1000, got 1001",
            ],
        )

    def test_duplicate_target(self) -> None:
        """The same target twice is an error at the second."""
        self.assertEqual(
            self.problems("upstreams:\n  u:\n    targets: ['h:1', 'h:1']\n"),
            ["gw.yaml:3:22: duplicate target 'h:1' (first at 3:15)"],
        )

    def test_unknown_balancer(self) -> None:
        """An unknown balancer lists the balancers found."""
        self.assertEqual(
            self.problems(
                "upstreams:\n  u:\n    targets: ['h:1']\n    balancer: roundrobin\n"
            ),
            [
                "gw.yaml:4:15: unknown balancer 'roundrobin'; did you mean"
                " 'round_robin'? (balancers found: least_request, round_robin)"
            ],
        )

    def test_duplicate_plugin(self) -> None:
        """Two plugins with one name are an error, said once."""

        def duplicate() -> dict[str, Any]:
            raise DuplicatePluginName("two balancer plugins are named 'x'")

        self.patch(loader, "balancer_factories", duplicate)
        self.assertEqual(
            self.problems(
                """
                upstreams:
                  a: {targets: ["h:1"], balancer: x}
                  b: {targets: ["h:1"], balancer: x}
                """
            ),
            [
                "gw.yaml:2:35: cannot choose a balancer:"
                " two balancer plugins are named 'x'"
            ],
        )

    def test_builtin_plugin(self) -> None:
        """The built-in round_robin is found through the plugin system."""
        self.patch(loader, "balancer_factories", balancer_factories)
        config = self.parse("upstreams:\n  u: {targets: ['h:1']}\n")
        self.assertEqual(config.upstreams["u"].balancer, "round_robin")

    def test_https_scheme(self) -> None:
        """scheme https is accepted (its tls section is tested in test_tls_config)."""
        config = self.parse("upstreams:\n  u: {targets: ['h:1'], scheme: https}\n")
        self.assertEqual(config.upstreams["u"].scheme, "https")

    def test_negative_pool(self) -> None:
        """max_idle_per_target below 0 is an error."""
        self.assertEqual(
            self.problems(
                "upstreams:\n  u:\n    targets: ['h:1']\n"
                "    pool: {max_idle_per_target: -1}\n"
            ),
            ["gw.yaml:4:33: expected an integer >= 0, got -1"],
        )


class RouteTests(ConfigTestCase):
    """Tests for the routes section."""

    def test_index(self) -> None:
        """A route's index is its position in the list."""
        config = self.parse_with_common(
            "routes:\n  - {name: a, upstream: users}\n  - {name: b, upstream: users}\n"
        )
        self.assertEqual(
            [(r.name, r.index) for r in config.routes], [("a", 0), ("b", 1)]
        )

    def test_missing_name(self) -> None:
        """name is required."""
        self.assertEqual(
            self.problems_with_common("routes:\n  - upstream: users\n"),
            ["gw.yaml:2:5: missing required key 'name'"],
        )

    def test_duplicate_name(self) -> None:
        """A route name used twice is an error at the second."""
        self.assertEqual(
            self.problems_with_common(
                """
                routes:
                  - name: a
                    upstream: users
                  - name: a
                    upstream: users
                """
            ),
            ["gw.yaml:4:11: duplicate route name 'a' (first at 2:11)"],
        )

    def test_missing_upstream(self) -> None:
        """A route naming no known upstream gets a hint."""
        self.assertEqual(
            self.problems_with_common("routes:\n  - name: a\n    upstream: user\n"),
            ["gw.yaml:3:15: no upstream named 'user'; did you mean 'users'?"],
        )

    def test_broken_upstream_still_known(self) -> None:
        """An upstream with a mistake still counts as named for routes."""
        self.assertEqual(
            self.problems(
                """
                routes:
                  - {name: a, upstream: u, listeners: [web]}
                upstreams:
                  u: {targets: []}
                listeners:
                  web: {protocol: http, bind: ":80"}
                """
            ),
            ["gw.yaml:4:16: expected a list of at least one target"],
        )

    def test_unknown_listener(self) -> None:
        """A route naming no known listener gets a hint."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    upstream: users\n    listeners: [wbe]\n"
            ),
            ["gw.yaml:4:17: no listener named 'wbe'; did you mean 'web'?"],
        )

    def test_no_listener_at_all(self) -> None:
        """A route with no listener to serve it is an error."""
        self.assertEqual(
            self.problems("routes:\n  - name: a\n    respond: {}\n"),
            [
                "gw.yaml:2:5: no listener to serve this route:"
                " define one under 'listeners'"
            ],
        )

    def test_no_action(self) -> None:
        """A route without an action is an error at the route."""
        self.assertEqual(
            self.problems_with_common("routes:\n  - name: a\n"),
            [
                "gw.yaml:2:5: a route needs one action:"
                " upstream, split, static, redirect or respond"
            ],
        )

    def test_two_actions(self) -> None:
        """A second action is an error at its key."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    upstream: users\n    respond: {}\n"
            ),
            [
                "gw.yaml:4:5: a route has only one action;"
                " this one already has 'upstream'"
            ],
        )

    def test_static_root_missing(self) -> None:
        """A static root that is not a directory is an error."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    static: {root: www}\n"
            ),
            [
                f"gw.yaml:3:20: 'www' is not an existing directory"
                f" ({os.path.join(self.base, 'www')})"
            ],
        )

    def test_static_index_with_slash(self) -> None:
        """A static index is a file name."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    static: {root: public, index: a/b.html}\n"
            ),
            ["gw.yaml:3:35: expected a file name without '/', got 'a/b.html'"],
        )

    def test_redirect_status(self) -> None:
        """A redirect status must be a redirect."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    redirect: {to: /b, status: 200}\n"
            ),
            ["gw.yaml:3:32: expected one of 301, 302, 303, 307, 308, got 200"],
        )

    def test_redirect_unknown_placeholder(self) -> None:
        """A redirect target naming an unknown placeholder is refused."""
        self.assertEqual(
            self.problems_with_common(
                'routes:\n  - name: a\n    redirect: {to: "https://{hostname}/"}\n'
            ),
            [
                "gw.yaml:3:20: unknown placeholder {hostname} in redirect target;"
                " known: {scheme}, {host}, {port}, {path}, {query}, {uri}"
            ],
        )

    def test_redirect_malformed_template(self) -> None:
        """A redirect target with an unclosed brace is refused."""
        problems = self.problems_with_common(
            'routes:\n  - name: a\n    redirect: {to: "https://{host"}\n'
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("malformed redirect target", problems[0])

    def test_redirect_needs_to(self) -> None:
        """redirect needs to."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    redirect: {status: 301}\n"
            ),
            ["gw.yaml:3:15: missing required key 'to'"],
        )

    def test_respond_status(self) -> None:
        """A respond status is 200-599."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    respond: {status: 199}\n"
            ),
            ["gw.yaml:3:23: expected an integer from 200 to 599, got 199"],
        )

    def test_respond_headers(self) -> None:
        """respond headers keep their order."""
        config = self.parse_with_common(
            "routes:\n  - name: a\n    respond: {body: hi, headers: {B: '1', A: '2'}}\n"
        )
        self.assertEqual(
            config.routes[0].respond, RespondAction(200, "hi", (("B", "1"), ("A", "2")))
        )

    def test_respond_bad_header_name(self) -> None:
        """A header name that is not a token is an error at the name."""
        self.assertEqual(
            self.problems_with_common(
                "routes:\n  - name: a\n    respond: {headers: {'Bad Name': x}}\n"
            ),
            ["gw.yaml:3:25: 'Bad Name' is not a valid header name"],
        )

    def test_timeout(self) -> None:
        """A route timeout is a duration."""
        config = self.parse_with_common(
            "routes:\n  - {name: a, upstream: users, timeout: 90s}\n"
        )
        self.assertEqual(config.routes[0].timeout, 90.0)

    def test_not_a_list(self) -> None:
        """routes must be a list."""
        self.assertEqual(
            self.problems_with_common("routes:\n  a: {}\n"),
            ["gw.yaml:2:3: expected a list, got a mapping"],
        )


class MatchTests(ConfigTestCase):
    """Tests for routes[].match."""

    def match(self, text: str) -> Match:
        """The match of one route whose match mapping is C{text}."""
        config = self.parse_with_common(
            f"routes:\n  - name: r\n    upstream: users\n    match: {text}\n"
        )
        return config.routes[0].match

    def match_problems(self, text: str) -> list[str]:
        """The problems of a match mapping C{text}, which starts at 4:12."""
        return self.problems_with_common(
            f"routes:\n  - name: r\n    upstream: users\n    match: {text}\n"
        )

    def test_path(self) -> None:
        """path is kept as written."""
        self.assertEqual(self.match("{path: /a/}").path, "/a/")

    def test_path_prefix_trailing_slash(self) -> None:
        """A trailing / is dropped from path_prefix."""
        self.assertEqual(self.match("{path_prefix: /users/}").path_prefix, "/users")

    def test_path_prefix_root(self) -> None:
        """path_prefix / stays /."""
        self.assertEqual(self.match("{path_prefix: /}").path_prefix, "/")

    def test_path_without_slash(self) -> None:
        """A path must start with /."""
        self.assertEqual(
            self.match_problems("{path: users}"),
            ["gw.yaml:4:19: a path must start with '/', got 'users'"],
        )

    def test_two_path_kinds(self) -> None:
        """Only one of path, path_prefix and path_regex may be given."""
        self.assertEqual(
            self.match_problems("{path: /a, path_prefix: /b}"),
            [
                "gw.yaml:4:23: only one of path, path_prefix and path_regex may be"
                " given; this match already has 'path'"
            ],
        )

    def test_path_regex(self) -> None:
        """path_regex is compiled."""
        self.assertEqual(
            self.match("{path_regex: '^/u/[0-9]+$'}").path_regex,
            re.compile("^/u/[0-9]+$"),
        )

    def test_bad_path_regex(self) -> None:
        """A regex that does not compile is an error with re's message."""
        self.assertEqual(
            self.match_problems("{path_regex: '(('}"),
            [
                "gw.yaml:4:25: invalid regular expression: missing ),"
                " unterminated subpattern at position 1"
            ],
        )

    def test_methods(self) -> None:
        """Methods are upper-cased."""
        self.assertEqual(self.match("{methods: [get, Post]}").methods, ("GET", "POST"))

    def test_bad_method(self) -> None:
        """A method that is not a token is an error at the item."""
        self.assertEqual(
            self.match_problems("{methods: [GET, 'GE T']}"),
            ["gw.yaml:4:28: 'GE T' is not a valid method"],
        )

    def test_duplicate_method(self) -> None:
        """A method given twice is an error."""
        self.assertEqual(
            self.match_problems("{methods: [GET, get]}"),
            ["gw.yaml:4:28: duplicate method 'GET' (first at 4:23)"],
        )

    def test_hosts(self) -> None:
        """Hosts are lower-cased without trailing dots; wildcards are kept."""
        self.assertEqual(
            self.match("{hosts: [API.example.com., '*.example.com']}").hosts,
            ("api.example.com", "*.example.com"),
        )

    def test_host_with_port(self) -> None:
        """A host with a port is an error at that item."""
        self.assertEqual(
            self.match_problems("{hosts: [a.com, 'b.com:80']}"),
            ["gw.yaml:4:28: a host to match has no port: write 'b.com'"],
        )

    def test_conditions(self) -> None:
        """headers, query and cookies become conditions; numbers count as text."""
        match = self.match(
            "{headers: {Accept-Version: 1}, query: {q: '~^a'}, cookies: {s: '*'}}"
        )
        self.assertEqual(
            (match.headers, match.query, match.cookies),
            (
                (Condition("Accept-Version", "1"),),
                (Condition("q", "~^a"),),
                (Condition("s", "*"),),
            ),
        )

    def test_condition_regex_compiled(self) -> None:
        """A ~ condition holds its compiled pattern."""
        self.assertEqual(
            self.match("{query: {q: '~^a'}}").query[0].pattern, re.compile("^a")
        )

    def test_bad_condition_regex(self) -> None:
        """A ~ condition that does not compile is an error at its value."""
        self.assertEqual(
            self.match_problems("{headers: {X-A: '~(('}}"),
            [
                "gw.yaml:4:28: invalid regular expression: missing ),"
                " unterminated subpattern at position 1"
            ],
        )

    def test_condition_not_a_string(self) -> None:
        """A condition value must be a string."""
        self.assertEqual(
            self.match_problems("{cookies: {a: [1]}}"),
            ["gw.yaml:4:26: expected a string, got a list"],
        )


FULL = """
gateway:
  node: edge-1
  workers: 2
  drain_timeout: 10s
  trusted_proxies: [10.0.0.0/8]
  limits: {max_body_bytes: 1MiB}
  access_log: {path: "-", format: json}
listeners:
  web: {protocol: http, bind: "127.0.0.1:8080"}
  alt: {protocol: http, bind: "[::1]:8081"}
upstreams:
  users:
    targets: [127.0.0.1:9001, {address: 127.0.0.1:9002, weight: 3}]
    timeouts: {connect: 1s}
routes:
  - name: users
    listeners: [web]
    match: {hosts: [api.example.com], path_prefix: /users, methods: [GET]}
    upstream: users
    timeout: 5s
  - name: site
    static: {root: public}
  - name: old
    match: {path: /old}
    redirect: {to: /new, status: 301}
  - name: ping
    match: {path: /ping}
    respond: {body: pong}
"""


class FullConfigTests(ConfigTestCase):
    """A complete valid config gives exactly the expected model."""

    def test_model(self) -> None:
        """Every section becomes its model object."""
        config = self.parse(FULL)
        both = ("web", "alt")
        self.assertEqual(
            config,
            Config(
                source="gw.yaml",
                digest=hashlib.sha256(FULL.removeprefix("\n").encode()).hexdigest(),
                gateway=GatewayConfig(
                    node="edge-1",
                    workers=2,
                    drain_timeout=10.0,
                    trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
                    limits=Limits(max_body_bytes=1024 * 1024),
                    access_log=AccessLogConfig("-", "json"),
                ),
                listeners={
                    "web": ListenerConfig("web", "http", "127.0.0.1", 8080),
                    "alt": ListenerConfig("alt", "http", "::1", 8081),
                },
                upstreams={
                    "users": UpstreamConfig(
                        name="users",
                        targets=(
                            TargetConfig("127.0.0.1", 9001),
                            TargetConfig("127.0.0.1", 9002, 3),
                        ),
                        timeouts=UpstreamTimeouts(connect=1.0),
                    )
                },
                routes=(
                    RouteConfig(
                        name="users",
                        index=0,
                        listeners=("web",),
                        match=Match(
                            hosts=("api.example.com",),
                            path_prefix="/users",
                            methods=("GET",),
                        ),
                        upstream="users",
                        timeout=5.0,
                    ),
                    RouteConfig(
                        name="site",
                        index=1,
                        listeners=both,
                        static=StaticAction(os.path.join(self.base, "public")),
                    ),
                    RouteConfig(
                        name="old",
                        index=2,
                        listeners=both,
                        match=Match(path="/old"),
                        redirect=RedirectAction("/new", 301),
                    ),
                    RouteConfig(
                        name="ping",
                        index=3,
                        listeners=both,
                        match=Match(path="/ping"),
                        respond=RespondAction(body="pong"),
                    ),
                ),
            ),
        )

    def test_read_only(self) -> None:
        """The listeners and upstreams mappings cannot be changed."""
        config = self.parse(FULL)
        self.assertRaises(TypeError, operator.setitem, config.listeners, "x", None)


class LoadConfigTests(ConfigTestCase):
    """Tests for L{load_config} reading a file."""

    def write(self, text: str, name: str = "gw.yaml") -> str:
        """Write C{text} to C{name} in the test folder; its path."""
        path = os.path.join(self.base, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_source_and_digest(self) -> None:
        """source is the path as given, digest the sha256 of the bytes."""
        path = self.write("gateway: {node: a}\n")
        config = load_config(path, environ={})
        self.assertEqual(
            (config.source, config.digest),
            (path, hashlib.sha256(b"gateway: {node: a}\n").hexdigest()),
        )

    def test_relative_to_file(self) -> None:
        """Relative paths are taken from the file's folder."""
        os.makedirs(os.path.join(self.base, "sub", "www"))
        path = self.write(
            "listeners: {web: {protocol: http, bind: ':0'}}\n"
            "routes: [{name: a, static: {root: www}}]\n",
            os.path.join("sub", "gw.yaml"),
        )
        config = load_config(path, environ={})
        self.assertEqual(
            config.routes[0].static.root, os.path.join(self.base, "sub", "www")
        )

    def test_problems_name_the_path(self) -> None:
        """Problems are reported against the path as given."""
        path = self.write("gateway: {workers: 0}\n")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(
            [str(p) for p in e.problems],
            [f"{path}:1:20: expected an integer >= 1 or 'auto', got 0"],
        )

    def test_missing_file(self) -> None:
        """A missing file is one problem."""
        path = os.path.join(self.base, "nope.yaml")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(
            str(e), f"{path}:1:1: cannot read the file: No such file or directory"
        )

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are an error at their position."""
        path = os.path.join(self.base, "bad.yaml")
        with open(path, "wb") as f:
            f.write(b"gateway:\n  node: \xff\n")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(str(e), f"{path}:2:9: the file is not valid UTF-8")


class ResilienceConfigTests(ConfigTestCase):
    """hash_key, health, outlier, retries and circuit_breaker on upstreams."""

    def upstream(self, body: str) -> Any:
        config = self.parse(
            "upstreams:\n  u:\n    targets: ['127.0.0.1:1']\n" + textwrap.indent(body, "    ")
        )
        return config.upstreams["u"]

    def upstream_problems(self, body: str) -> list[str]:
        return self.problems(
            "upstreams:\n  u:\n    targets: ['127.0.0.1:1']\n" + textwrap.indent(body, "    ")
        )

    def test_defaults(self) -> None:
        """Without the keys: no checks, no ejection, one retry on connect failure."""
        upstream = self.upstream("")
        self.assertIsNone(upstream.health)
        self.assertIsNone(upstream.outlier)
        self.assertEqual(upstream.retries, RetryConfig(attempts=1, on=("connect_failure",)))
        self.assertEqual(upstream.circuit_breaker, CircuitBreakerConfig(1024, 1024))
        self.assertEqual(upstream.hash_key, HashKey("ip"))

    def test_hash_key_forms(self) -> None:
        """hash_key takes ip, path, header:NAME, cookie:NAME and query:NAME."""
        self.assertEqual(self.upstream("hash_key: 'cookie:sid'\n").hash_key, HashKey("cookie", "sid"))
        self.assertEqual(self.upstream("hash_key: 'header:X-U'\n").hash_key, HashKey("header", "x-u"))
        self.assertEqual(self.upstream("hash_key: path\n").hash_key, HashKey("path"))

    def test_hash_key_unknown(self) -> None:
        """An unknown hash key kind is an error at the value."""
        self.assertEqual(
            self.upstream_problems("hash_key: body\n"),
            [
                "gw.yaml:4:15: unknown hash key 'body'; expected ip, path, header:NAME,"
                " cookie:NAME or query:NAME"
            ],
        )

    def test_http_health(self) -> None:
        """An HTTP health check with every key."""
        health = self.upstream(
            "health: {path: /hz, interval: 2s, timeout: 500ms, healthy_threshold: 1,"
            " unhealthy_threshold: 4, expect_status: [200, '300-302']}\n"
        ).health
        self.assertEqual(
            health,
            HealthCheckConfig("/hz", False, 2.0, 0.5, 1, 4, ((200, 200), (300, 302))),
        )
        self.assertTrue(health.expects(301))
        self.assertFalse(health.expects(204))

    def test_health_needs_one_kind(self) -> None:
        """A health check is either path or tcp, not both nor neither."""
        self.assertEqual(
            self.upstream_problems("health: {path: /x, tcp: true}\n"),
            ["gw.yaml:4:13: a health check needs exactly one of path: /PATH or tcp: true"],
        )
        self.assertEqual(
            self.upstream_problems("health: {interval: 1s}\n"),
            ["gw.yaml:4:13: a health check needs exactly one of path: /PATH or tcp: true"],
        )

    def test_expect_status_range(self) -> None:
        """A reversed status range is an error."""
        self.assertEqual(
            self.upstream_problems("health: {path: /x, expect_status: '399-200'}\n"),
            ["gw.yaml:4:39: expected statuses from 100 to 599, low to high; got '399-200'"],
        )

    def test_retries(self) -> None:
        """retries with conditions and statuses."""
        retries = self.upstream(
            "retries: {attempts: 3, on: [reset, timeout, 503], per_try_timeout: 1s,"
            " budget_percent: 10}\n"
        ).retries
        self.assertEqual(retries, RetryConfig(3, ("reset", "timeout", 503), 1.0, 10.0))

    def test_retry_condition_unknown(self) -> None:
        """An unknown retry condition gets a hint; a status that is not 5xx is refused."""
        self.assertEqual(
            self.upstream_problems("retries: {on: [rest, 404]}\n"),
            [
                "gw.yaml:4:20: unknown retry condition 'rest'; expected connect_failure,"
                " reset, timeout or a 5xx status; did you mean 'reset'?",
                "gw.yaml:4:26: expected connect_failure, reset, timeout or a 5xx status,"
                " got 404",
            ],
        )

    def test_outlier(self) -> None:
        """outlier keys and their defaults."""
        outlier = self.upstream("outlier: {consecutive_failures: 2}\n").outlier
        self.assertEqual(outlier, OutlierConfig(2, 30.0, 50))

    def test_outlier_percent_bounds(self) -> None:
        """max_ejected_percent is 0 to 100."""
        self.assertEqual(
            self.upstream_problems("outlier: {max_ejected_percent: 150}\n"),
            ["gw.yaml:4:36: expected an integer from 0 to 100, got 150"],
        )

    def test_circuit_breaker(self) -> None:
        """circuit_breaker limits."""
        breaker = self.upstream("circuit_breaker: {max_requests: 5, max_pending: 2}\n")
        self.assertEqual(breaker.circuit_breaker, CircuitBreakerConfig(5, 2))


class TCPListenerConfigTests(ConfigTestCase):
    """Listeners with protocol tcp."""

    UPSTREAMS = "upstreams:\n  users: {targets: ['127.0.0.1:9001']}\n"

    def test_tcp_listener(self) -> None:
        """A tcp listener names its upstream and may set idle_timeout."""
        config = self.parse(
            "listeners:\n  db: {protocol: tcp, bind: ':5433', upstream: users, idle_timeout: 5m}\n"
            + self.UPSTREAMS
        )
        self.assertEqual(
            config.listeners["db"],
            ListenerConfig("db", "tcp", "", 5433, upstream="users", idle_timeout=300.0),
        )

    def test_tcp_needs_upstream(self) -> None:
        """A tcp listener without an upstream is an error."""
        self.assertEqual(
            self.problems("listeners:\n  db: {protocol: tcp, bind: ':5433'}\n"),
            ["gw.yaml:2:7: tcp listener 'db' needs an upstream: NAME"],
        )

    def test_upstream_only_for_tcp(self) -> None:
        """An http listener does not take upstream."""
        self.assertEqual(
            self.problems(
                "listeners:\n  w: {protocol: http, bind: ':81', upstream: users}\n"
                + self.UPSTREAMS
            ),
            ["gw.yaml:2:36: 'upstream' is only for tcp listeners"],
        )

    def test_route_on_tcp_listener(self) -> None:
        """A route cannot serve a tcp listener."""
        problems = self.problems(
            "listeners:\n  db: {protocol: tcp, bind: ':5433', upstream: users}\n"
            + self.UPSTREAMS
            + "routes:\n  - {name: r, upstream: users, listeners: [db]}\n"
        )
        self.assertEqual(
            problems,
            [
                "gw.yaml:6:43: listener 'db' is a tcp listener;"
                " routes serve http and https listeners"
            ],
        )

    def test_default_route_listeners_skip_tcp(self) -> None:
        """A route without listeners serves the http ones only."""
        config = self.parse(
            "listeners:\n  web: {protocol: http, bind: ':80'}\n"
            "  db: {protocol: tcp, bind: ':5433', upstream: users}\n"
            + self.UPSTREAMS
            + "routes:\n  - {name: r, upstream: users}\n"
        )
        self.assertEqual(config.routes[0].listeners, ("web",))
