"""
Tests for L{gatewaykit.routing.router}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.model import Condition, Match, RouteConfig
from gatewaykit.http.message import Headers, Request
from gatewaykit.routing import router as router_module
from gatewaykit.routing.router import MethodNotAllowed, NoRoute, Router


def route(name: str, index: int = 0, **match: Any) -> RouteConfig:
    """A route called C{name} at position C{index} with C{match} conditions."""
    if isinstance(match.get("path_regex"), str):
        match["path_regex"] = re.compile(match["path_regex"])
    for kind in ("headers", "query", "cookies"):
        if kind in match:
            match[kind] = tuple(
                Condition.parse(key, value) for key, value in match[kind].items()
            )
    return RouteConfig(
        name=name, index=index, listeners=("web",), match=Match(**match), upstream=name
    )


def router(*routes: RouteConfig) -> Router[str]:
    """A router whose payloads are the route names."""
    return Router((config, config.name) for config in routes)


def request(
    path: str = "/",
    method: str = "GET",
    host: str = "",
    query: str = "",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> Request:
    """A request as the codec hands it over."""
    return Request(
        method=method,
        target=path.encode("latin-1"),
        path=path,
        query=query,
        headers=Headers(headers),
        host=host,
    )


def matched(routes: Router[str], req: Request) -> str | None:
    """The name of the route C{req} goes to, or C{None} for a 404."""
    try:
        return routes.match(req)
    except NoRoute:
        return None


class HostTests(SynchronousTestCase):
    """
    Routes are chosen by host first: exact, then wildcard, then any.
    """

    def test_exact_host(self) -> None:
        """A route for a host matches that host."""
        routes = router(route("a", hosts=("api.example.com",)))
        self.assertEqual(matched(routes, request(host="api.example.com")), "a")

    def test_other_host_no_route(self) -> None:
        """A route for a host does not match another host."""
        routes = router(route("a", hosts=("api.example.com",)))
        self.assertIsNone(matched(routes, request(host="www.example.com")))

    def test_empty_host_no_route(self) -> None:
        """A request without a host matches no host-bound route."""
        routes = router(route("a", hosts=("api.example.com",)))
        self.assertIsNone(matched(routes, request(host="")))

    def test_no_hosts_matches_any_host(self) -> None:
        """A route without hosts matches every host, even none."""
        routes = router(route("a"))
        self.assertEqual(
            (matched(routes, request(host="x.test")), matched(routes, request())),
            ("a", "a"),
        )

    def test_bare_star_refused(self) -> None:
        """A bare "*" host is a ValueError: leaving hosts out means any host."""
        self.assertRaises(ValueError, router, route("a", hosts=("*",)))

    def test_ipv6_host(self) -> None:
        """A bracketed IPv6 route host matches the address without brackets."""
        routes = router(route("a", hosts=("[2001:db8::1]",)))
        self.assertEqual(matched(routes, request(host="2001:db8:0::1")), "a")

    def test_config_host_case_insensitive(self) -> None:
        """Hosts in the config are compared in lower case."""
        routes = router(route("a", hosts=("API.Example.com",)))
        self.assertEqual(matched(routes, request(host="api.example.com")), "a")

    def test_fully_qualified_host(self) -> None:
        """A host with a trailing dot is the same host."""
        routes = router(route("a", hosts=("api.example.com",)))
        self.assertEqual(matched(routes, request(host="api.example.com.")), "a")

    def test_wildcard_matches_subdomain(self) -> None:
        """A wildcard "*.example.com" matches a direct subdomain."""
        routes = router(route("w", hosts=("*.example.com",)))
        self.assertEqual(matched(routes, request(host="a.example.com")), "w")

    def test_wildcard_matches_deeper_subdomain(self) -> None:
        """A wildcard "*.example.com" matches subdomains at any depth."""
        routes = router(route("w", hosts=("*.example.com",)))
        self.assertEqual(matched(routes, request(host="a.b.example.com")), "w")

    def test_wildcard_not_bare_domain(self) -> None:
        """A wildcard "*.example.com" does not match "example.com"."""
        routes = router(route("w", hosts=("*.example.com",)))
        self.assertIsNone(matched(routes, request(host="example.com")))

    def test_wildcard_not_suffix_of_label(self) -> None:
        """A wildcard "*.example.com" does not match "badexample.com"."""
        routes = router(route("w", hosts=("*.example.com",)))
        self.assertIsNone(matched(routes, request(host="badexample.com")))

    def test_invalid_wildcard_refused(self) -> None:
        """A "*" anywhere but a leading "*." is a ValueError."""
        self.assertRaises(ValueError, router, route("w", hosts=("a.*.com",)))

    def test_exact_beats_wildcard(self) -> None:
        """An exact host beats a wildcard, whatever the file order."""
        routes = router(
            route("wild", 0, hosts=("*.example.com",)),
            route("exact", 1, hosts=("api.example.com",)),
        )
        self.assertEqual(matched(routes, request(host="api.example.com")), "exact")

    def test_longer_wildcard_beats_shorter(self) -> None:
        """A longer wildcard suffix beats a shorter one."""
        routes = router(
            route("short", 0, hosts=("*.example.com",)),
            route("long", 1, hosts=("*.eu.example.com",)),
        )
        self.assertEqual(matched(routes, request(host="a.eu.example.com")), "long")

    def test_wildcard_beats_any_host(self) -> None:
        """A wildcard host beats a route without hosts."""
        routes = router(
            route("any", 0),
            route("wild", 1, hosts=("*.example.com",)),
        )
        self.assertEqual(matched(routes, request(host="a.example.com")), "wild")

    def test_host_beats_path_specificity(self) -> None:
        """A host-bound prefix "/" beats an exact path on any host."""
        routes = router(
            route("any", 0, path="/users"),
            route("host", 1, hosts=("api.example.com",), path_prefix="/"),
        )
        self.assertEqual(
            matched(routes, request("/users", host="api.example.com")), "host"
        )

    def test_falls_back_to_less_specific_host(self) -> None:
        """When the host's routes miss on path, less specific hosts are tried."""
        routes = router(
            route("host", 0, hosts=("api.example.com",), path="/a"),
            route("any", 1, path="/b"),
        )
        self.assertEqual(matched(routes, request("/b", host="api.example.com")), "any")


