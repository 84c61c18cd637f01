"""
Tests for the built-in balancers, targets and the plugin registry.
"""

from collections import Counter
from random import Random
from typing import Any, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config.model import HashKey, TargetConfig, UpstreamConfig
from gatewaykit.http.message import Headers, Request
from gatewaykit.interfaces import IBalancer, IBalancerFactory, ITarget
from gatewaykit.plugins import balancer_factories
from gatewaykit.upstream.balancers import (
    SCHEDULE_MAX,
    ConsistentHash,
    LeastRequest,
    PowerOfTwoChoices,
    RoundRobin,
    WeightedRandom,
    WeightedRoundRobin,
    hash64,
)
from gatewaykit.upstream.target import Target

BUILT_IN = ("round_robin", "weighted_round_robin", "least_request", "p2c", "random", "hash")


def targets(count: int, weight: int = 1) -> list[Target]:
    return [Target(TargetConfig("10.0.0.%d" % i, 80, weight)) for i in range(count)]


def weighted(*weights: int) -> list[Target]:
    return [Target(TargetConfig("10.0.1.%d" % i, 80, w)) for i, w in enumerate(weights)]


def upstream(
    pool: Sequence[Target], balancer: str = "hash", hash_key: str = "ip"
) -> UpstreamConfig:
    return UpstreamConfig(
        "u",
        tuple(TargetConfig(t.host, t.port, t.weight) for t in pool),
        balancer=balancer,
        hash_key=HashKey.parse(hash_key),
    )


def request(number: int = 0, **kwargs: Any) -> Request:
    """A request whose client address and path vary with C{number}."""
    kwargs.setdefault("client_host", "192.0.2.%d" % (number % 250))
    return Request("GET", b"/", kwargs.pop("path", "/p%d" % number), **kwargs)


class BalancerContract:
    """
    What every balancer does; mixed into one C{SynchronousTestCase} per
    balancer, which sets C{name} and C{balancer_class}.
    """

    name: str
    balancer_class: type

    def build(self, pool: Sequence[Target]) -> Any:
        return self.balancer_class(upstream(pool, self.name), pool)

    def picks(
        self, balancer: Any, count: int, exclude: Sequence[ITarget] = ()
    ) -> list[Optional[ITarget]]:
        return [balancer.pick(request(i), exclude) for i in range(count)]

    def test_provides_interface(self: Any) -> None:
        """The balancer provides IBalancer."""
        verifyObject(IBalancer, self.build(targets(3)))

    def test_registered(self: Any) -> None:
        """The plugin of this name builds this balancer."""
        factory = balancer_factories()[self.name]
        pool = targets(2)
        self.assertIsInstance(factory.build(upstream(pool, self.name), pool), self.balancer_class)

    def test_skips_unavailable(self: Any) -> None:
        """Unhealthy and ejected targets are never picked."""
        pool = targets(3)
        pool[0].healthy = False
        pool[1].ejected = True
        self.assertEqual(set(self.picks(self.build(pool), 50)), {pool[2]})

    def test_skips_excluded(self: Any) -> None:
        """Targets already tried are never picked."""
        pool = targets(3)
        self.assertEqual(set(self.picks(self.build(pool), 50, pool[:2])), {pool[2]})

    def test_none_left(self: Any) -> None:
        """With no available target the pick is None."""
        pool = targets(3)
        for target in pool:
            target.healthy = False
        self.assertEqual(set(self.picks(self.build(pool), 10)), {None})

    def test_all_excluded(self: Any) -> None:
        """With every available target excluded the pick is None."""
        pool = targets(3)
        pool[0].ejected = True
        self.assertEqual(set(self.picks(self.build(pool), 10, pool[1:])), {None})

    def test_no_targets(self: Any) -> None:
        """A balancer over no targets picks None."""
        self.assertIsNone(self.build([]).pick(request()))

    def test_single_target(self: Any) -> None:
        """With one target, it is always the pick."""
        pool = targets(1)
        self.assertEqual(set(self.picks(self.build(pool), 20)), {pool[0]})

    def test_follows_availability(self: Any) -> None:
        """A target going down between picks is skipped, and used again once back."""
        pool = targets(3)
        balancer = self.build(pool)
        self.picks(balancer, 5)
        pool[1].healthy = False
        self.assertNotIn(pool[1], self.picks(balancer, 200))
        pool[1].healthy = True
        self.assertIn(pool[1], self.picks(balancer, 200))


