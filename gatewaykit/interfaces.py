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


class IResponseStream(Interface):
    """
    One request's way back to its client, whatever the protocol (HTTP/1.1
    today). Route actions and policies write responses through it;
    policies may wrap it (L{gatewaykit.http.stream.StreamWrapper}) to see
    or change a response.
    """

    request = Attribute("The L{gatewaykit.http.message.Request} being answered.")
    head_sent = Attribute("C{bool}: whether the status line has gone out.")
    finished = Attribute("C{bool}: whether the response has ended.")
    lost = Attribute("C{bool}: whether the client went away.")
    handler = Attribute(
        "An object with C{stream_lost()}, told when the client goes away, or C{None}."
    )

    def write_head(
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        """Send the status line and fields (no framing fields)."""

    def write(data: bytes) -> None:
        """Send a piece of the body."""

    def finish() -> None:
        """End the response."""

    def abort() -> None:
        """End a response that cannot be completed (the connection closes)."""

    def respond(status: int, fields: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        """Send a whole response with a fixed body."""

    def send_error(error: Any) -> None:
        """Answer with a L{gatewaykit.http.errors.GatewayError}'s problem body."""

    def attach_body_sink(sink: Any) -> None:
        """Deliver the request body to C{sink}."""

    def registerProducer(producer: Any, streaming: bool) -> None:
        """As C{IConsumer.registerProducer}."""

    def unregisterProducer() -> None:
        """As C{IConsumer.unregisterProducer}."""


class IPolicy(Interface):
    """
    One step of a route's policy chain (SPEC section 8): it sees each request
    before the route's action and either lets it go on or answers it.
    """

    name = Attribute("C{str}: the policy's name under C{policies:} in the config.")

    def on_request(call: Any) -> Any:
        """
        Look at C{call} (a L{gatewaykit.policies.chain.PolicyCall}: the
        request, the identity other policies established, the session) and
        return C{None} to let the request go on, an answer (a
        L{gatewaykit.http.errors.GatewayError}, or a
        L{gatewaykit.http.message.Response}) to send instead, or a
        C{Deferred} firing with either. To act on the response, register a
        hook with C{call.on_response} or wrap the stream with
        C{call.wrap_stream}.

        A policy may also have a C{close()} method (not part of this
        interface, so optional): it is called when the config version that
        built the policy is retired (shutdown, reload).
        """


class IPolicyFactory(Interface):
    """
    A kind of policy: what a C{policies.NAME.type} names. Registered as a
    plugin (C{IPlugin} + C{IPolicyFactory}) in a C{twisted/plugins} folder.
    """

    name = Attribute("C{str}: the type name used in configs, e.g. C{rate_limit}.")
    options = Attribute(
        "A L{gatewaykit.config.schema.Section} checking the policy's keys (so "
        "mistakes are reported with line:col), or C{None} to receive the keys "
        "as a plain C{dict}."
    )

    def build(name: str, options: Any, context: Any) -> IPolicy:
        """
        Make the policy C{name} from its checked C{options}. C{context} is a
        L{gatewaykit.policies.chain.PolicyContext}: the reactor, the state
        store, the gateway's settings.
        """


class IStateStore(Interface):
    """
    State shared by every worker process and gateway node: rate limits,
    sessions, sticky affinity. In-process when no Redis is configured.
    Every call returns a C{Deferred} that fires within the store's timeout
    (or fails with L{gatewaykit.state.StoreUnavailable}).
    """

    shared = Attribute("C{bool}: whether other processes see the same state.")

    def rate_limit(
        key: str, limit: int, window: float, burst: int, algorithm: str
    ) -> Any:
        """
        Decide atomically whether one more request under C{key} is allowed
        (C{algorithm}: C{gcra}, C{sliding_window} or C{fixed_window}).
        Fires with a L{gatewaykit.state.Decision}.
        """

    def get(key: str) -> Any:
        """Fires with the bytes stored under C{key}, or C{None}."""

    def set(key: str, value: bytes, ttl: float) -> Any:
        """Store C{value} under C{key} for C{ttl} seconds."""

    def delete(key: str) -> Any:
        """Remove C{key}."""

    def close() -> Any:
        """Release connections (on shutdown)."""