class HostCacheTests(SynchronousTestCase):
    """
    The host lookup cache stays bounded.
    """

    def test_bounded(self) -> None:
        """Many distinct hosts do not grow the cache past its bound."""
        self.patch(router_module, "MAX_CACHED_HOSTS", 8)
        routes = router(route("w", hosts=("*.example.com",)))
        for n in range(50):
            routes.match(request(host=f"h{n}.example.com"))
        self.assertLessEqual(len(routes._by_host), 8)

    def test_still_matches_after_eviction(self) -> None:
        """A host evicted from the cache still matches."""
        self.patch(router_module, "MAX_CACHED_HOSTS", 2)
        routes = router(route("w", hosts=("*.example.com",)))
        for n in range(5):
            routes.match(request(host=f"h{n}.example.com"))
        self.assertEqual(matched(routes, request(host="h0.example.com")), "w")


class PathTests(SynchronousTestCase):
    """
    Within a host class, exact paths beat regexes beat longer prefixes.
    """

    def test_exact_path(self) -> None:
        """An exact path matches itself."""
        routes = router(route("a", path="/users"))
        self.assertEqual(matched(routes, request("/users")), "a")

    def test_exact_path_not_trailing_slash(self) -> None:
        """An exact path does not match the same path with a trailing slash."""
        routes = router(route("a", path="/users"))
        self.assertIsNone(matched(routes, request("/users/")))

    def test_exact_path_not_prefix(self) -> None:
        """An exact path does not match paths below it."""
        routes = router(route("a", path="/users"))
        self.assertIsNone(matched(routes, request("/users/1")))

    def test_prefix_matches_itself(self) -> None:
        """A prefix matches the path equal to it."""
        routes = router(route("p", path_prefix="/users"))
        self.assertEqual(matched(routes, request("/users")), "p")

    def test_prefix_matches_with_slash(self) -> None:
        """A prefix matches itself followed by a slash."""
        routes = router(route("p", path_prefix="/users"))
        self.assertEqual(matched(routes, request("/users/")), "p")

    def test_prefix_matches_below(self) -> None:
        """A prefix matches paths below it."""
        routes = router(route("p", path_prefix="/users"))
        self.assertEqual(matched(routes, request("/users/1/posts")), "p")

    def test_prefix_segment_boundary(self) -> None:
        """A prefix does not match in the middle of a segment."""
        routes = router(route("p", path_prefix="/users"))
        self.assertIsNone(matched(routes, request("/usersx")))

    def test_prefix_with_trailing_slash(self) -> None:
        """A prefix "/users/" means the same as "/users", as the loader says."""
        routes = router(route("p", path_prefix="/users/"))
        self.assertEqual(
            (matched(routes, request("/users/1")), matched(routes, request("/users"))),
            ("p", "p"),
        )

    def test_root_prefix_matches_everything(self) -> None:
        """The prefix "/" matches every path."""
        routes = router(route("p", path_prefix="/"))
        self.assertEqual(matched(routes, request("/a/b/c")), "p")

    def test_no_path_matches_everything(self) -> None:
        """A route without a path condition matches every path."""
        routes = router(route("any"))
        self.assertEqual(matched(routes, request("/a/b")), "any")

    def test_longer_prefix_wins(self) -> None:
        """The longest matching prefix wins, whatever the file order."""
        routes = router(
            route("short", 0, path_prefix="/api"),
            route("long", 1, path_prefix="/api/v2"),
        )
        self.assertEqual(matched(routes, request("/api/v2/users")), "long")

    def test_shorter_prefix_when_longer_misses(self) -> None:
        """A shorter prefix matches where the longer one does not."""
        routes = router(
            route("short", 0, path_prefix="/api"),
            route("long", 1, path_prefix="/api/v2"),
        )
        self.assertEqual(matched(routes, request("/api/v1/users")), "short")

    def test_slash_prefix_same_as_bare_prefix(self) -> None:
        """The prefixes "/users/" and "/users" tie, so file order decides."""
        routes = router(
            route("bare", 0, path_prefix="/users"),
            route("slash", 1, path_prefix="/users/"),
        )
        self.assertEqual(matched(routes, request("/users/1")), "bare")

    def test_bare_prefix_matches_trailing_slash_path(self) -> None:
        """A prefix "/users" matches "/users/" next to a longer prefix."""
        routes = router(
            route("bare", 0, path_prefix="/users"),
            route("other", 1, path_prefix="/users/x"),
        )
        self.assertEqual(matched(routes, request("/users/")), "bare")

    def test_prefix_beats_no_path(self) -> None:
        """Any prefix beats a route without a path condition."""
        routes = router(route("any", 0), route("p", 1, path_prefix="/a"))
        self.assertEqual(matched(routes, request("/a/b")), "p")

    def test_regex_searched(self) -> None:
        """A path regex is searched, so it needs anchors to match whole paths."""
        routes = router(route("r", path_regex=r"[0-9]+$"))
        self.assertEqual(matched(routes, request("/users/42")), "r")

    def test_anchored_regex(self) -> None:
        """The SPEC's anchored example matches only whole paths."""
        routes = router(route("r", path_regex=r"^/users/[0-9]+$"))
        self.assertEqual(
            (
                matched(routes, request("/users/42")),
                matched(routes, request("/x/users/42")),
            ),
            ("r", None),
        )

    def test_regex_beats_prefix(self) -> None:
        """A regex beats a prefix, however long."""
        routes = router(
            route("prefix", 0, path_prefix="/users/42"),
            route("regex", 1, path_regex=r"^/users/[0-9]+$"),
        )
        self.assertEqual(matched(routes, request("/users/42")), "regex")

    def test_exact_beats_regex(self) -> None:
        """An exact path beats a regex."""
        routes = router(
            route("regex", 0, path_regex=r"^/users/[0-9]+$"),
            route("exact", 1, path="/users/42"),
        )
        self.assertEqual(matched(routes, request("/users/42")), "exact")

    def test_path_is_case_sensitive(self) -> None:
        """Paths are compared case-sensitively."""
        routes = router(route("a", path_prefix="/Users"))
        self.assertIsNone(matched(routes, request("/users")))

    def test_several_path_conditions_refused(self) -> None:
        """A route with more than one path condition is a ValueError."""
        self.assertRaises(
            ValueError, router, route("a", path="/users/1", path_prefix="/users")
        )

    def test_prefix_longer_than_path_segment(self) -> None:
        """A prefix longer than the path does not match a shorter path."""
        routes = router(route("p", path_prefix="/users/1"))
        self.assertIsNone(matched(routes, request("/users")))

    def test_long_path_short_prefixes(self) -> None:
        """A path much longer than every prefix still finds its prefix."""
        routes = router(route("p", path_prefix="/a"))
        self.assertEqual(
            matched(routes, request("/a/bbbbbbbbbbbbbbbbbb/cccccc/d")), "p"
        )


