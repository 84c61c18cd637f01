"""
gatewaykit's twistd plugin and built-in balancer plugins.

Only names and lazy module paths live here: Twisted imports this file while
scanning for plugins, so it must stay cheap and must not touch the reactor.
"""

from twisted.application.service import ServiceMaker

from gatewaykit.plugins import LazyBalancerFactory

gatewaykit = ServiceMaker(
    "gatewaykit",
    "gatewaykit.tap",
    "Reverse proxy, load balancer and API gateway.",
    "gatewaykit",
)

round_robin = LazyBalancerFactory(
    "round_robin", "gatewaykit.upstream.balancers:RoundRobin"
)
weighted_round_robin = LazyBalancerFactory(
    "weighted_round_robin", "gatewaykit.upstream.balancers:WeightedRoundRobin"
)
least_request = LazyBalancerFactory(
    "least_request", "gatewaykit.upstream.balancers:LeastRequest"
)
p2c = LazyBalancerFactory("p2c", "gatewaykit.upstream.balancers:PowerOfTwoChoices")
# Not named random and hash: those would shadow the builtins in this module.
weighted_random = LazyBalancerFactory(
    "random", "gatewaykit.upstream.balancers:WeightedRandom"
)
consistent_hash = LazyBalancerFactory(
    "hash", "gatewaykit.upstream.balancers:ConsistentHash"
)
