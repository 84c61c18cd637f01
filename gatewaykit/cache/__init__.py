"""
The HTTP cache behind the C{cache} policy (RFC 9111, as a shared cache):
what may be stored and for how long, the keys, the in-memory and Redis
tiers, and answering requests from stored responses.

The policy itself (C{gatewaykit.policies.cache}) decides, per request,
which of these pieces to use; see C{docs/caching.md}.
"""