class ConditionPrecedenceTests(SynchronousTestCase):
    """
    With the same host and path rank, more conditions win, then file order.
    """

    def test_more_conditions_win(self) -> None:
        """A route with more conditions beats one with fewer."""
        routes = router(
            route("plain", 0, path_prefix="/a"),
            route("versioned", 1, path_prefix="/a", headers={"Accept-Version": "2"}),
        )
        req = request("/a", headers=[(b"Accept-Version", b"2")])
        self.assertEqual(matched(routes, req), "versioned")

    def test_methods_count_as_condition(self) -> None:
        """A methods list makes a route more specific than none."""
        routes = router(
            route("any", 0, path="/a"),
            route("get", 1, path="/a", methods=("GET",)),
        )
        self.assertEqual(matched(routes, request("/a")), "get")

    def test_failed_condition_falls_through(self) -> None:
        """When the more specific route's condition fails, the next one wins."""
        routes = router(
            route("plain", 0, path_prefix="/a"),
            route("versioned", 1, path_prefix="/a", headers={"Accept-Version": "2"}),
        )
        self.assertEqual(matched(routes, request("/a")), "plain")

    def test_file_order_breaks_ties(self) -> None:
        """Among equally specific routes the first in the file wins."""
        routes = router(
            route("second", 1, path_prefix="/a"),
            route("first", 0, path_prefix="/a"),
        )
        self.assertEqual(matched(routes, request("/a")), "first")

    def test_path_rank_beats_conditions(self) -> None:
        """A longer prefix beats a shorter one with more conditions."""
        routes = router(
            route(
                "conditions", 0, path_prefix="/a", headers={"X": "*"}, methods=("GET",)
            ),
            route("longer", 1, path_prefix="/a/b"),
        )
        req = request("/a/b", headers=[(b"X", b"1")])
        self.assertEqual(matched(routes, req), "longer")

    def test_no_path_ties_with_root_prefix(self) -> None:
        """No path condition ranks like prefix "/": file order decides."""
        routes = router(route("none", 0), route("root", 1, path_prefix="/"))
        self.assertEqual(matched(routes, request("/x")), "none")


