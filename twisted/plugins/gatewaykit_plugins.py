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