class RoundRobinTests(BalancerContract, SynchronousTestCase):
    """The round_robin balancer."""

    name = "round_robin"
    balancer_class = RoundRobin

    def test_in_turn(self) -> None:
        """Targets are chosen in turn."""
        pool = targets(3)
        self.assertEqual(self.picks(self.build(pool), 6), pool + pool)

    def test_even(self) -> None:
        """3000 picks over 3 targets give each 1000, within 1%."""
        counts = Counter(self.picks(self.build(targets(3)), 3000))
        for count in counts.values():
            self.assertApproximates(count, 1000, 10)

    def test_ignores_weights(self) -> None:
        """Weights do not change the turns."""
        pool = weighted(5, 1)
        self.assertEqual(self.picks(self.build(pool), 4), pool + pool)


class WeightedRoundRobinTests(BalancerContract, SynchronousTestCase):
    """The weighted_round_robin balancer."""

    name = "weighted_round_robin"
    balancer_class = WeightedRoundRobin

    def letters(self, pool: Sequence[Target], picks: Sequence[Optional[ITarget]]) -> str:
        return "".join("abcdefgh"[pool.index(target)] for target in picks)

    def test_nginx_sequence(self) -> None:
        """Weights 5:1:1 give nginx's smooth a a b a c a a, cycle after cycle."""
        pool = weighted(5, 1, 1)
        self.assertEqual(self.letters(pool, self.picks(self.build(pool), 14)), "aabacaa" * 2)

    def test_large_weights(self) -> None:
        """Weights too large for a precomputed cycle give the same sequence."""
        pool = weighted(5 * SCHEDULE_MAX, SCHEDULE_MAX, SCHEDULE_MAX)
        self.assertEqual(self.letters(pool, self.picks(self.build(pool), 7)), "aabacaa")

    def test_sequence_without_unavailable(self) -> None:
        """An unavailable target is left out: 5:1:(1 down) gives nginx's 5:1 sequence."""
        pool = weighted(5, 1, 1)
        pool[2].healthy = False
        self.assertEqual(self.letters(pool, self.picks(self.build(pool), 12)), "aaabaa" * 2)

    def test_proportions_after_failure(self) -> None:
        """A target failing mid-cycle leaves the others their proportions."""
        pool = weighted(5, 1, 1)
        balancer = self.build(pool)
        self.picks(balancer, 3)
        pool[2].ejected = True
        counts = Counter(self.picks(balancer, 600))
        self.assertApproximates(counts[pool[0]], 500, 6)
        self.assertApproximates(counts[pool[1]], 100, 6)

    def test_retry_keeps_sequence(self) -> None:
        """A pick with an exclusion (a retry) does not shift the others' sequence."""
        pool = weighted(5, 1, 1)
        balancer = self.build(pool)
        first = self.picks(balancer, 3)
        self.assertNotEqual(balancer.pick(request(), [pool[0]]), pool[0])
        self.assertEqual(self.letters(pool, first + self.picks(balancer, 4)), "aabacaa")


class LeastRequestTests(BalancerContract, SynchronousTestCase):
    """The least_request balancer."""

    name = "least_request"
    balancer_class = LeastRequest

    def test_fewest_in_flight(self) -> None:
        """The target with the fewest requests in flight is picked."""
        pool = targets(3)
        pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 4, 1, 3
        self.assertEqual(set(self.picks(self.build(pool), 10)), {pool[1]})

    def test_relative_to_weight(self) -> None:
        """In-flight counts are divided by weight: 3 on weight 4 beats 1 on weight 1."""
        pool = weighted(1, 4)
        pool[0].in_flight, pool[1].in_flight = 1, 3
        self.assertIs(self.build(pool).pick(request()), pool[1])

    def test_tie_by_weight(self) -> None:
        """On an equal ratio the heavier target wins."""
        pool = weighted(1, 2)
        pool[0].in_flight, pool[1].in_flight = 1, 2
        self.assertEqual(set(self.picks(self.build(pool), 10)), {pool[1]})

    def test_idle_rotate(self) -> None:
        """Idle targets of equal weight take turns."""
        pool = targets(3)
        self.assertEqual(self.picks(self.build(pool), 6), pool + pool)

    def test_equals_rotate(self) -> None:
        """Equal targets alternate while another is busier."""
        pool = targets(3)
        pool[0].in_flight = 2
        self.assertEqual(self.picks(self.build(pool), 4), [pool[1], pool[2]] * 2)