class HeaderConditionTests(SynchronousTestCase):
    """
    Header conditions: exact, "~regex" searched, "*" present.
    """

    def test_exact(self) -> None:
        """An exact header value matches."""
        routes = router(route("a", headers={"X-Env": "prod"}))
        self.assertEqual(matched(routes, request(headers=[(b"X-Env", b"prod")])), "a")

    def test_exact_mismatch(self) -> None:
        """A different header value does not match."""
        routes = router(route("a", headers={"X-Env": "prod"}))
        self.assertIsNone(matched(routes, request(headers=[(b"X-Env", b"prod2")])))

    def test_name_case_insensitive(self) -> None:
        """Header names are compared case-insensitively."""
        routes = router(route("a", headers={"X-Env": "prod"}))
        self.assertEqual(matched(routes, request(headers=[(b"x-env", b"prod")])), "a")

    def test_regex(self) -> None:
        """A "~" value is a regex searched in the header value."""
        routes = router(route("a", headers={"User-Agent": "~(?i)curl/"}))
        req = request(headers=[(b"User-Agent", b"CURL/8.0")])
        self.assertEqual(matched(routes, req), "a")

    def test_present(self) -> None:
        """The value "*" matches any header value, even an empty one."""
        routes = router(route("a", headers={"Authorization": "*"}))
        self.assertEqual(
            matched(routes, request(headers=[(b"Authorization", b"")])), "a"
        )

    def test_absent(self) -> None:
        """A condition on a header that is absent does not match."""
        routes = router(route("a", headers={"Authorization": "*"}))
        self.assertIsNone(matched(routes, request()))

    def test_repeated_joined(self) -> None:
        """Repeated fields are matched as their values joined with ", "."""
        routes = router(route("a", headers={"X-Tag": "a, b"}))
        req = request(headers=[(b"X-Tag", b"a"), (b"X-Tag", b"b")])
        self.assertEqual(matched(routes, req), "a")

    def test_every_condition_required(self) -> None:
        """All header conditions must hold."""
        routes = router(route("a", headers={"X-A": "1", "X-B": "2"}))
        self.assertIsNone(matched(routes, request(headers=[(b"X-A", b"1")])))


