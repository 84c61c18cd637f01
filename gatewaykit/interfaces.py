"""
The extension points of gatewaykit, as zope interfaces.

Third-party packages provide these through Twisted's plugin system (a module
in their own ``twisted/plugins/`` folder holding an object that provides
``IPlugin`` and one of the factory interfaces below). The built-in balancers
are registered exactly the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Optional, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from gatewaykit.config.model import UpstreamConfig
    from gatewaykit.http.message import Request


class ITarget(Interface):
    """
    One address of an upstream, with the live state balancers choose on.
    """

    address = Attribute("C{str}: C{host:port} as written in the config.")
    host = Attribute("C{str}: host name or IP address to connect to.")
    port = Attribute("C{int}: TCP port.")
    weight = Attribute("C{int}: relative weight from the config, at least 1.")
    available = Attribute(
        "C{bool}: whether the target may be chosen (healthy and not ejected)."
    )
    in_flight = Attribute("C{int}: requests sent to this target not yet answered.")
    ewma_latency = Attribute(
        "C{float}: exponentially weighted moving average of response latency "
        "in seconds (0.0 before the first response)."
    )
    healthy = Attribute("C{bool}: whether active health checks pass (C{True} without checks).")
    ejected = Attribute("C{bool}: whether passive outlier detection has ejected it for now.")
    requests = Attribute("C{int}: requests sent to this target so far.")
    failures = Attribute(
        "C{int}: requests that failed on this target (connect errors, resets, "
        "invalid responses) so far."
    )


class IBalancer(Interface):
    """
    Chooses the target of one upstream for each request.
    """

    def pick(
        request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        """
        Choose an available target for C{request}, skipping those in
        C{exclude} (targets already tried for this request).

        @param request: the request being proxied, or C{None} when the choice
            is made without one (a TCP connection).
        @return: the chosen target, or C{None} when no target is left.
        """


class IBalancerFactory(Interface):
    """
    A named kind of balancer; what config's C{upstreams.NAME.balancer} names.
    """

    name = Attribute("C{str}: the name used in configs, e.g. C{round_robin}.")

    def build(upstream: UpstreamConfig, targets: Sequence[ITarget]) -> IBalancer:
        """
        Make a balancer over C{targets} for the upstream C{upstream}.
        """


class IRouteAction(Interface):
    """
    What a matched route does with a request: proxy, serve files, redirect,
    respond.
    """

    def handle(request: Request, stream: Any) -> None:
        """
        Answer C{request} on C{stream} (an L{gatewaykit.http.stream} downstream
        stream), now or later.
        """