class PowerOfTwoChoicesTests(BalancerContract, SynchronousTestCase):
    """The p2c balancer."""

    name = "p2c"
    balancer_class = PowerOfTwoChoices

    def build(self, pool: Sequence[Target], seed: int = 1) -> PowerOfTwoChoices:
        return PowerOfTwoChoices(upstream(pool, self.name), pool, Random(seed))

    def test_avoids_slow(self) -> None:
        """A target 20 ms slower than the others gets under 20% of 3000 picks."""
        pool = targets(3)
        for target in pool:
            target.ewma_latency = 0.010
        pool[0].ewma_latency = 0.030
        counts = Counter(self.picks(self.build(pool), 3000))
        self.assertLess(counts[pool[0]], 600)

    def test_load_counts(self) -> None:
        """Equal latency: the target with fewer in flight wins its pair."""
        pool = targets(2)
        for target in pool:
            target.record_latency(0.010)
        pool[0].in_flight = 5
        self.assertEqual(set(self.picks(self.build(pool), 50)), {pool[1]})

    def test_distinct_pair(self) -> None:
        """Two targets are always both compared: the better one always wins."""
        pool = targets(2)
        pool[0].record_latency(0.050)
        pool[1].record_latency(0.010)
        self.assertEqual(set(self.picks(self.build(pool), 50)), {pool[1]})

    def test_unsampled_not_flooded(self) -> None:
        """A target without a latency sample loses to an idler one, however slow."""
        pool = targets(2)
        pool[0].ewma_latency = 0.500
        pool[1].in_flight = 1
        self.assertEqual(set(self.picks(self.build(pool), 20)), {pool[0]})

    def test_unsampled_not_starved(self) -> None:
        """A target without a latency sample wins over a busier one, however fast."""
        pool = targets(2)
        pool[0].ewma_latency = 0.001
        pool[0].in_flight = 1
        self.assertEqual(set(self.picks(self.build(pool), 20)), {pool[1]})

    def test_seeded(self) -> None:
        """The same seed gives the same picks."""
        pool = targets(5)
        self.assertEqual(self.picks(self.build(pool, 7), 50), self.picks(self.build(pool, 7), 50))


class WeightedRandomTests(BalancerContract, SynchronousTestCase):
    """The random balancer."""

    name = "random"
    balancer_class = WeightedRandom

    def build(self, pool: Sequence[Target], seed: int = 1) -> WeightedRandom:
        return WeightedRandom(upstream(pool, self.name), pool, Random(seed))

    def test_weights(self) -> None:
        """Weights 3:1 give about 3000 and 1000 of 4000 picks."""
        pool = weighted(3, 1)
        counts = Counter(self.picks(self.build(pool), 4000))
        self.assertApproximates(counts[pool[0]], 3000, 150)

    def test_weights_without_unavailable(self) -> None:
        """With the heaviest target down, the others keep their proportions."""
        pool = weighted(4, 1, 3)
        pool[0].healthy = False
        counts = Counter(self.picks(self.build(pool), 4000))
        self.assertApproximates(counts[pool[2]], 3000, 150)

    def test_seeded(self) -> None:
        """The same seed gives the same picks."""
        pool = weighted(1, 2, 3)
        self.assertEqual(self.picks(self.build(pool, 3), 50), self.picks(self.build(pool, 3), 50))