class QueryConditionTests(SynchronousTestCase):
    """
    Query conditions match the first value of a parameter.
    """

    def test_exact(self) -> None:
        """An exact parameter value matches."""
        routes = router(route("a", query={"v": "2"}))
        self.assertEqual(matched(routes, request(query="x=1&v=2")), "a")

    def test_first_value(self) -> None:
        """Only the first value of a repeated parameter counts."""
        routes = router(route("a", query={"v": "2"}))
        self.assertIsNone(matched(routes, request(query="v=1&v=2")))

    def test_regex(self) -> None:
        """A "~" value is searched in the parameter value."""
        routes = router(route("a", query={"debug": "~^(1|true)$"}))
        self.assertEqual(matched(routes, request(query="debug=true")), "a")

    def test_present(self) -> None:
        """The value "*" matches a parameter given without a value."""
        routes = router(route("a", query={"debug": "*"}))
        self.assertEqual(matched(routes, request(query="debug")), "a")

    def test_absent(self) -> None:
        """A condition on an absent parameter does not match."""
        routes = router(route("a", query={"debug": "*"}))
        self.assertIsNone(matched(routes, request(query="x=1")))


class CookieConditionTests(SynchronousTestCase):
    """
    Cookie conditions match the first cookie of a name.
    """

    def test_exact(self) -> None:
        """An exact cookie value matches."""
        routes = router(route("a", cookies={"beta": "on"}))
        req = request(headers=[(b"Cookie", b"session=x; beta=on")])
        self.assertEqual(matched(routes, req), "a")

    def test_regex(self) -> None:
        """A "~" value is searched in the cookie value."""
        routes = router(route("a", cookies={"group": "~^canary-"}))
        req = request(headers=[(b"Cookie", b"group=canary-7")])
        self.assertEqual(matched(routes, req), "a")

    def test_present(self) -> None:
        """The value "*" matches any cookie of that name."""
        routes = router(route("a", cookies={"session": "*"}))
        req = request(headers=[(b"Cookie", b"session=abc")])
        self.assertEqual(matched(routes, req), "a")

    def test_absent(self) -> None:
        """A condition on an absent cookie does not match."""
        routes = router(route("a", cookies={"session": "*"}))
        self.assertIsNone(matched(routes, request(headers=[(b"Cookie", b"other=1")])))


