"""
The resource tree: choosing the route of one request.

A L{Router} is built from the routes of one listener, once per config
version, and never changes afterwards; a reload builds a new one. Matching
goes host first (exact, then C{*.} wildcards from the longest suffix, then
routes without hosts), then path (exact, regex, prefixes from the longest),
then the other conditions, then file order. See C{docs/routing.md}.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from gatewaykit.config.model import Condition, RouteConfig
from gatewaykit.http.message import Request

__all__ = ["MethodNotAllowed", "NoRoute", "Router"]

T = TypeVar("T")

# Host names come from clients: a flood of made-up ones must not grow the
# cache without bound.
MAX_CACHED_HOSTS = 4096


class NoRoute(Exception):
    """No route matches the request; the gateway answers 404."""


class MethodNotAllowed(Exception):
    """
    Some route matches everything but the method; the gateway answers 405
    with C{Allow}.

    @ivar allow: the methods those routes accept, sorted and unique.
    """

    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__(f"allowed methods: {', '.join(allow)}")
        self.allow = allow


class _Route(Generic[T]):
    """One route compiled for matching."""

    __slots__ = (
        "config",
        "cookies",
        "headers",
        "methods",
        "order",
        "payload",
        "query",
    )

    def __init__(self, config: RouteConfig, payload: T) -> None:
        match = config.match
        self.config = config
        self.payload = payload
        methods = frozenset(match.methods)
        if "GET" in methods:
            # As nginx does: a resource one may GET may also be HEADed.
            methods |= {"HEAD"}
        self.methods: frozenset[str] | None = methods or None
        self.headers = match.headers
        self.query = match.query
        self.cookies = match.cookies
        # Within one path key: more conditions first, then file order.
        self.order = (-match.condition_count, config.index)

    def conditions_hold(self, request: Request) -> bool:
        """Whether the header, query and cookie conditions hold."""
        # Repeated header fields are joined with ", " (RFC 9110 section
        # 5.3), as Envoy's header matcher does.
        if self.headers and not _all_match(self.headers, request.headers.get_str):
            return False
        if self.query and not _all_match(self.query, request.query_param):
            return False
        # Only touch request.cookies when needed: it parses Cookie fields.
        return not self.cookies or _all_match(self.cookies, request.cookies.get)


def _all_match(
    conditions: tuple[Condition, ...], lookup: Callable[[str], str | None]
) -> bool:
    for condition in conditions:
        if not condition.matches(lookup(condition.name)):
            return False
    return True


class _Tier(Generic[T]):
    """The routes of one host class (one exact host, one wildcard, or any)."""

    __slots__ = (
        "exact",
        "longest_prefix",
        "prefix_lengths",
        "prefixes",
        "regexes",
        "root",
    )

    def __init__(self) -> None:
        self.exact: dict[str, list[_Route[T]]] = {}
        self.regexes: list[tuple[re.Pattern[str], _Route[T]]] = []
        self.prefixes: dict[str, list[_Route[T]]] = {}  # never ending in "/"
        self.root: list[_Route[T]] = []  # prefix "/" and no path condition
        self.prefix_lengths: frozenset[int] = frozenset()
        self.longest_prefix = 0

    def add(self, route: _Route[T]) -> None:
        match = route.config.match
        if match.path is not None:
            self.exact.setdefault(match.path, []).append(route)
        elif match.path_regex is not None:
            self.regexes.append((match.path_regex, route))
        else:
            # As the config loader does: "/users/" is the prefix "/users".
            prefix = (match.path_prefix or "").rstrip("/")
            if prefix:
                self.prefixes.setdefault(prefix, []).append(route)
            else:
                self.root.append(route)

    def freeze(self) -> None:
        for routes in (*self.exact.values(), *self.prefixes.values(), self.root):
            routes.sort(key=_order)
        self.regexes.sort(key=lambda entry: entry[1].order)
        self.prefix_lengths = frozenset(map(len, self.prefixes))
        self.longest_prefix = max(self.prefix_lengths, default=0)

    def __bool__(self) -> bool:
        return bool(self.exact or self.regexes or self.prefixes or self.root)


def _order(route: _Route[T]) -> tuple[int, int]:
    return route.order


def _host_key(host: str) -> str:
    """
    C{host} as the tiers are keyed: lower case, without a trailing dot, an
    IPv6 address compressed and without brackets.
    """
    host = host.lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            pass
    return host


class Router(Generic[T]):
    """
    The routes of one listener, each with an opaque payload (what the
    caller wants back: a compiled route, a resource, a name).
    """

    def __init__(self, entries: Iterable[tuple[RouteConfig, T]]) -> None:
        self._exact: dict[str, _Tier[T]] = {}
        self._wildcards: dict[str, _Tier[T]] = {}  # keyed by ".example.com"
        any_host: _Tier[T] = _Tier()
        for config, payload in entries:
            match = config.match
            given = [match.path, match.path_prefix, match.path_regex]
            if len(given) - given.count(None) > 1:
                raise ValueError(
                    f"route {config.name!r}: only one of path, path_prefix "
                    f"and path_regex may be given"
                )
            route = _Route(config, payload)
            hosts = dict.fromkeys(map(_host_key, match.hosts))
            if not hosts:
                any_host.add(route)
            for host in hosts:
                if host.startswith("*.") and "*" not in host[2:]:
                    tiers, key = self._wildcards, host[1:]
                elif "*" in host:
                    raise ValueError(
                        f"route {config.name!r}: host {host!r}: a wildcard "
                        f"is only allowed as a leading '*.' label"
                    )
                else:
                    tiers, key = self._exact, host
                tiers.setdefault(key, _Tier()).add(route)
        for tier in (*self._exact.values(), *self._wildcards.values(), any_host):
            tier.freeze()
        self._any_host: tuple[_Tier[T], ...] = (any_host,) if any_host else ()
        self._by_host: dict[str, tuple[_Tier[T], ...]] = {}

    def _tiers(self, host: str) -> tuple[_Tier[T], ...]:
        """The tiers that apply to C{host}, most specific first."""
        tiers = self._by_host.get(host)
        if tiers is not None:
            return tiers
        if not self._exact and not self._wildcards:
            return self._any_host
        name = _host_key(host)
        found = []
        tier = self._exact.get(name)
        if tier is not None:
            found.append(tier)
        if self._wildcards:
            # Suffixes from the longest; the first label is never part of
            # one, so "*.example.com" does not match "example.com".
            dot = name.find(".", 1)
            while dot != -1:
                tier = self._wildcards.get(name[dot:])
                if tier is not None:
                    found.append(tier)
                dot = name.find(".", dot + 1)
        tiers = (*found, *self._any_host)
        if len(self._by_host) >= MAX_CACHED_HOSTS:
            # Start over rather than evict one by one: cheaper amortised,
            # and the hosts in real use come straight back.
            self._by_host.clear()
        self._by_host[host] = tiers
        return tiers

    def _candidates(self, request: Request) -> Iterator[_Route[T]]:
        """The routes whose host and path conditions match, best first."""
        path = request.path
        end = len(path)
        for tier in self._tiers(request.host):
            routes = tier.exact.get(path)
            if routes is not None:
                yield from routes
            for pattern, route in tier.regexes:
                if pattern.search(path) is not None:
                    yield route
            lengths = tier.prefix_lengths
            if lengths:
                prefixes = tier.prefixes
                # Prefixes from the longest: the path itself, then the path
                # cut at each "/". Only lengths that some prefix has are
                # sliced out and looked up.
                if end in lengths:
                    routes = prefixes.get(path)
                    if routes is not None:
                        yield from routes
                slash = path.rfind("/", 0, tier.longest_prefix + 1)
                while slash > 0:
                    if slash in lengths:
                        routes = prefixes.get(path[:slash])
                        if routes is not None:
                            yield from routes
                    slash = path.rfind("/", 0, slash)
            yield from tier.root

    def match(self, request: Request) -> T:
        """
        The payload of the most specific route that matches C{request}.

        C{request.path} must already be normalised
        (L{gatewaykit.routing.paths.normalise_path}).

        @raise MethodNotAllowed: no route matches, but some match on
            everything except the method.
        @raise NoRoute: no route matches at all.
        """
        if request.method == "OPTIONS":
            # A CORS preflight goes to the route that will serve the request
            # it asks about, so that route's cors policy answers it.
            asked = request.headers.get(b"access-control-request-method")
            if asked and b"origin" in request.headers:
                try:
                    return self._match(request, asked.decode("latin-1").upper())
                except (NoRoute, MethodNotAllowed):
                    pass
        return self._match(request, request.method)

    def _match(self, request: Request, method: str) -> T:
        for route in self._candidates(request):
            methods = route.methods
            if (methods is None or method in methods) and route.conditions_hold(
                request
            ):
                return route.payload
        # A miss is rare enough that walking the candidates again is
        # cheaper than keeping track of method failures on every request.
        allow: set[str] = set()
        for route in self._candidates(request):
            methods = route.methods
            if (
                methods is not None
                and method not in methods
                and route.conditions_hold(request)
            ):
                allow |= methods
        if allow:
            raise MethodNotAllowed(tuple(sorted(allow)))
        raise NoRoute(f"no route for {request.method} {request.host}{request.path}")