class ConsistentHashTests(BalancerContract, SynchronousTestCase):
    """The hash balancer."""

    name = "hash"
    balancer_class = ConsistentHash

    def ring(self, pool: Sequence[Target], key: str = "path") -> ConsistentHash:
        return ConsistentHash(upstream(pool, hash_key=key), pool)

    def owners(self, balancer: ConsistentHash, count: int = 10000) -> list[Optional[ITarget]]:
        return [balancer.pick(request(path="/key/%d" % i)) for i in range(count)]

    def addresses(self, picks: Sequence[Optional[ITarget]]) -> list[Optional[str]]:
        return [None if target is None else target.address for target in picks]

    def test_same_key(self) -> None:
        """The same key always goes to the same target."""
        balancer = self.ring(targets(5), "ip")
        self.assertEqual(
            len({balancer.pick(request(client_host="198.51.100.7")) for _ in range(50)}), 1
        )

    def test_spread(self) -> None:
        """10,000 keys spread over 10 targets, none far from 1000."""
        for count in Counter(self.owners(self.ring(targets(10)))).values():
            self.assertApproximates(count, 1000, 250)

    def test_weights(self) -> None:
        """A target of weight 3 gets about three times the keys of one of weight 1."""
        pool = weighted(3, 1)
        counts = Counter(self.owners(self.ring(pool)))
        self.assertApproximates(counts[pool[0]], 7500, 500)

    def test_removal_moves_few(self) -> None:
        """Removing one of 10 targets moves at most 1.5/10 of 10,000 keys."""
        before = self.addresses(self.owners(self.ring(targets(10))))
        after = self.addresses(self.owners(self.ring(targets(9))))
        moved = sum(1 for old, new in zip(before, after, strict=True) if old != new)
        self.assertLessEqual(moved, 1500)

    def test_unavailable_moves_only_its_keys(self) -> None:
        """Keys of an unavailable target move, to where removing it would put them; no others."""
        pool = targets(10)
        balancer = self.ring(pool)
        before = self.addresses(self.owners(balancer))
        pool[9].healthy = False
        during = self.addresses(self.owners(balancer))
        without = self.addresses(self.owners(self.ring(targets(9))))
        self.assertEqual(during, without)
        for old, new in zip(before, during, strict=True):
            if old != pool[9].address:
                self.assertEqual(old, new)

    def test_excluded_walks_on(self) -> None:
        """A retry of a key goes to the next target on the ring, every time."""
        pool = targets(5)
        balancer = self.ring(pool, "ip")
        key = request(client_host="198.51.100.7")
        first = balancer.pick(key)
        assert first is not None
        retries = {balancer.pick(key, [first]) for _ in range(10)}
        self.assertEqual(len(retries), 1)
        self.assertNotIn(first, retries)

    def test_missing_key_round_robin(self) -> None:
        """Requests without the key are balanced round robin."""
        pool = targets(3)
        balancer = self.ring(pool, "header:x-user")
        self.assertEqual([balancer.pick(request()) for _ in range(6)], pool + pool)

    def test_empty_key_round_robin(self) -> None:
        """An empty key (a TCP connection's path) is balanced round robin."""
        pool = targets(3)
        balancer = self.ring(pool, "path")
        self.assertEqual([balancer.pick(request(path="")) for _ in range(6)], pool + pool)

    def test_no_request_round_robin(self) -> None:
        """A pick without a request is round robin."""
        pool = targets(3)
        balancer = self.ring(pool)
        self.assertEqual([balancer.pick(None) for _ in range(6)], pool + pool)

    def test_key_kinds(self) -> None:
        """Each hash_key kind hashes its value alone: alike values, alike targets."""
        pool = targets(10)
        by_ip = self.ring(pool, "ip")
        for value in ("alice", "bob", "carol", "dave"):
            expected = by_ip.pick(request(client_host=value))
            raw_cookie = b"a=1; session=" + value.encode()
            requests = {
                "path": request(path=value),
                "header:x-user": request(headers=Headers([(b"X-User", value.encode())])),
                "cookie:session": request(headers=Headers([(b"Cookie", raw_cookie)])),
                "query:user": request(query="a=1&user=" + value),
            }
            for key, each in requests.items():
                self.assertIs(self.ring(pool, key).pick(each), expected, key)

    def test_stable_hash(self) -> None:
        """The ring's hash is fixed, not Python's per-process salted hash()."""
        self.assertEqual(hash64("10.0.0.1:80#0"), 0x1CE1FCBEAF0CB478)


class PluginRegistryTests(SynchronousTestCase):
    """Balancers found through Twisted's plugin system."""

    def test_built_in_registered(self) -> None:
        """Every built-in balancer is found as a plugin."""
        self.assertTrue(set(BUILT_IN) <= set(balancer_factories()))

    def test_factories_provide_interface(self) -> None:
        """Every balancer plugin provides IBalancerFactory and builds an IBalancer."""
        pool = targets(2)
        for name, factory in balancer_factories().items():
            verifyObject(IBalancerFactory, factory)
            self.assertEqual(factory.name, name)
            verifyObject(IBalancer, factory.build(upstream(pool, name), pool))


class TargetTests(SynchronousTestCase):
    """Target state."""

    def test_provides_interface(self) -> None:
        """Target provides ITarget."""
        verifyObject(ITarget, targets(1)[0])

    def test_latency_average(self) -> None:
        """The first sample sets the average; later ones move it by EWMA."""
        target = targets(1)[0]
        target.record_latency(1.0)
        self.assertEqual(target.ewma_latency, 1.0)
        target.record_latency(2.0)
        self.assertAlmostEqual(target.ewma_latency, 1.2)

    def test_ipv6_address(self) -> None:
        """An IPv6 target's address is bracketed."""
        self.assertEqual(Target(TargetConfig("::1", 80)).address, "[::1]:80")