class MethodTests(SynchronousTestCase):
    """
    Methods: 405 with Allow when only the method fails; GET implies HEAD.
    """

    def test_method_matches(self) -> None:
        """A listed method matches."""
        routes = router(route("a", path="/a", methods=("POST",)))
        self.assertEqual(matched(routes, request("/a", "POST")), "a")

    def test_no_methods_any_method(self) -> None:
        """A route without methods accepts every method."""
        routes = router(route("a", path="/a"))
        self.assertEqual(matched(routes, request("/a", "PATCH")), "a")

    def test_get_implies_head(self) -> None:
        """A route accepting GET accepts HEAD."""
        routes = router(route("a", path="/a", methods=("GET",)))
        self.assertEqual(matched(routes, request("/a", "HEAD")), "a")

    def test_head_does_not_imply_get(self) -> None:
        """A route accepting only HEAD refuses GET."""
        routes = router(route("a", path="/a", methods=("HEAD",)))
        self.assertRaises(MethodNotAllowed, routes.match, request("/a", "GET"))

    def test_method_not_allowed(self) -> None:
        """A path match with the wrong method raises with the route's methods."""
        routes = router(route("a", path="/a", methods=("POST", "PUT")))
        error = self.assertRaises(MethodNotAllowed, routes.match, request("/a", "GET"))
        self.assertEqual(error.allow, ("POST", "PUT"))

    def test_allow_lists_head_with_get(self) -> None:
        """Allow includes HEAD when a route accepts GET."""
        routes = router(route("a", path="/a", methods=("GET",)))
        error = self.assertRaises(MethodNotAllowed, routes.match, request("/a", "POST"))
        self.assertEqual(error.allow, ("GET", "HEAD"))

    def test_allow_is_union_sorted_unique(self) -> None:
        """Allow is the sorted union of every route failing only on method."""
        routes = router(
            route("a", 0, path="/a", methods=("PUT", "POST")),
            route("b", 1, path_prefix="/a", methods=("DELETE", "PUT")),
        )
        error = self.assertRaises(MethodNotAllowed, routes.match, request("/a", "GET"))
        self.assertEqual(error.allow, ("DELETE", "POST", "PUT"))

    def test_allow_ignores_routes_failing_other_conditions(self) -> None:
        """Routes that fail on more than the method add nothing to Allow."""
        routes = router(
            route("a", 0, path="/a", methods=("POST",)),
            route("b", 1, path="/a", methods=("PUT",), headers={"X": "*"}),
        )
        error = self.assertRaises(MethodNotAllowed, routes.match, request("/a", "GET"))
        self.assertEqual(error.allow, ("POST",))

    def test_full_match_beats_method_failure(self) -> None:
        """A less specific full match wins over a more specific method failure."""
        routes = router(
            route(
                "specific", 0, hosts=("api.example.com",), path="/a", methods=("POST",)
            ),
            route("fallback", 1, path_prefix="/"),
        )
        req = request("/a", "GET", host="api.example.com")
        self.assertEqual(matched(routes, req), "fallback")

    def test_no_route(self) -> None:
        """Nothing matching at all raises NoRoute."""
        routes = router(route("a", path="/a", methods=("POST",)))
        self.assertRaises(NoRoute, routes.match, request("/b", "GET"))

    def test_empty_router(self) -> None:
        """A router without routes raises NoRoute."""
        self.assertRaises(NoRoute, router().match, request())


class PayloadTests(SynchronousTestCase):
    """
    The router hands back whatever payload came with the winning route.
    """

    def test_payload_returned(self) -> None:
        """The payload given with a route is what C{match} returns."""
        payload = object()
        routes: Router[object] = Router([(route("a"), payload)])
        self.assertIs(routes.match(request()), payload)

    def test_route_in_several_host_classes(self) -> None:
        """A route with exact and wildcard hosts matches through either."""
        routes = router(route("a", hosts=("example.com", "*.example.com")))
        self.assertEqual(
            (
                matched(routes, request(host="example.com")),
                matched(routes, request(host="w.example.com")),
            ),
            ("a", "a"),
        )


_HOSTS = ("example.com", "a.example.com", "b.a.example.com", "other.test", "")
_PATHS = ("/", "/a", "/a/", "/a/b", "/ab", "/a/b/c", "/b")


def _route_configs() -> st.SearchStrategy[list[RouteConfig]]:
    """Small random route tables drawn from a few hosts, paths and conditions."""
    path_condition: st.SearchStrategy[dict[str, str]] = st.one_of(
        st.just({}),
        st.sampled_from(_PATHS).map(lambda p: {"path": p}),
        st.sampled_from(_PATHS).map(lambda p: {"path_prefix": p}),
        st.sampled_from((r"^/a/", r"b$", r"^/a$")).map(lambda r: {"path_regex": r}),
    )
    one = st.fixed_dictionaries(
        {
            "hosts": st.lists(
                st.sampled_from(
                    ("example.com", "a.example.com", "*.example.com", "*.a.example.com")
                ),
                max_size=2,
                unique=True,
            ).map(tuple),
            "methods": st.lists(
                st.sampled_from(("GET", "POST", "PUT")), max_size=2, unique=True
            ).map(tuple),
            "headers": st.dictionaries(
                st.sampled_from(("X-A", "X-B")), st.sampled_from(("1", "~^2", "*"))
            ),
        }
    )
    return st.lists(st.tuples(one, path_condition), max_size=6).map(
        lambda drawn: [
            route(f"r{index}", index, **match, **path)
            for index, (match, path) in enumerate(drawn)
        ]
    )


