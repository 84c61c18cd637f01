"""
Policies: the steps of a route's chain (authentication, authorization, rate
limits, sessions, ...). Each type is a plugin providing
L{gatewaykit.interfaces.IPolicyFactory}; L{gatewaykit.policies.chain} runs them.
"""
