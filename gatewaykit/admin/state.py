"""
What the admin API shows and does, read from (and done to) a running
L{GatewayService}.

L{LocalState} answers for the process it runs in. Every answer is a
C{Deferred} (or, for L{LocalState.config}, a plain dict) so that a parent
process can answer the same calls for several workers: it gathers their
answers and combines them with L{merge_status} and
L{gatewaykit.admin.metrics.merge_metrics}.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional

from twisted.internet import defer

from gatewaykit import __version__
from gatewaykit.admin.masking import masked_config
from gatewaykit.admin.metrics import Metrics, merge_metrics

_RATE_LIMIT_RESULTS = ("allowed", "limited", "degraded")


class Unavailable(Exception):
    """
    The gateway cannot do this: not at all yet (C{status} 501: no reload, no
    way to purge), or not now (503: no worker answered).
    """

    def __init__(self, message: str, status: int = 501) -> None:
        super().__init__(message)
        self.status = status


def _rate_limit_counts(policy: Any) -> dict[str, float]:
    return {result: getattr(policy, result) for result in _RATE_LIMIT_RESULTS}


def _cache_counts(policy: Any) -> dict[str, float]:
    return dict(policy.lookups)


def _is_rate_limit(policy: Any) -> bool:
    return all(isinstance(getattr(policy, r, None), int) for r in _RATE_LIMIT_RESULTS)


def _filter_counts(policy: Any) -> dict[str, float]:
    return dict(policy.matches)


def _is_request_filter(policy: Any) -> bool:
    return isinstance(getattr(policy, "matches", None), Mapping)


def _is_cache(policy: Any) -> bool:
    return isinstance(getattr(policy, "lookups", None), Mapping) and hasattr(policy, "bytes")


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class LocalState:
    """
    The admin API's view of the gateway running in this process.

    @param service: the L{GatewayService} (its C{gateway}, C{factories},
        C{ports}, C{config}, C{reloads}, C{started_at} and C{reload()}).
    @param metrics: the L{Metrics} the gateway counts requests in (default:
        the service's C{metrics}); its scrape-time families read L{live}.
    @param worker_id: this process's index among the workers.
    """

    def __init__(
        self,
        service: Any,
        metrics: Optional[Metrics] = None,
        clock: Any = None,
        worker_id: int = 0,
    ) -> None:
        self.service = service
        self._clock = clock if clock is not None else service.reactor
        if metrics is None:
            metrics = getattr(service, "metrics", None) or Metrics(self._clock)
        self.metrics = metrics
        metrics.live = self.live
        self.started_at = self._clock.seconds()
        self.worker_id = worker_id

    # -- reading -------------------------------------------------------------

    def status(self) -> defer.Deferred[dict[str, Any]]:
        """The whole status document of SPEC section 9 (C{GET /status})."""
        config = self.service.config
        started = getattr(self.service, "started_at", None) or self.started_at
        uptime = self._clock.seconds() - started
        live = self.live()
        connections = sum(listener["connections"] for listener in live["listeners"])
        status = {
            "node": config.gateway.node,
            "version": __version__,
            "config_digest": config.digest,
            "config_source": config.source,
            "uptime_seconds": round(uptime, 3),
            **live,
            "routes": self._routes(),
            "workers": [
                {
                    "id": self.worker_id,
                    "pid": os.getpid(),
                    "uptime_seconds": round(uptime, 3),
                    "connections": connections,
                    "rss_bytes": _rss_bytes(),
                }
            ],
        }
        return defer.succeed(status)

    def live(self) -> dict[str, Any]:
        """
        The state the scrape-time metrics read: listeners, upstreams, rate
        limits, cache and reloads.
        """
        gateway = self.service.gateway
        policies = gateway.policies if gateway is not None else {}
        return {
            "listeners": self._listeners(),
            "upstreams": (
                [upstream.status() for upstream in gateway.upstreams.values()]
                if gateway is not None
                else []
            ),
            "rate_limits": [
                {
                    "policy": name,
                    **self.metrics.carried.read(("rate_limit", name), policy, _rate_limit_counts),
                }
                for name, policy in policies.items()
                if _is_rate_limit(policy)
            ],
            "cache": self._cache(policies),
            "request_filters": [
                {
                    "policy": name,
                    "matches": self.metrics.carried.read(
                        ("request_filter", name), policy, _filter_counts
                    ),
                }
                for name, policy in policies.items()
                if _is_request_filter(policy)
            ],
            "reloads": dict(getattr(self.service, "reloads", None) or {}),
        }

    def _listeners(self) -> list[dict[str, Any]]:
        service = self.service
        listeners = []
        for name, listener in service.config.listeners.items():
            factory = service.factories.get(name)
            port = service.ports.get(name)
            host, number = listener.host, listener.port
            if port is not None:
                address = port.getHost()
                host, number = address.host, address.port
            entry: dict[str, Any] = {
                "name": name,
                "protocol": listener.protocol,
                "bind": f"[{host}]:{number}" if ":" in host else f"{host or '*'}:{number}",
                "connections": len(factory.connections) if factory is not None else 0,
            }
            if listener.protocol == "tcp":
                entry["upstream"] = listener.upstream
                entry["tunnels_active"] = getattr(factory, "tunnels_active", 0)
                entry["bytes_in"] = getattr(factory, "bytes_in", 0)
                entry["bytes_out"] = getattr(factory, "bytes_out", 0)
            elif factory is not None:
                # WebSocket tunnels of an http(s) listener.
                entry["tunnels_active"] = getattr(factory, "tunnels_active", 0)
                entry["bytes_in"] = getattr(factory, "tunnel_bytes_in", 0)
                entry["bytes_out"] = getattr(factory, "tunnel_bytes_out", 0)
            listeners.append(entry)
        return listeners

    def _cache(self, policies: Mapping[str, Any]) -> dict[str, Any]:
        lookups: dict[str, float] = {}
        held = 0  # bytes
        for name, policy in policies.items():
            if not _is_cache(policy):
                continue
            counts = self.metrics.carried.read(("cache", name), policy, _cache_counts)
            for result, count in counts.items():
                lookups[result] = lookups.get(result, 0) + count
            held += policy.bytes
        return {"lookups": lookups, "bytes": held}

    def _routes(self) -> list[dict[str, Any]]:
        gateway = self.service.gateway
        counts = self.metrics.requests_by_route()
        routes = []
        for route in gateway.config.routes if gateway is not None else ():
            routes.append(
                {
                    "name": route.name,
                    "listeners": list(route.listeners),
                    "match": _describe_match(route.match),
                    "action": _action_of(route),
                    "upstream": route.upstream,
                    "split": [{"upstream": s.upstream, "weight": s.weight} for s in route.split],
                    "policies": list(route.policies),
                    "requests": counts.pop(route.name, {}),
                }
            )
        unmatched = counts.pop("", None)
        if unmatched:
            routes.append(
                {
                    "name": "",
                    "listeners": [],
                    "match": "(no route matched)",
                    "action": "404",
                    "upstream": None,
                    "policies": [],
                    "requests": unmatched,
                }
            )
        return routes

    def metrics_text(self) -> defer.Deferred[bytes]:
        """Every metric family in the Prometheus text format (C{GET /metrics})."""
        return defer.succeed(self.metrics.text())

    def config(self) -> dict[str, Any]:
        """The effective configuration, secrets shown as C{"***"} (C{GET /config})."""
        return masked_config(self.service.config)

    # -- acting --------------------------------------------------------------

    def reload(self) -> defer.Deferred[Any]:
        """
        Reload the configuration file (C{POST /reload}); fires with the
        service's result (C{ok}, C{problems}, C{digest}), or fails with
        L{Unavailable}.
        """
        return _reload(self.service)

    def purge_cache(
        self, prefix: Optional[str] = None, url: Optional[str] = None
    ) -> defer.Deferred[int]:
        """
        Drop cached responses under path C{prefix}, or for C{url}
        (C{POST /cache/purge}); fires with how many entries went (0 without
        a cache).
        """
        gateway = self.service.gateway
        policies = gateway.policies.values() if gateway is not None else ()
        purges = [
            defer.maybeDeferred(policy.purge, prefix, url)
            for policy in policies
            if callable(getattr(policy, "purge", None))
        ]
        done = defer.gatherResults(purges, consumeErrors=True)
        return done.addCallback(lambda counts: int(sum(counts)))


def _reload(owner: Any) -> defer.Deferred[Any]:
    reload = getattr(owner, "reload", None)
    if reload is None:
        return defer.fail(Unavailable("this gateway cannot reload its configuration"))
    return defer.maybeDeferred(reload)


def _describe_match(match: Any) -> str:
    """A one-line summary of a route's match, for the dashboard."""
    parts = []
    if match.hosts:
        parts.append(",".join(match.hosts))
    if match.path is not None:
        parts.append(match.path)
    elif match.path_prefix is not None:
        parts.append(match.path_prefix.rstrip("/") + "/*")
    elif match.path_regex is not None:
        parts.append("~" + match.path_regex.pattern)
    if match.methods:
        parts.append(" ".join(match.methods))
    return " ".join(parts) or "*"


def _action_of(route: Any) -> str:
    for action in ("upstream", "split", "static", "redirect", "respond"):
        if getattr(route, action):
            return action
    return ""


# -- several workers -------------------------------------------------------------


class SupervisorState:
    """
    The admin API's view of a gateway run as several worker processes: the
    workers' answers (each from its own L{LocalState}) gathered through the
    supervisor and merged.

    @param supervisor: a L{gatewaykit.workers.Supervisor}: C{ask_all(op)}
        fires with every worker's answer to C{"status"} (a dict) or
        C{"metrics"} (the text); C{config}, C{reloads}, C{started_at},
        C{reload()}; and C{purge_cache(prefix, url)} once workers can purge.
    """

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def status(self) -> defer.Deferred[dict[str, Any]]:
        def merge(statuses: list[dict[str, Any]]) -> dict[str, Any]:
            if not statuses:
                raise Unavailable("no worker answered", status=503)
            merged = merge_status(statuses)
            merged["reloads"] = dict(self.supervisor.reloads)
            clock = self.supervisor.reactor
            merged["uptime_seconds"] = round(clock.seconds() - self.supervisor.started_at, 3)
            return merged

        return self.supervisor.ask_all("status").addCallback(merge)

    def metrics_text(self) -> defer.Deferred[bytes]:
        def merge(texts: list[Any]) -> bytes:
            encoded = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
            return merge_metrics(encoded, reloads=self.supervisor.reloads)

        return self.supervisor.ask_all("metrics").addCallback(merge)

    def config(self) -> dict[str, Any]:
        return masked_config(self.supervisor.config)

    def reload(self) -> defer.Deferred[Any]:
        return _reload(self.supervisor)

    def purge_cache(
        self, prefix: Optional[str] = None, url: Optional[str] = None
    ) -> defer.Deferred[int]:
        purge = getattr(self.supervisor, "purge_cache", None)
        if purge is None:
            return defer.fail(Unavailable("purging the workers' caches is not available yet"))
        return defer.maybeDeferred(purge, prefix, url)



def merge_status(statuses: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """
    One status document from those of several workers, the first being the
    one whose node, version, config and uptime are shown: connections,
    in-flight counts and counters add up; a target is healthy when every
    worker sees it so and ejected when any worker ejected it; its EWMA
    latency is the request-weighted mean.
    """
    statuses = list(statuses)
    if not statuses:
        raise ValueError("merge_status needs at least one status")
    merged = dict(statuses[0])
    merged["listeners"] = _merge_by(
        statuses, "listeners", "name", ("connections", "tunnels_active", "bytes_in", "bytes_out")
    )
    merged["routes"] = _merge_routes(statuses)
    merged["upstreams"] = _merge_upstreams(statuses)
    merged["rate_limits"] = _merge_by(statuses, "rate_limits", "policy", _RATE_LIMIT_RESULTS)
    merged["request_filters"] = _merge_filters(statuses)
    lookups: dict[str, float] = {}
    for status in statuses:
        for result, count in status.get("cache", {}).get("lookups", {}).items():
            lookups[result] = lookups.get(result, 0) + count
    merged["cache"] = {
        "lookups": lookups,
        "bytes": sum(status.get("cache", {}).get("bytes", 0) for status in statuses),
    }
    merged["workers"] = [worker for status in statuses for worker in status.get("workers", ())]
    return merged


def _merge_by(
    statuses: list[Mapping[str, Any]], section: str, key: str, summed: Iterable[str]
) -> list[dict[str, Any]]:
    """The entries of C{section} of every status, one per C{key}, C{summed} fields added."""
    summed = tuple(summed)
    entries: dict[Any, dict[str, Any]] = {}
    for status in statuses:
        for entry in status.get(section, ()):
            into = entries.get(entry[key])
            if into is None:
                entries[entry[key]] = dict(entry)
                continue
            for name in summed:
                if name in entry:
                    into[name] = into.get(name, 0) + entry[name]
    return list(entries.values())


def _merge_filters(statuses: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    filters: dict[str, dict[str, float]] = {}
    for status in statuses:
        for entry in status.get("request_filters", ()):
            matches = filters.setdefault(entry["policy"], {})
            for rule, count in entry["matches"].items():
                matches[rule] = matches.get(rule, 0) + count
    return [{"policy": policy, "matches": matches} for policy, matches in filters.items()]


def _merge_routes(statuses: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    routes: dict[str, dict[str, Any]] = {}
    for status in statuses:
        for route in status.get("routes", ()):
            into = routes.get(route["name"])
            if into is None:
                routes[route["name"]] = {**route, "requests": dict(route["requests"])}
                continue
            for code, count in route["requests"].items():
                into["requests"][code] = into["requests"].get(code, 0) + count
    return list(routes.values())


def _merge_upstreams(statuses: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    upstreams = _merge_by(statuses, "upstreams", "name", ("in_flight", "pending"))
    for upstream in upstreams:
        views = [
            target
            for status in statuses
            for each in status.get("upstreams", ())
            if each["name"] == upstream["name"]
            for target in each["targets"]
        ]
        targets: dict[str, list[Mapping[str, Any]]] = {}
        for target in views:
            targets.setdefault(target["address"], []).append(target)
        upstream["targets"] = [_merge_target(seen) for seen in targets.values()]
    return upstreams


def _merge_target(seen: list[Mapping[str, Any]]) -> dict[str, Any]:
    merged = dict(seen[0])
    for name in ("in_flight", "requests", "failures"):
        merged[name] = sum(target.get(name, 0) for target in seen)
    merged["healthy"] = all(target["healthy"] for target in seen)
    merged["ejected"] = any(target["ejected"] for target in seen)
    weights = [max(target.get("requests", 0), 0) for target in seen]
    if sum(weights):
        ewma = sum(t["ewma_ms"] * w for t, w in zip(seen, weights, strict=True)) / sum(weights)
        merged["ewma_ms"] = round(ewma, 3)
    return merged


__all__ = [
    "LocalState",
    "SupervisorState",
    "Unavailable",
    "merge_metrics",
    "merge_status",
]
