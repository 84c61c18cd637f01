"""
The Prometheus metrics of SPEC section 10, in a registry of their own.

Two kinds of families:

 - counted on the hot path, per request and per upstream response
   (L{Metrics.request_finished}, L{Metrics.upstream_response}): the
   labelled children are cached by their label values, so a request costs
   a dict lookup, an C{inc} and an C{observe};
 - read from live state at scrape time (L{LiveCollector}): target health,
   in-flight counts, connections, rate-limit decisions, cache, TCP bytes
   and reloads cost nothing per request.

L{merge_metrics} sums the expositions of several worker processes into one.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The exposition format served on C{/metrics}."""

# Finer than prometheus-client's defaults at the low end: a gateway answers
# in well under 5 ms when its upstream does.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

FAMILIES = {
    "gatewaykit_requests_total": ("listener", "route", "upstream", "code"),
    "gatewaykit_request_duration_seconds": ("route",),
    "gatewaykit_upstream_request_duration_seconds": ("upstream",),
    "gatewaykit_upstream_target_healthy": ("upstream", "target"),
    "gatewaykit_upstream_target_ejected": ("upstream", "target"),
    "gatewaykit_upstream_in_flight": ("upstream", "target"),
    "gatewaykit_connections_active": ("listener",),
    "gatewaykit_ratelimit_decisions_total": ("policy", "result"),
    "gatewaykit_cache_lookups_total": ("result",),
    "gatewaykit_cache_bytes": (),
    "gatewaykit_tcp_bytes_total": ("listener", "direction"),
    "gatewaykit_websocket_bytes_total": ("listener", "direction"),
    "gatewaykit_config_reloads_total": ("result",),
}
"""Every family gatewaykit exports, with its labels (sample names as scraped)."""


