"""Tests for the C{gateway.admin} section of the configuration."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config import parse_config
from gatewaykit.config.errors import ConfigError
from gatewaykit.config.model import AdminConfig

LISTENERS = 'listeners: {web: {protocol: http, bind: "127.0.0.1:8080"}}\n'


def problems(text: str) -> list[str]:
    try:
        parse_config(text, source="gw.yaml")
    except ConfigError as exc:
        return [str(problem) for problem in exc.problems]
    raise AssertionError("no problem found")


class AdminConfigTests(SynchronousTestCase):
    """C{gateway.admin}."""

    def test_absent(self) -> None:
        """Without the section there is no admin API."""
        self.assertIsNone(parse_config("gateway: {node: n}\n").gateway.admin)

    def test_defaults(self) -> None:
        """An empty section listens on 127.0.0.1:9901 without a token."""
        admin = parse_config("gateway: {admin: {}}\n").gateway.admin
        self.assertEqual(admin, AdminConfig("127.0.0.1", 9901, ""))
        self.assertEqual(admin.bind, "127.0.0.1:9901")

    def test_bind_and_token(self) -> None:
        """bind and token as given."""
        admin = parse_config(
            'gateway: {admin: {bind: "[::1]:9000", token: "${TOKEN}"}}\n', environ={"TOKEN": "t0k"}
        ).gateway.admin
        self.assertEqual((admin.host, admin.port, admin.token), ("::1", 9000, "t0k"))
        self.assertEqual(admin.bind, "[::1]:9000")

    def test_empty_token_from_environment(self) -> None:
        """The spec's C{${GATEWAYKIT_ADMIN_TOKEN:-}} unset means no token."""
        text = 'gateway: {admin: {token: "${GATEWAYKIT_ADMIN_TOKEN:-}"}}\n'
        self.assertEqual(parse_config(text, environ={}).gateway.admin.token, "")

    def test_token_hidden_from_repr(self) -> None:
        """The token does not show in the config's repr (logs, tracebacks)."""
        config = parse_config("gateway: {admin: {token: sekrit-value}}\n")
        self.assertNotIn("sekrit-value", repr(config))

    def test_bad_token(self) -> None:
        """A token that cannot be sent in a header is refused."""
        self.assertEqual(
            problems('gateway: {admin: {token: "two words"}}\n'),
            [
                "gw.yaml:1:26: an admin token must be visible ASCII without spaces"
                " (it is sent in a header)"
            ],
        )

    def test_bad_bind(self) -> None:
        """A bind that is not host:port is refused."""
        self.assertEqual(
            problems("gateway: {admin: {bind: nowhere}}\n"),
            ["gw.yaml:1:25: expected host:port, [v6]:port, :port or a port, got 'nowhere'"],
        )

    def test_unknown_key(self) -> None:
        """Unknown keys get a hint."""
        self.assertEqual(
            problems("gateway: {admin: {tokn: x}}\n"),
            ["gw.yaml:1:19: unknown key 'tokn'; did you mean 'token'?"],
        )

    def test_same_port_as_listener(self) -> None:
        """The admin API cannot share a listener's port."""
        self.assertEqual(
            problems('gateway: {admin: {bind: "0.0.0.0:8080"}}\n' + LISTENERS),
            [
                "gw.yaml:1:25: gateway.admin binds the same port as listener 'web'"
                " (127.0.0.1:8080)"
            ],
        )
