"""
Tests for L{gatewaykit.upstream.split}: the C{split} route action, its
config keys, and the upstream label of the requests it sends.
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.admin.metrics import Metrics
from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import HashKey, PoolConfig, SplitSide
from gatewaykit.gateway import Gateway
from gatewaykit.http.message import Headers, Request
from gatewaykit.interfaces import IRouteAction
from gatewaykit.listeners.http import HTTP11ServerFactory
from gatewaykit.testing import GatewayHarness, make_config, parse_response, route, upstream
from gatewaykit.upstream.split import SplitAction

ADDRESSES = {"10.0.0.1": "users-v1", "10.0.0.2": "users-v2"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# No idle connection kept: each request opens its own, telling its side.
ONE_SHOT = PoolConfig(max_idle_per_target=0)


def split_config(weights: tuple[int, int] = (90, 10), split_by: Optional[HashKey] = None) -> Any:
    sides = (SplitSide("users-v1", weights[0]), SplitSide("users-v2", weights[1]))
    return make_config(
        routes=[route("users", path_prefix="/", split=sides, split_by=split_by)],
        upstreams=[
            upstream("users-v1", "10.0.0.1:80", pool=ONE_SHOT),
            upstream("users-v2", "10.0.0.2:80", pool=ONE_SHOT),
        ],
    )


def request(headers: tuple[tuple[bytes, bytes], ...] = (), client_ip: str = "192.0.2.1") -> Request:
    return Request("GET", b"/", "/", headers=Headers(list(headers)), client_host=client_ip)


def split_action(harness: GatewayHarness) -> SplitAction:
    """The split action of the one route of C{harness}'s gateway."""
    route = harness.gateway.routers["web"].match(request((b"Host", b"a"),))
    action = route.action
    assert isinstance(action, SplitAction)
    return action


def sides_reached(harness: GatewayHarness) -> Counter[str]:
    """How many connections the gateway opened to each upstream."""
    return Counter(ADDRESSES[host] for host, *_ in harness.reactor.tcpClients)


