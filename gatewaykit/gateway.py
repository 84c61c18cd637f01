"""
One configuration made live: upstreams, routers per listener and the route
actions, and the dispatch of each request to its route.

Listeners hold a reference to the current L{Gateway}; a reload builds a new
one and swaps it in, while requests already dispatched keep the one they
started on.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gatewaykit.accesslog import AccessLog
from gatewaykit.actions.local import Redirect, Respond
from gatewaykit.config.model import Config, RouteConfig
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.forwarding import UpstreamHeadBuilder
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IRouteAction, IStateStore
from gatewaykit.plugins import balancer_factories, policy_factories
from gatewaykit.policies.chain import PolicyChain, PolicyContext
from gatewaykit.policies.deprecation import deprecation_notice
from gatewaykit.routing import MethodNotAllowed, NoRoute, Router
from gatewaykit.state import open_store
from gatewaykit.upstream.cluster import Upstream
from gatewaykit.upstream.mirror import MirrorAction
from gatewaykit.upstream.proxy import ProxyAction
from gatewaykit.upstream.split import SplitAction

log = Logger()


class Route:
    """A route made live: its config and its action."""

    __slots__ = ("config", "name", "action")

    def __init__(self, config: RouteConfig, action: IRouteAction) -> None:
        self.config = config
        self.name = config.name
        self.action = action


class Gateway:
    """The live form of one L{Config}."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        access_log: Optional[AccessLog] = None,
        store: Optional[IStateStore] = None,
        policy_types: Optional[Mapping[str, IPolicyFactory]] = None,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.in_flight = 0  # requests dispatched here and not finished
        self._retired: Optional[Deferred[None]] = None
        self.reactor = reactor
        self.limits = config.gateway.limits
        self.trusted_proxies = config.gateway.trusted_proxies
        self.node = config.gateway.node
        self.via = b"1.1 " + self.node.encode("ascii", "replace")
        self.access_log = access_log
        self._owns_store = store is None
        self.store: IStateStore = (
            open_store(config.gateway.redis, reactor) if store is None else store
        )
        self.policies = self._policies(config, reactor, policy_types)
        factories = balancer_factories()
        self.upstreams = {
            name: Upstream(upstream, reactor, factories[upstream.balancer], self.store)
            for name, upstream in config.upstreams.items()
        }
        self._head_builder = UpstreamHeadBuilder(self.node, config.gateway.trusted_proxies)
        entries: dict[str, list[tuple[RouteConfig, Route]]] = {
            name: []
            for name, listener in config.listeners.items()
            if listener.protocol in ("http", "https")
        }
        for route_config in config.routes:
            action = self._action(route_config)
            chain = [self.policies[name] for name in route_config.policies]
            notice = deprecation_notice(route_config)
            if notice is not None:
                # First, so that answers of the route's own policies carry it.
                chain.insert(0, notice)
            if chain:
                action = PolicyChain(chain, action)
            route = Route(route_config, action)
            for listener in route_config.listeners:
                entries[listener].append((route_config, route))
        self.routers = {name: Router(routes) for name, routes in entries.items()}

    def _policies(
        self, config: Config, reactor: Any, types: Optional[Mapping[str, IPolicyFactory]]
    ) -> dict[str, IPolicy]:
        if not config.policies:
            return {}
        factories = policy_factories() if types is None else types
        context = PolicyContext(reactor, self.store, config)
        return {
            name: factories[policy.type].build(name, policy.options, context)
            for name, policy in config.policies.items()
        }

    def _proxy(self, route: RouteConfig, upstream: str) -> ProxyAction:
        return ProxyAction(
            self.upstreams[upstream],
            self._head_builder,
            self.reactor,
            self.via,
            route.timeout,
            self.metrics,
            route.websocket,
        )

    def _action(self, route: RouteConfig) -> IRouteAction:
        if route.mirror is not None:
            return MirrorAction(
                route.name,
                route.mirror,
                self.upstreams[route.mirror.upstream],
                self._head_builder,
                self.reactor,
                self._unmirrored_action(route),
                self.metrics,
            )
        return self._unmirrored_action(route)

    def _unmirrored_action(self, route: RouteConfig) -> IRouteAction:
        if route.upstream is not None:
            return self._proxy(route, route.upstream)
        if route.split:
            sides = [(self._proxy(route, side.upstream), side.weight) for side in route.split]
            return SplitAction(sides, route.split_by)
        if route.respond is not None:
            return Respond(route.respond)
        if route.redirect is not None:
            return Redirect(route.redirect)
        if route.static is not None:
            from gatewaykit.actions.static import StaticFiles

            return StaticFiles(route.static, self.reactor)
        raise ValueError(f"route {route.name} has no action")

    def dispatch(self, stream: Any) -> None:
        """Route one request and hand it to its route's action."""
        stream.gateway = self
        self.in_flight += 1
        request = stream.request
        try:
            route = self.routers[request.listener].match(request)
        except NoRoute:
            stream.send_error(
                GatewayError(404, "no_route", f"no route for {request.method} {request.path}")
            )
            return
        except MethodNotAllowed as exc:
            allow = ", ".join(exc.allow).encode("ascii")
            stream.send_error(
                GatewayError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here",
                    headers=((b"Allow", allow),),
                )
            )
            return
        request.route = route.name
        try:
            route.action.handle(request, stream)
        except Exception:
            log.failure("route {route} failed on {request!r}", route=route.name, request=request)
            if not stream.finished:
                stream.send_error(
                    GatewayError(500, "internal_error", "the gateway failed on this request")
                )

    def stream_finished(self, stream: Any) -> None:
        """Account for one answered request."""
        if self.access_log is not None:
            self.access_log.log(stream)
        if self.metrics is not None:
            self.metrics.request_finished(stream)
        if stream.gateway is self:
            self.in_flight -= 1
            if self.in_flight == 0 and self._retired is not None:
                self._finish_retiring()

    def start(self) -> None:
        """Start what runs in the background (health checks)."""
        for upstream in self.upstreams.values():
            upstream.start()

    def adopt_state(self, previous: Gateway) -> None:
        """
        Carry over what the previous version learnt about targets that are
        still here (same upstream name and address): health, ejection,
        latency. Call before L{start}.
        """
        for name, upstream in self.upstreams.items():
            old = previous.upstreams.get(name)
            if old is None:
                continue
            for target in upstream.targets:
                before = old.target_at(target.address)
                if before is not None:
                    target.adopt(before)

    def retire(self) -> Deferred[None]:
        """
        Stop taking part (health checks stop now); close what this version
        holds once its requests in flight have finished. Fires then.
        """
        if self._retired is None:
            self._retired = Deferred()
            for upstream in self.upstreams.values():
                upstream.stop_checks()
            if self.in_flight == 0:
                self._finish_retiring()
        return self._retired

    def _finish_retiring(self) -> None:
        self.close()
        retired = self._retired
        assert retired is not None
        if not retired.called:
            retired.callback(None)

    def close(self) -> None:
        """Stop background work and release idle upstream connections."""
        for upstream in self.upstreams.values():
            upstream.close()
        for policy in self.policies.values():
            close = getattr(policy, "close", None)
            if close is not None:
                close()
        if self._owns_store:
            self.store.close()