class Metrics:
    """
    The hot-path metrics of one process and the registry every family is
    exposed from.

    The gateway calls L{request_finished} for every answered request and the
    proxy L{upstream_response} for every response head from a target.
    """

    def __init__(self, clock: Any, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self.live: Optional[Callable[[], Mapping[str, Any]]] = None
        """What the scrape-time families read (L{LocalState.live}); unset: nothing."""
        self.carried = CarriedCounters()
        """Counters of objects reloads replace, kept cumulative (one per process)."""
        self.requests = HotCounter(
            "gatewaykit_requests",
            "Requests answered, by listener, route, upstream and status code.",
            ("listener", "route", "upstream", "code"),
        )
        self.request_duration = HotHistogram(
            "gatewaykit_request_duration_seconds",
            "Time from a request's head arriving to its response's end, by route.",
            ("route",),
            DURATION_BUCKETS,
        )
        self.upstream_duration = HotHistogram(
            "gatewaykit_upstream_request_duration_seconds",
            "Time from a request sent upstream to the response head, by upstream.",
            ("upstream",),
            DURATION_BUCKETS,
        )
        self.mirrors = Counter(
            "gatewaykit_mirror_requests",
            "Copies of requests for a route's mirror, by result: ok (the shadow"
            " answered), error, dropped (max_in_flight reached), too_large.",
            ("route", "upstream", "result"),
            registry=None,
        )
        self.registry.register(
            _WithoutCreated(
                (self.requests, self.request_duration, self.upstream_duration, self.mirrors)
            )
        )
        self.registry.register(LiveCollector(self._read_live))
        self._upstream_children: dict[str, Any] = {}
        # Children by (listener, route, proxied, chosen upstream, code), kept
        # per Gateway: which upstream a route proxies to is a fact of one
        # config version, unless its action chose one (a split).
        self._per_gateway: weakref.WeakKeyDictionary[Any, _GatewayLabels] = (
            weakref.WeakKeyDictionary()
        )
        self._no_gateway = _GatewayLabels(None, self)
        self._gateway: Any = None
        self._labels = self._no_gateway

    def request_finished(self, stream: Any) -> None:
        """Count one answered request and observe its duration."""
        gateway = stream.gateway
        if gateway is not self._gateway:
            self._switch(gateway)
        request = stream.request
        key = (
            request.listener,
            request.route,
            stream.upstream_address != "",
            request.upstream,
            stream.status,
        )
        children = self._labels.children.get(key)
        if children is None:
            children = self._labels.add(key)
        count, durations = children
        count.value += 1
        durations.observe(self._clock.seconds() - request.received_at)

    def upstream_response(self, upstream: str, seconds: float) -> None:
        """Observe the time one target took to send a response head."""
        child = self._upstream_children.get(upstream)
        if child is None:
            child = self._upstream_children[upstream] = self.upstream_duration.labels(upstream)
        child.observe(seconds)

    def mirror_result(self, route: str, upstream: str, result: str) -> None:
        """Count one mirrored copy of a request of C{route} and how it went."""
        self.mirrors.labels(route, upstream, result).inc()

    def _read_live(self) -> Mapping[str, Any]:
        return self.live() if self.live is not None else {}

    def _switch(self, gateway: Any) -> None:
        self._gateway = gateway
        if gateway is None:
            self._labels = self._no_gateway
            return
        labels = self._per_gateway.get(gateway)
        if labels is None:
            labels = self._per_gateway[gateway] = _GatewayLabels(gateway, self)
        self._labels = labels

    def requests_by_route(self) -> dict[str, dict[str, int]]:
        """Requests so far by route name (C{""}: no route) and status code."""
        routes: dict[str, dict[str, int]] = {}
        for (_, route, _, code), count in self.requests.children.items():
            codes = routes.setdefault(route, {})
            codes[code] = codes.get(code, 0) + count.value
        return routes

    def text(self) -> bytes:
        """Every family in the Prometheus text format."""
        return generate_latest(self.registry)


class CarriedCounters:
    """
    Counters read from objects that a reload replaces (policies), kept
    cumulative across the swap: when the object under a key changes, the
    old one's final counts are added to a base the new one's add to.
    """

    def __init__(self) -> None:
        self._base: dict[Any, dict[str, float]] = {}
        self._last: dict[Any, Any] = {}

    def read(
        self, key: Any, owner: Any, counts: Callable[[Any], Mapping[str, float]]
    ) -> dict[str, float]:
        """The cumulative C{counts(owner)} under C{key}."""
        base = self._base.setdefault(key, {})
        previous = self._last.get(key)
        if previous is not None and previous is not owner:
            for name, value in counts(previous).items():
                base[name] = base.get(name, 0) + value
        self._last[key] = owner
        total = dict(base)
        for name, value in counts(owner).items():
            total[name] = total.get(name, 0) + value
        return total


class _WithoutCreated:
    """
    Collects C{metrics} without their C{_created} samples: in the text
    format Prometheus would store each as one more series (a timestamp per
    label set), doubling the scrape for nothing a dashboard uses.
    """

    def __init__(self, metrics: Iterable[Any]) -> None:
        self._metrics = tuple(metrics)

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            for family in metric.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


# -- the per-request families ----------------------------------------------------
#
# prometheus-client's own Counter and Histogram take a lock for every
# increment (for threads the gateway does not have): five lock round trips
# and a Python loop over the buckets per proxied request. These keep plain
# numbers, counted on the reactor thread, and build the same families when
# scraped (also on the reactor thread).


class _Count:
    """One labelled counter's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _Observations:
    """One labelled histogram's counts per bucket (not cumulative) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: the bucket "le" that value falls in.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class HotCounter:
    """A labelled counter family for the hot path; C{labels(...)} gives a child."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], _Count] = {}

    def labels(self, *values: str) -> _Count:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _Count()
        return child

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            family.add_metric(values, child.value)
        return [family]


class HotHistogram:
    """A labelled histogram family for the hot path; C{labels(...)} gives a child."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: Iterable[float],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = (*buckets, float("inf"))
        self._le = [floatToGoString(bound) for bound in self.bounds]
        self.children: dict[tuple[str, ...], _Observations] = {}

    def labels(self, *values: str) -> _Observations:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _Observations(self.bounds)
        return child

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            cumulative = []
            total = 0
            for le, count in zip(self._le, child.counts, strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(values, cumulative, child.sum)
        return [family]


class _GatewayLabels:
    """The cached children of the request families for one L{Gateway}."""

    def __init__(self, gateway: Any, metrics: Metrics) -> None:
        self.metrics = metrics
        self.children: dict[tuple, tuple[Any, Any]] = {}
        self.upstream_of: dict[str, str] = (
            {}
            if gateway is None
            else {route.name: route.upstream or "" for route in gateway.config.routes}
        )

    def add(self, key: tuple) -> tuple[Any, Any]:
        listener, route, proxied, chosen, status = key
        route = route or ""
        upstream = (chosen or self.upstream_of.get(route, "")) if proxied else ""
        metrics = self.metrics
        children = (
            metrics.requests.labels(listener, route, upstream, str(status)),
            metrics.request_duration.labels(route),
        )
        self.children[key] = children
        return children


# -- scrape time ---------------------------------------------------------------


class LiveCollector:
    """
    The families read from live state at scrape time, from the dict
    C{live()} returns (the shape of L{gatewaykit.admin.state.LocalState.live}).
    """

    def __init__(self, live: Callable[[], Mapping[str, Any]]) -> None:
        self._live = live

    def describe(self) -> list:
        # Families appear and go with config reloads: nothing to check upfront.
        return []

    def collect(self) -> Iterator[Metric]:
        return live_families(self._live())


def live_families(state: Mapping[str, Any]) -> Iterator[Metric]:
    """The scrape-time families for one C{live()} snapshot."""
    healthy = GaugeMetricFamily(
        "gatewaykit_upstream_target_healthy",
        "1 while the target passes its active health checks (1 without checks).",
        labels=("upstream", "target"),
    )
    ejected = GaugeMetricFamily(
        "gatewaykit_upstream_target_ejected",
        "1 while passive outlier detection keeps the target out of the choice.",
        labels=("upstream", "target"),
    )
    in_flight = GaugeMetricFamily(
        "gatewaykit_upstream_in_flight",
        "Requests and tunnels in progress on the target.",
        labels=("upstream", "target"),
    )
    for upstream in state.get("upstreams", ()):
        for target in upstream["targets"]:
            labels = (upstream["name"], target["address"])
            healthy.add_metric(labels, 1.0 if target["healthy"] else 0.0)
            ejected.add_metric(labels, 1.0 if target["ejected"] else 0.0)
            in_flight.add_metric(labels, target["in_flight"])
    yield from (healthy, ejected, in_flight)

    connections = GaugeMetricFamily(
        "gatewaykit_connections_active",
        "Client connections open on the listener.",
        labels=("listener",),
    )
    tcp_bytes = CounterMetricFamily(
        "gatewaykit_tcp_bytes",
        "Bytes relayed by a tcp listener: in from clients, out to them.",
        labels=("listener", "direction"),
    )
    websocket_bytes = CounterMetricFamily(
        "gatewaykit_websocket_bytes",
        "Bytes relayed by WebSocket tunnels of an http(s) listener: in from"
        " clients, out to them.",
        labels=("listener", "direction"),
    )
    for listener in state.get("listeners", ()):
        name = listener["name"]
        connections.add_metric((name,), listener["connections"])
        tunnelled = tcp_bytes if listener["protocol"] == "tcp" else websocket_bytes
        if "bytes_in" in listener:
            tunnelled.add_metric((name, "in"), listener["bytes_in"])
            tunnelled.add_metric((name, "out"), listener["bytes_out"])
    yield from (connections, tcp_bytes, websocket_bytes)

    decisions = CounterMetricFamily(
        "gatewaykit_ratelimit_decisions",
        "Rate-limit decisions: allowed, limited (429), degraded (made without the"
        " state store; also counted as allowed or limited).",
        labels=("policy", "result"),
    )
    for policy in state.get("rate_limits", ()):
        for result in ("allowed", "limited", "degraded"):
            decisions.add_metric((policy["policy"], result), policy[result])
    yield decisions

    filtered = CounterMetricFamily(
        "gatewaykit_request_filter_matches",
        "Requests a request_filter policy refused, by policy and rule.",
        labels=("policy", "rule"),
    )
    for policy in state.get("request_filters", ()):
        for rule, count in policy["matches"].items():
            filtered.add_metric((policy["policy"], rule), count)
    yield filtered

    cache = state.get("cache") or {}
    lookups = CounterMetricFamily(
        "gatewaykit_cache_lookups",
        "Cache lookups by result (hit, miss, stale, ...).",
        labels=("result",),
    )
    for result, count in sorted((cache.get("lookups") or {}).items()):
        lookups.add_metric((result,), count)
    yield lookups
    yield GaugeMetricFamily(
        "gatewaykit_cache_bytes", "Bytes held by the response cache.", cache.get("bytes", 0)
    )

    reloads = CounterMetricFamily(
        "gatewaykit_config_reloads",
        "Configuration reloads by result (ok, failed).",
        labels=("result",),
    )
    for result, count in sorted((state.get("reloads") or {}).items()):
        reloads.add_metric((result,), count)
    yield reloads


# -- several workers -----------------------------------------------------------

# How a family of several workers combines; any other is summed.
_MERGE: dict[str, Callable[[Iterable[float]], float]] = {
    # A target counts as healthy only if every worker sees it so, as ejected
    # if any worker ejected it.
    "gatewaykit_upstream_target_healthy": min,
    "gatewaykit_upstream_target_ejected": max,
    # Every worker counts the reloads the supervisor tells it to do.
    "gatewaykit_config_reloads": max,
}


def merge_metrics(
    expositions: Iterable[bytes], reloads: Optional[Mapping[str, float]] = None
) -> bytes:
    """
    One exposition summing those of several workers: counters, histograms
    and most gauges add up; target health takes the worst view; reload
    counts are not added (the largest is kept), or are C{reloads} (the
    supervisor's own counts) when given.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list[float]]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(key, []).append(sample.value)
    if reloads is not None:
        families["gatewaykit_config_reloads"] = Metric(
            "gatewaykit_config_reloads", "Configuration reloads by result (ok, failed).", "counter"
        )
        values["gatewaykit_config_reloads"] = {
            ("gatewaykit_config_reloads_total", (("result", result),)): [count]
            for result, count in sorted(reloads.items())
        }
    merged = []
    for name, family in families.items():
        for (sample_name, labels), seen in values[name].items():
            family.add_sample(sample_name, dict(labels), _MERGE.get(name, sum)(seen))
        merged.append(family)
    registry = CollectorRegistry()
    registry.register(_Fixed(merged))
    return generate_latest(registry)


class _Fixed:
    """A collector giving the same families every time."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