class SplitWorld:
    """
    A gateway over a split, with metrics, and one keep-alive client whose
    requests are each answered at once by the side they reach.
    """

    def __init__(self, weights: tuple[int, int], split_by: Optional[HashKey] = None) -> None:
        self.harness = harness = GatewayHarness(split_config(weights, split_by))
        self.metrics = Metrics(harness.reactor)
        harness.gateway = Gateway(harness.config, harness.reactor, metrics=self.metrics)
        harness.factory = HTTP11ServerFactory(
            harness.config.listeners["web"], harness.gateway, harness.reactor
        )
        self.client, self.transport = harness.connect()

    def send(self, fields: bytes = b"") -> str:
        """Send one request; the upstream that answered it."""
        self.client.dataReceived(b"GET /users HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
        backend, _ = self.harness.accept_upstream()
        backend.dataReceived(OK)
        self.transport.clear()
        return ADDRESSES[self.harness.reactor.tcpClients[-1][0]]

    def counted(self) -> Counter[str]:
        """gatewaykit_requests_total by upstream."""
        counted: Counter[str] = Counter()
        for family in text_string_to_metric_families(self.metrics.text().decode()):
            for sample in family.samples:
                if sample.name == "gatewaykit_requests_total":
                    counted[sample.labels["upstream"]] += int(sample.value)
        return counted


class SplitConfigTests(SynchronousTestCase):
    """The C{split} and C{split_by} keys."""

    def parse(self, routes: str) -> Any:
        text = textwrap.dedent(
            """
            listeners:
              web: {protocol: http, bind: ":8080"}
            upstreams:
              users-v1: {targets: ["127.0.0.1:9001"]}
              users-v2: {targets: ["127.0.0.1:9002"]}
            routes:
            """
        ) + textwrap.indent(textwrap.dedent(routes), "  ")
        return parse_config(text, "gw.yaml", base_dir=os.getcwd())

    def problems(self, routes: str) -> list[str]:
        error = self.assertRaises(ConfigError, self.parse, routes)
        return [str(problem).partition(": ")[2] for problem in error.problems]

    def test_split(self) -> None:
        """A split is a list of upstreams and weights; random by default."""
        config = self.parse(
            """
            - name: users
              split: [{upstream: users-v1, weight: 90}, {upstream: users-v2, weight: 10}]
            """
        )
        users = config.routes[0]
        self.assertEqual(users.split, (SplitSide("users-v1", 90), SplitSide("users-v2", 10)))
        self.assertIsNone(users.split_by)
        self.assertIsNone(users.upstream)

    def test_split_by(self) -> None:
        """split_by is random, ip, header:NAME or cookie:NAME."""
        for written, expected in [
            ("random", None),
            ("ip", HashKey("ip")),
            ("header:X-User", HashKey("header", "x-user")),
            ("cookie:uid", HashKey("cookie", "uid")),
        ]:
            config = self.parse(
                f"""
                - name: users
                  split: [{{upstream: users-v1, weight: 1}}]
                  split_by: "{written}"
                """
            )
            self.assertEqual(config.routes[0].split_by, expected, written)

    def test_bad_split_by(self) -> None:
        """Another split key is refused with the list of the valid ones."""
        self.assertEqual(
            self.problems(
                """
                - name: users
                  split: [{upstream: users-v1, weight: 1}]
                  split_by: path
                """
            ),
            ["unknown split key 'path'; expected random, ip, header:NAME or cookie:NAME"],
        )

    def test_one_action(self) -> None:
        """split is an action: with upstream too, the second one is refused."""
        self.assertEqual(
            self.problems(
                """
                - name: users
                  upstream: users-v1
                  split: [{upstream: users-v2, weight: 1}]
                """
            ),
            ["a route has only one action; this one already has 'upstream'"],
        )

    def test_no_weight(self) -> None:
        """Weights that are all 0 leave nowhere to send a request."""
        self.assertEqual(
            self.problems(
                """
                - name: users
                  split: [{upstream: users-v1, weight: 0}, {upstream: users-v2, weight: 0}]
                """
            ),
            ["a split needs at least one weight above 0"],
        )

    def test_split_by_alone(self) -> None:
        """split_by without split is a mistake."""
        self.assertEqual(
            self.problems(
                """
                - name: users
                  upstream: users-v1
                  split_by: ip
                """
            ),
            ["split_by goes with split"],
        )

    def test_sides(self) -> None:
        """Each side names a known upstream, once, with a weight."""
        problems = self.problems(
            """
            - name: users
              split:
                - {upstream: users-v1, weight: 1}
                - {upstream: users-v1, weight: 2}
                - {upstream: users-v3, weight: 1}
                - {upstream: users-v2}
            """
        )
        self.assertEqual(
            problems,
            [
                "duplicate split upstream 'users-v1' (first at 11:9)",
                "no upstream named 'users-v3'; did you mean 'users-v2'?",
                "missing required key 'weight'",
            ],
        )


class SplitChoiceTests(SynchronousTestCase):
    """Which side a request goes to."""

    def test_provides(self) -> None:
        """SplitAction provides IRouteAction."""
        verifyObject(IRouteAction, split_action(GatewayHarness(split_config())))

    def test_weights_over_10000(self) -> None:
        """90/10 over 10,000 requests through the gateway lands within 1.5% of the weights."""
        world = SplitWorld((90, 10))
        served = Counter(world.send() for _ in range(10_000))
        share = served["users-v2"] / 10_000
        print(f"\nsplit 90/10 over 10,000 requests: {dict(served)}")
        self.assertLessEqual(abs(share - 0.10), 0.015, share)
        self.assertEqual(world.counted(), served)

    def test_cookie_keeps_client(self) -> None:
        """With cookie:uid, 1,000 clients each stay on one side over 20 requests."""
        world = SplitWorld((90, 10), HashKey("cookie", "uid"))
        sides: dict[int, set[str]] = {}
        for _ in range(20):
            for client in range(1_000):
                cookie = b"Cookie: theme=dark; uid=user-%d\r\n" % client
                sides.setdefault(client, set()).add(world.send(cookie))
        self.assertEqual({client for client, seen in sides.items() if len(seen) > 1}, set())
        on_v2 = sum(1 for seen in sides.values() if seen == {"users-v2"})
        self.assertLessEqual(abs(on_v2 / 1_000 - 0.10), 0.03, on_v2)

    def test_missing_key_is_random(self) -> None:
        """A request without the key is placed at random."""
        action = split_action(GatewayHarness(split_config((50, 50), HashKey("cookie", "uid"))))
        chosen = Counter(action.choose(request()).upstream.name for _ in range(1_000))
        self.assertEqual(set(chosen), {"users-v1", "users-v2"})

    def test_ip(self) -> None:
        """split_by ip keeps a client address on one side, through the gateway."""
        harness = GatewayHarness(split_config((50, 50), HashKey("ip")))
        sides: dict[str, set[str]] = {}
        for address in (f"192.0.2.{n}" for n in range(1, 41)):
            for _ in range(5):
                client, _ = harness.connect(client=address)
                client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                sides.setdefault(address, set()).add(harness.reactor.tcpClients[-1][0])
        self.assertEqual({address for address, seen in sides.items() if len(seen) > 1}, set())
        self.assertEqual(set(sides_reached(harness)), {"users-v1", "users-v2"})

    def test_header(self) -> None:
        """split_by header:NAME keeps one header value on one side."""
        world = SplitWorld((50, 50), HashKey("header", "x-user"))
        for user in range(100):
            field = b"X-User: %d\r\n" % user
            self.assertEqual(len({world.send(field) for _ in range(5)}), 1, user)

    def test_zero_weight(self) -> None:
        """A side with weight 0 gets nothing (blue-green: all on one side)."""
        action = split_action(GatewayHarness(split_config((0, 100))))
        chosen = {action.choose(request()).upstream.name for _ in range(500)}
        self.assertEqual(chosen, {"users-v2"})

    def test_shift_keeps_canary_clients(self) -> None:
        """Raising the canary's weight moves clients to it, never back."""
        key = HashKey("cookie", "uid")
        before = split_action(GatewayHarness(split_config((90, 10), key)))
        after = split_action(GatewayHarness(split_config((50, 50), key)))
        for client in range(2_000):
            field = ((b"Cookie", b"uid=%d" % client),)
            if before.choose(request(field)).upstream.name == "users-v2":
                self.assertEqual(after.choose(request(field)).upstream.name, "users-v2")

    def test_response(self) -> None:
        """The chosen side's answer reaches the client."""
        harness = GatewayHarness(split_config((0, 1)))
        client, transport = harness.connect()
        client.dataReceived(b"GET /users/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, backend_transport = harness.accept_upstream()
        self.assertTrue(backend_transport.value().startswith(b"GET /users/1 HTTP/1.1\r\n"))
        backend.dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).body, b"ok")


class SplitExplainTests(SynchronousTestCase):
    """gatewaykit explain on a split route."""

    def test_side(self) -> None:
        """explain names the side a keyed request goes to, and its target."""
        from gatewaykit.explain import explain, render_text

        config = split_config((50, 50), HashKey("cookie", "uid"))
        for uid in ("1", "2", "3", "4"):
            result = explain(config, "GET", "http://a:80/users", [("Cookie", f"uid={uid}")])
            action = result["action"]
            chosen = action["split"]["chosen"]
            request = Request(
                "GET", b"/", "/", headers=Headers([(b"Cookie", f"uid={uid}".encode())])
            )
            expected = split_action(GatewayHarness(config)).choose(request).upstream.name
            self.assertEqual((chosen, action["upstream"]), (expected, expected))
            self.assertIn(f"this request goes to {expected}", render_text(result))
