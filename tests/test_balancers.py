"""
Tests for the built-in balancers, targets and the plugin registry.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config.model import TargetConfig
from gatewaykit.interfaces import IBalancer, IBalancerFactory, ITarget
from gatewaykit.plugins import balancer_factories
from gatewaykit.upstream.balancers import RoundRobin
from gatewaykit.upstream.target import Target


def targets(count: int) -> list[Target]:
    return [Target(TargetConfig("10.0.0.%d" % i, 80)) for i in range(count)]


class RoundRobinTests(SynchronousTestCase):
    """The round_robin balancer."""

    def test_provides_interface(self):
        """RoundRobin provides IBalancer."""
        verifyObject(IBalancer, RoundRobin(None, targets(1)))

    def test_in_turn(self):
        """Targets are chosen in turn."""
        pool = targets(3)
        balancer = RoundRobin(None, pool)
        self.assertEqual([balancer.pick(None) for _ in range(6)], pool + pool)

    def test_skips_unavailable(self):
        """Unhealthy and ejected targets are skipped."""
        pool = targets(3)
        pool[0].healthy = False
        pool[1].ejected = True
        balancer = RoundRobin(None, pool)
        self.assertEqual({balancer.pick(None) for _ in range(4)}, {pool[2]})

    def test_skips_excluded(self):
        """Targets already tried are skipped."""
        pool = targets(2)
        self.assertIs(RoundRobin(None, pool).pick(None, exclude=[pool[0]]), pool[1])

    def test_none_left(self):
        """With no available target the pick is None."""
        pool = targets(2)
        for target in pool:
            target.healthy = False
        self.assertIsNone(RoundRobin(None, pool).pick(None))


class TargetTests(SynchronousTestCase):
    """Target state."""

    def test_provides_interface(self):
        """Target provides ITarget."""
        verifyObject(ITarget, targets(1)[0])

    def test_latency_average(self):
        """The first sample sets the average; later ones move it by EWMA."""
        target = targets(1)[0]
        target.record_latency(1.0)
        self.assertEqual(target.ewma_latency, 1.0)
        target.record_latency(2.0)
        self.assertAlmostEqual(target.ewma_latency, 1.2)

    def test_ipv6_address(self):
        """An IPv6 target's address is bracketed."""
        self.assertEqual(Target(TargetConfig("::1", 80)).address, "[::1]:80")


class PluginRegistryTests(SynchronousTestCase):
    """Balancers found through Twisted's plugin system."""

    def test_round_robin_registered(self):
        """round_robin is found as a plugin providing IBalancerFactory."""
        factory = balancer_factories()["round_robin"]
        verifyObject(IBalancerFactory, factory)
        self.assertIsInstance(factory.build(None, targets(1)), RoundRobin)