def _reference(configs: list[RouteConfig], req: Request) -> object:
    """
    The winner by sorting every route on the SPEC's precedence: a name, a
    tuple of allowed methods for a 405, or C{None} for a 404.
    """

    def host_rank(hosts: tuple[str, ...]) -> tuple[int, int] | None:
        if not hosts:
            return (2, 0)
        ranks = [(0, 0) for host in hosts if host == req.host] + [
            (1, -len(host))
            for host in hosts
            if host.startswith("*.")
            and req.host.endswith(host[1:])
            and len(req.host) > len(host) - 1
        ]
        return min(ranks, default=None)

    def path_rank(match: Match) -> tuple[int, int] | None:
        path = req.path
        if match.path is not None:
            return (0, 0) if path == match.path else None
        if match.path_regex is not None:
            return (1, 0) if match.path_regex.search(path) else None
        prefix = (match.path_prefix or "/").rstrip("/")
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return (2, -len(prefix))
        return None

    ranked = []
    for config in configs:
        match = config.match
        hosts, paths = host_rank(match.hosts), path_rank(match)
        conditions = all(c.matches(req.headers.get_str(c.name)) for c in match.headers)
        if hosts is not None and paths is not None and conditions:
            ranked.append((hosts, paths, -match.condition_count, config.index, config))
    ranked.sort(key=lambda entry: entry[:4])
    allow: set[str] = set()
    for *_, config in ranked:
        methods = set(config.match.methods)
        if "GET" in methods:
            methods.add("HEAD")
        if not methods or req.method in methods:
            return config.name
        allow |= methods
    return tuple(sorted(allow)) or None


class ReferenceTests(SynchronousTestCase):
    """
    The router agrees with a slow reference that sorts every route.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        _route_configs(),
        st.sampled_from(_HOSTS),
        st.sampled_from(_PATHS + ("/a/b/", "/abc", "/b/a")),
        st.sampled_from(("GET", "HEAD", "POST", "DELETE")),
        st.lists(st.sampled_from([(b"X-A", b"1"), (b"X-A", b"2"), (b"x-b", b"1")])),
    )
    def test_same_winner(
        self,
        configs: list[RouteConfig],
        host: str,
        path: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """For random tables and requests, the winner is the reference's."""
        req = request(path, method, host=host, headers=headers)
        try:
            got: object = router(*configs).match(req)
        except MethodNotAllowed as e:
            got = e.allow
        except NoRoute:
            got = None
        self.assertEqual(got, _reference(configs, req))


class PreflightTests(SynchronousTestCase):
    """CORS preflights go to the route of the method they ask about."""

    def router(self) -> Router[str]:
        return router(
            route("gets", path_prefix="/api", methods=("GET",)),
            route("puts", 1, path_prefix="/api", methods=("PUT",)),
        )

    def preflight(self, method: bytes, origin: bool = True) -> Request:
        fields = [(b"Access-Control-Request-Method", method)]
        if origin:
            fields.append((b"Origin", b"https://app.example"))
        return Request("OPTIONS", b"/api/x", "/api/x", headers=Headers(fields))

    def test_preflight_routed_by_asked_method(self):
        """A preflight for PUT reaches the PUT route even though it lists no OPTIONS."""
        self.assertEqual(self.router().match(self.preflight(b"PUT")), "puts")
        self.assertEqual(self.router().match(self.preflight(b"get")), "gets")

    def test_plain_options_not_special(self):
        """OPTIONS without Origin is matched on OPTIONS, as any method."""
        with self.assertRaises(MethodNotAllowed):
            self.router().match(self.preflight(b"PUT", origin=False))

    def test_unserved_method_falls_back(self):
        """A preflight for a method no route serves is matched as OPTIONS."""
        with self.assertRaises(MethodNotAllowed):
            self.router().match(self.preflight(b"DELETE"))
