"""
gatewaykit's twistd plugin and built-in balancer plugins.

Only names and lazy module paths live here: Twisted imports this file while
scanning for plugins, so it must stay cheap and must not touch the reactor.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

from gatewaykit.plugins import LazyBalancerFactory, LazyPolicyFactory

gatewaykit = ServiceMaker(
    "gatewaykit",
    "gatewaykit.tap",
    "Reverse proxy, load balancer and API gateway.",
    "gatewaykit",
)

# What `twistd gatewaykit` installs unless --reactor names another.
gatewaykit_reactor = Reactor(
    "gatewaykit", "gatewaykit.reactor", "epoll without a log context per event (gatewaykit)"
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

# Policies (SPEC section 2, "policies"), registered like any third party's.
api_key = LazyPolicyFactory("api_key", "gatewaykit.policies.api_key:APIKeyFactory")
jwt = LazyPolicyFactory("jwt", "gatewaykit.policies.jwt:JWTFactory")
basic_auth = LazyPolicyFactory("basic_auth", "gatewaykit.policies.basic_auth:BasicAuthFactory")
forward_auth = LazyPolicyFactory(
    "forward_auth", "gatewaykit.policies.forward_auth:ForwardAuthFactory"
)
authorize = LazyPolicyFactory("authorize", "gatewaykit.policies.authorize:AuthorizeFactory")
ip_filter = LazyPolicyFactory("ip_filter", "gatewaykit.policies.ip_filter:IPFilterFactory")
cors = LazyPolicyFactory("cors", "gatewaykit.policies.cors:CORSFactory")
rate_limit = LazyPolicyFactory("rate_limit", "gatewaykit.policies.rate_limit:RateLimitFactory")
session = LazyPolicyFactory("session", "gatewaykit.policies.session:SessionFactory")
headers = LazyPolicyFactory("headers", "gatewaykit.policies.headers:HeadersFactory")
rewrite = LazyPolicyFactory("rewrite", "gatewaykit.policies.rewrite:RewriteFactory")
request_filter = LazyPolicyFactory(
    "request_filter", "gatewaykit.policies.request_filter:RequestFilterFactory"
)
cache = LazyPolicyFactory("cache", "gatewaykit.policies.cache:CacheFactory")
compress = LazyPolicyFactory("compress", "gatewaykit.policies.compress:CompressFactory")
