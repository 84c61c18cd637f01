"""
End-to-end tests of the balancers: real requests through a C{twistd gatewaykit}
process to named upstreams on loopback, counting which target answered each.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Sequence

from twisted.internet import defer
from twisted.python import log

from tests.integration import support


class ClusterTestCase(support.GatewayTestCase):
    """Starts named upstreams and a gateway balancing between them."""

    @defer.inlineCallbacks
    def start_cluster(
        self,
        names: Sequence[str],
        delays: dict[str, float] | None = None,
        weights: Sequence[int] = (),
        **upstream: Any,
    ) -> support.Steps:
        """
        A L{support.NamedServer} per name (answering after C{delays[name]}) and
        a gateway over them; fires with C{(gateway, servers by name)}.
        """
        servers = {
            name: support.start_named(self, name, (delays or {}).get(name, 0.0)) for name in names
        }
        config = support.cluster_config(
            [server.port for server in servers.values()], weights, **upstream
        )
        gateway = yield self.start_gateway(config)
        return gateway, servers

    @defer.inlineCallbacks
    def served(
        self, gateway: support.GatewayProcess, count: int, concurrency: int
    ) -> support.Steps:
        """Send C{count} GETs; fires with how many each upstream answered (all must be 200)."""
        started = time.monotonic()
        replies = yield support.send_requests(
            self, gateway.port(), [("/", ())] * count, concurrency
        )
        elapsed = time.monotonic() - started
        self.assertEqual(Counter(reply.status for reply in replies), {200: count})
        counts = Counter(reply.upstream for reply in replies)
        log.msg(f"{count} requests ({concurrency} in flight) in {elapsed:.2f}s: {dict(counts)}")
        return counts


class RoundRobinTests(ClusterTestCase):
    """round_robin spreads requests evenly."""

    @defer.inlineCallbacks
    def test_even_split(self) -> support.Steps:
        """3000 concurrent requests over 3 targets: each gets 1000 ± 10."""
        gateway, _ = yield self.start_cluster("abc", balancer="round_robin")
        counts = yield self.served(gateway, 3000, concurrency=30)
        for name in "abc":
            self.assertAlmostEqual(counts[name], 1000, delta=10, msg=f"{dict(counts)}")


class WeightedRoundRobinTests(ClusterTestCase):
    """weighted_round_robin follows nginx's smooth order."""

    @defer.inlineCallbacks
    def test_smooth_order(self) -> support.Steps:
        """Weights 5:1:1 answer 70 sequential requests in 10 cycles of a a b a c a a."""
        gateway, _ = yield self.start_cluster(
            "abc", weights=(5, 1, 1), balancer="weighted_round_robin"
        )
        replies = yield support.send_requests(self, gateway.port(), [("/", ())] * 70, 1)
        order = "".join(reply.upstream for reply in replies)
        log.msg(f"weighted_round_robin 5:1:1 order: {order}")
        self.assertEqual([order[i : i + 7] for i in range(0, 70, 7)], ["aabacaa"] * 10)


class ConsistentHashTests(ClusterTestCase):
    """hash keeps each key on one target and moves few keys when one goes."""

    KEYS = 10_000
    TARGETS = 10

    @defer.inlineCallbacks
    def owners(self, gateway: support.GatewayProcess, keys: list[str]) -> support.Steps:
        """Send one request per key (X-User: key); fires with the upstream of each key."""
        started = time.monotonic()
        replies = yield support.send_requests(
            self, gateway.port(), [("/", [("X-User", key)]) for key in keys], 50
        )
        log.msg(f"hash: {len(keys)} keys in {time.monotonic() - started:.2f}s")
        self.assertEqual(Counter(reply.status for reply in replies), {200: len(keys)})
        return dict(zip(keys, (reply.upstream for reply in replies), strict=True))

    @defer.inlineCallbacks
    def test_keys_stay_and_few_move(self) -> support.Steps:
        """10,000 keys keep their target; removing 1 of 10 targets moves only its keys (≤ 15%)."""
        names = [f"t{i}" for i in range(self.TARGETS)]
        gateway, servers = yield self.start_cluster(
            names,
            balancer="hash",
            hash_key="header:X-User",
            health={"path": "/healthz", "interval": "200ms", "unhealthy_threshold": 1},
        )
        keys = [f"user-{i}" for i in range(self.KEYS)]
        first = yield self.owners(gateway, keys)
        again = yield self.owners(gateway, keys)
        changed = sum(first[key] != again[key] for key in keys)
        self.assertEqual(changed, 0, "keys answered by another target the second time")

        gone = servers["t3"]
        address = f"127.0.0.1:{gone.port}"
        yield gone.stop()
        yield support.wait_for(
            lambda: f"target {address} is now unhealthy" in gateway.output,
            timeout=5,
            what=f"{address} marked unhealthy",
        )
        after = yield self.owners(gateway, keys)
        moved = {key for key in keys if after[key] != first[key]}
        on_gone = {key for key in keys if first[key] == "t3"}
        log.msg(f"hash: {len(on_gone)} of {len(keys)} keys on t3 ({address}), {len(moved)} moved")
        self.assertEqual(
            (len(moved - on_gone), len(on_gone - moved)),
            (0, 0),
            "keys of other targets moved, or keys of the removed target stayed",
        )
        self.assertLessEqual(len(moved), 0.15 * len(keys))


class PowerOfTwoChoicesTests(ClusterTestCase):
    """p2c steers load away from a slow target."""

    @defer.inlineCallbacks
    def test_slow_target_gets_less(self) -> support.Steps:
        """With one of 3 targets 20 ms slower, it gets under 20% of 1500 requests, but some."""
        gateway, _ = yield self.start_cluster("abc", delays={"c": 0.02}, balancer="p2c")
        counts = yield self.served(gateway, 1500, concurrency=30)
        self.assertGreater(counts["c"], 0, f"{dict(counts)}")
        self.assertLess(counts["c"], 0.2 * 1500, f"{dict(counts)}")


class LeastRequestTests(ClusterTestCase):
    """least_request sends new requests past a target that holds them."""

    @defer.inlineCallbacks
    def test_busy_target_skipped(self) -> support.Steps:
        """While target a holds its requests for 2 s, the others answer nearly all of 200."""
        gateway, _ = yield self.start_cluster("abc", delays={"a": 2.0}, balancer="least_request")
        counts = yield self.served(gateway, 200, concurrency=4)
        # With 4 in flight, a pick sees at most 3 others in flight: a held
        # target is only chosen while it has no more than each of b and c,
        # so a gets at most 2 (round_robin would give it 67).
        self.assertLessEqual(counts["a"], 2, f"{dict(counts)}")
        self.assertEqual(counts["b"] + counts["c"], 200 - counts["a"])
