"""
Loading gatewaykit's YAML configuration into the frozen model.

The keys each section allows are declared as tables of parsers (see
L{gatewaykit.config.schema}); what cannot be said per key (references
between sections, "exactly one action", overlapping binds) is checked by
the few functions below them. Every problem is collected before anything
is raised, so one run reports every mistake.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from datetime import date, datetime, timezone
from typing import Any, Iterator, Mapping, Optional, Union
from urllib.parse import urlsplit

from gatewaykit.config.addresses import (
    parse_bind,
    parse_network,
    parse_route_host,
    parse_target,
)
from gatewaykit.config.errors import ConfigError, ConfigProblem
from gatewaykit.config.model import (
    AccessLogConfig,
    AdminConfig,
    CircuitBreakerConfig,
    Condition,
    Config,
    GatewayConfig,
    HashKey,
    HealthCheckConfig,
    Limits,
    ListenerConfig,
    Match,
    MirrorConfig,
    OutlierConfig,
    PolicyConfig,
    PoolConfig,
    RedirectAction,
    RedisConfig,
    RespondAction,
    RetryConfig,
    RouteConfig,
    SentinelConfig,
    SplitSide,
    StaticAction,
    StickyConfig,
    TargetConfig,
    UpstreamConfig,
    UpstreamTimeouts,
    WebSocketConfig,
    parse_split_by,
)
from gatewaykit.config.schema import (
    MISSING,
    Check,
    Context,
    Invalid,
    Key,
    Parser,
    Section,
    boolean,
    converted,
    describe,
    did_you_mean,
    duration,
    expect_list,
    expect_map,
    identity,
    integer,
    is_null,
    list_of,
    number,
    one_of,
    pairs,
    position,
    reference,
    size,
    text,
    token,
    wrong,
)
from gatewaykit.config.tls import (
    check_route_hosts,
    listener_tls,
    sni_mapping,
    upstream_tls,
)
from gatewaykit.config.yamlpos import MapNode, Node, ScalarNode, compose, plain
from gatewaykit.plugins import DuplicatePluginName, balancer_factories, policy_factories

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VISIBLE = re.compile(r"[!-~]+")
_HTTP_PROTOCOLS = ("http", "https")
_ACTIONS = ("upstream", "split", "static", "redirect", "respond")
_PATH_KINDS = ("path", "path_prefix", "path_regex")


# -- value checks: text in, value out, ValueError for a mistake -------------


def _name(kind: str) -> Check:
    def check(value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{kind} name {value!r} may contain only letters, digits, '.', '_'"
                f" and '-', and must start with a letter or digit"
            )
        return value

    return check


def _node_name(value: str) -> str:
    if not _VISIBLE.fullmatch(value):
        raise ValueError(f"a node name cannot contain spaces, got {value!r}")
    return value


_token = token


def _method(value: str) -> str:
    return _token("method")(value).upper()


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value cannot contain CR, LF or NUL")
    return value


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"a path must start with '/', got {value!r}")
    if any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"a path cannot contain spaces, '?' or '#', got {value!r}")
    return value


def _path_prefix(value: str) -> str:
    # "/users/" and "/users" mean the same segment-boundary prefix.
    return _path(value).rstrip("/") or "/"


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e}") from None


def _condition_value(value: str) -> str:
    if value.startswith("~"):
        _regex(value[1:])
    return value


def _file_name(value: str) -> str:
    if "/" in value or value in (".", ".."):
        raise ValueError(f"expected a file name without '/', got {value!r}")
    return value


def _upstream_host(value: str) -> str:
    """C{upstreams.NAME.host}: a host name or IP, with an optional port."""
    text = value.strip()
    if text.endswith("]") or ":" not in text:
        if "*" in parse_route_host(text):
            raise ValueError(f"the Host sent upstream cannot be a wildcard, got {value!r}")
    else:
        parse_target(text)
    return text


_LINK_UNSAFE = re.compile(r'[\s<>"\x00-\x1f\x7f]')


def _link_target(value: str) -> str:
    """A C{Link} target: a path on this gateway, or an http(s) URL."""
    parts = urlsplit(value)
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not (absolute or (value.startswith("/") and not value.startswith("//"))):
        raise ValueError(f"expected a path like /v2/ or an http(s) URL, got {value!r}")
    if not value.isascii() or _LINK_UNSAFE.search(value):
        raise ValueError(
            f"a link cannot contain spaces, '<', '>', '\"' or non-ASCII characters, got {value!r}"
        )
    return value


# -- parsers needing the context ---------------------------------------------


def _moment(ctx: Context, node: Node) -> int:
    """An ISO 8601 date (its midnight UTC) or time with an offset, as POSIX seconds."""
    expected = (
        "an ISO 8601 date like 2026-12-31 or a time with its offset"
        " like 2026-12-31T23:59:59Z"
    )
    if not isinstance(node, ScalarNode) or not isinstance(node.value, (str, date)):
        raise wrong(node, expected)
    written = node.text.strip()
    try:
        moment = datetime.fromisoformat(written)
    except ValueError:
        raise wrong(node, expected) from None
    if moment.tzinfo is None:
        try:
            date.fromisoformat(written)
        except ValueError:
            raise Invalid(
                node, f"give the time's offset (Z for UTC, or like +02:00), got {written!r}"
            ) from None
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _in_config_dir(ctx: Context, path: str) -> str:
    return os.path.normpath(os.path.join(ctx.base_dir, path))


def _access_log_path(ctx: Context, node: Node) -> str:
    path = text()(ctx, node)
    return path if path in ("-", "off") else _in_config_dir(ctx, path)


def _directory(ctx: Context, node: Node) -> str:
    written = text(expected="a directory")(ctx, node)
    path = _in_config_dir(ctx, written)
    if not os.path.isdir(path):
        raise Invalid(node, f"{written!r} is not an existing directory ({path})")
    return path


def _workers(ctx: Context, node: Node) -> Union[int, str]:
    if isinstance(node, ScalarNode) and node.value == "auto":
        return "auto"
    try:
        count: int = integer(minimum=1)(ctx, node)
    except Invalid:
        raise wrong(node, "an integer >= 1 or 'auto'") from None
    return count


def conditions(name_check: Optional[Check] = None) -> Parser:
    """
    A mapping of name -> L{Condition} (exact, C{~regex} or C{"*"}), as
    routes match on and C{request_filter} rules use.
    """
    parse_pairs = pairs(converted(_condition_value), name_check)
    return lambda ctx, node: tuple(
        Condition.parse(name, value) for name, value in parse_pairs(ctx, node)
    )


def _target(ctx: Context, node: Node) -> TargetConfig:
    if isinstance(node, MapNode):
        values = TARGET(ctx, node)
        host, port = values.pop("address")
        return TargetConfig(host, port, **values)
    expected = "host:port or {address: host:port, weight: N}"
    return TargetConfig(*converted(parse_target, expected)(ctx, node))


def _status_range(ctx: Context, node: Node) -> tuple[int, int]:
    expected = "a status like 200 or a range like 200-399"
    value = node.value if isinstance(node, ScalarNode) else None
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and value.count("-") <= 1:
        first, _, last = value.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise wrong(node, expected) from None
    else:
        raise wrong(node, expected)
    if not 100 <= low <= high <= 599:
        raise Invalid(node, f"expected statuses from 100 to 599, low to high; got {value!r}")
    return low, high


def _expect_status(ctx: Context, node: Node) -> tuple[tuple[int, int], ...]:
    if isinstance(node, ScalarNode):
        return (_status_range(ctx, node),)
    return list_of(_status_range, non_empty=True, what="status")(ctx, node)


def _health(ctx: Context, node: Node) -> HealthCheckConfig:
    values = HEALTH(ctx, node)
    entries = expect_map(node).entries
    http, tcp = "path" in values, values.get("tcp", False)
    if http == tcp:
        ctx.report(node, "a health check needs exactly one of path: /PATH or tcp: true")
    if tcp and "expect_status" in values:
        ctx.report(entries["expect_status"][0], "expect_status is for HTTP checks (path)")
    return HealthCheckConfig(**values)


def _retry_condition(ctx: Context, node: Node) -> Union[str, int]:
    expected = "connect_failure, reset, timeout or a 5xx status"
    value = node.value if isinstance(node, ScalarNode) else None
    if isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599:
        return value
    if isinstance(value, str):
        if value in RetryConfig.CONDITIONS:
            return value
        raise Invalid(
            node,
            f"unknown retry condition {value!r}; expected {expected}"
            + did_you_mean(value, RetryConfig.CONDITIONS),
        )
    raise wrong(node, expected)


def _websocket(ctx: Context, node: Node) -> Optional[WebSocketConfig]:
    """C{true}, C{false}, or C{{max_tunnels, idle_timeout}}."""
    if isinstance(node, ScalarNode) and isinstance(node.value, bool):
        return WebSocketConfig() if node.value else None
    return WEBSOCKET(ctx, node)


# -- the tables ----------------------------------------------------------------

WEBSOCKET = Section(
    {"max_tunnels": integer(minimum=0), "idle_timeout": duration()}
).into(WebSocketConfig)

HEALTH = Section(
    {
        "path": converted(_path, "a path"),
        "tcp": boolean,
        "interval": duration(),
        "timeout": duration(),
        "healthy_threshold": integer(minimum=1),
        "unhealthy_threshold": integer(minimum=1),
        "expect_status": _expect_status,
    }
)

LIMITS = Section(
    {
        "max_header_bytes": size(minimum=1),
        "max_body_bytes": size(),
        "max_uri_bytes": size(minimum=1),
        "header_timeout": duration(),
        "idle_timeout": duration(),
        "body_timeout": duration(),
    }
).into(Limits)

ACCESS_LOG = Section(
    {"path": _access_log_path, "format": one_of("combined", "json", what="format")}
).into(AccessLogConfig)

def _redis_url(url: str) -> str:
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss") or "://" not in url:
        raise ValueError(f"expected a redis:// or rediss:// URL, got {url!r}")
    return url


REDIS = Section(
    {
        "url": converted(_redis_url, "a redis:// URL"),
        "sentinel": Section(
            {
                "master": Key(text(expected="a master name"), required=True),
                "addresses": Key(
                    list_of(converted(parse_target, "host:port"), non_empty=True),
                    required=True,
                ),
            }
        ).into(SentinelConfig),
        "timeout": duration(),
        "on_error": one_of("open", "closed", "local", what="on_error"),
        "local_share": number(0.01, 1),
    }
).into(RedisConfig)

def _admin_token(value: str) -> str:
    if value and not _VISIBLE.fullmatch(value):
        raise ValueError(
            "an admin token must be visible ASCII without spaces (it is sent in a header)"
        )
    return value


def _admin(ctx: Context, node: Node) -> AdminConfig:
    values = ADMIN(ctx, node)
    if "bind" in values:
        values["host"], values["port"] = values.pop("bind")
    return AdminConfig(**values)


ADMIN = Section(
    {
        "bind": converted(parse_bind, "host:port"),
        "token": converted(_admin_token, "a token"),
    }
)

GATEWAY = Section(
    {
        "node": converted(_node_name, "a node name"),
        "workers": _workers,
        "drain_timeout": duration(positive=False),
        "trusted_proxies": list_of(converted(parse_network, "a CIDR")),
        "limits": LIMITS,
        "access_log": ACCESS_LOG,
        "redis": REDIS,
        "admin": _admin,
    },
)

LISTENER = Section(
    {
        "protocol": Key(
            one_of("http", "https", "tcp", "tls_passthrough", what="protocol"),
            required=True,
        ),
        "bind": Key(converted(parse_bind, "host:port"), required=True),
        "upstream": reference("upstream"),
        "idle_timeout": duration(),
        "tls": listener_tls,
        "sni": sni_mapping,
    },
)

# The protocols each key beyond protocol and bind is for.
_KEY_PROTOCOLS = {
    "upstream": ("tcp",),
    "idle_timeout": ("tcp", "tls_passthrough"),
    "tls": ("https",),
    "sni": ("tls_passthrough",),
}
# The key each protocol needs, and what to say when it is missing.
_NEEDED_KEY = {
    "tcp": ("upstream", "needs an upstream: NAME"),
    "https": ("tls", "needs a tls section with certificates: [{cert: FILE, key: FILE}]"),
    "tls_passthrough": ("sni", 'needs an sni mapping of server names to upstreams ("*": NAME)'),
}

TARGET = Section(
    {
        "address": Key(converted(parse_target, "host:port"), required=True),
        "weight": integer(1, 1000),
    }
)

UPSTREAM = Section(
    {
        "targets": Key(
            list_of(
                _target,
                non_empty=True,
                unique=lambda target: target.address,
                what="target",
            ),
            required=True,
        ),
        "balancer": text(expected="a balancer name"),
        "hash_key": converted(HashKey.parse, "a hash key"),
        "scheme": one_of("http", "https", what="scheme"),
        "tls": upstream_tls,
        "health": _health,
        "outlier": Section(
            {
                "consecutive_failures": integer(minimum=1),
                "base_ejection": duration(),
                "max_ejected_percent": integer(0, 100),
            }
        ).into(OutlierConfig),
        "retries": Section(
            {
                "attempts": integer(0, 10),
                "on": list_of(_retry_condition, unique=str, what="retry condition"),
                "per_try_timeout": duration(positive=False),
                "budget_percent": number(0, 100),
            }
        ).into(RetryConfig),
        "circuit_breaker": Section(
            {"max_requests": integer(minimum=1), "max_pending": integer(minimum=1)}
        ).into(CircuitBreakerConfig),
        "sticky": Section(
            {"cookie": converted(_token("cookie name"), "a cookie name"), "ttl": duration()}
        ).into(StickyConfig),
        "timeouts": Section(
            {"connect": duration(), "response": duration(), "idle": duration()}
        ).into(UpstreamTimeouts),
        "pool": Section(
            {"max_idle_per_target": integer(minimum=0), "idle_timeout": duration()}
        ).into(PoolConfig),
        "host": converted(_upstream_host, "a host name"),
    },
)

MATCH = Section(
    {
        "hosts": list_of(
            converted(parse_route_host, "a host name"), unique=str, what="host"
        ),
        "path": converted(_path, "a path"),
        "path_prefix": converted(_path_prefix, "a path"),
        "path_regex": converted(_regex, "a regular expression"),
        "methods": list_of(converted(_method, "a method"), unique=str, what="method"),
        "headers": conditions(_token("header name")),
        "query": conditions(),
        "cookies": conditions(),
    }
)


def _match(ctx: Context, node: Node) -> Match:
    values = MATCH(ctx, node)
    entries = expect_map(node).entries
    given = [k for k in entries if k in _PATH_KINDS and not is_null(entries[k][1])]
    for kind in given[1:]:
        ctx.report(
            entries[kind][0],
            f"only one of path, path_prefix and path_regex may be given;"
            f" this match already has {given[0]!r}",
        )
    return Match(**values)


SPLIT_SIDE = Section(
    {
        "upstream": Key(reference("upstream"), required=True),
        "weight": Key(integer(0, 1_000_000), required=True),
    }
).into(SplitSide)

MIRROR = Section(
    {
        "upstream": Key(reference("upstream"), required=True),
        "percent": number(0, 100),
        "max_in_flight": integer(minimum=1),
        "max_body_bytes": size(),
    }
).into(MirrorConfig)


def _check_sunset(ctx: Context, route: MapNode, values: Mapping[str, Any]) -> None:
    """RFC 9745: a resource cannot go away before it is deprecated."""
    if values.get("sunset", float("inf")) < values.get("deprecation", float("-inf")):
        ctx.report(route.node_of("sunset"), "the sunset cannot be earlier than the deprecation")


def _check_split(ctx: Context, route: MapNode, values: Mapping[str, Any]) -> None:
    """What the keys of a split cannot say alone: a weight to share, a key with a split."""
    if "split" in values and not any(side.weight for side in values["split"]):
        ctx.report(route.node_of("split"), "a split needs at least one weight above 0")
    if "split_by" in route.entries and "split" not in route.entries:
        ctx.report(route.entries["split_by"][0], "split_by goes with split")
    if values.get("websocket") is not None and not ("upstream" in values or "split" in values):
        ctx.report(
            route.entries["websocket"][0],
            "websocket goes with upstream or split: only a proxied route can tunnel",
        )


ROUTE = Section(
    {
        "name": Key(converted(_name("route"), "a name"), required=True),
        "listeners": list_of(
            reference("listener"), non_empty=True, unique=str, what="listener"
        ),
        "match": _match,
        "upstream": reference("upstream"),
        "static": Section(
            {"root": Key(_directory, required=True), "index": converted(_file_name)}
        ).into(StaticAction),
        "redirect": Section(
            {
                "to": Key(
                    converted(RedirectAction.check_template, "a URL"), required=True
                ),
                "status": integer(choices=(301, 302, 303, 307, 308)),
            }
        ).into(RedirectAction),
        "respond": Section(
            {
                "status": integer(200, 599),
                "body": text(non_empty=False),
                "headers": pairs(converted(_header_value), _token("header name")),
            }
        ).into(RespondAction),
        "timeout": duration(),
        "policies": list_of(reference("policy"), unique=str, what="policy"),
        "websocket": _websocket,
        "split": list_of(
            SPLIT_SIDE, non_empty=True, unique=lambda side: side.upstream, what="split upstream"
        ),
        "split_by": converted(parse_split_by, "a split key"),
        "mirror": MIRROR,
        "deprecation": _moment,
        "sunset": _moment,
        "successor": converted(_link_target, "a path or URL"),
        "deprecation_link": converted(_link_target, "a path or URL"),
    },
)

TOP = Section(
    {
        "gateway": identity,
        "listeners": identity,
        "upstreams": identity,
        "routes": identity,
        "policies": identity,
    },
)


# -- what the tables cannot say ------------------------------------------------


def _named_entries(
    ctx: Context, node: Node, kind: str, body: Section
) -> Iterator[tuple[str, MapNode, dict[str, Any]]]:
    """Each C{name: {...}} entry of a mapping whose body parsed."""
    for name, (key_node, value_node) in expect_map(node).entries.items():
        try:
            _name(kind)(name)
        except ValueError as e:
            ctx.report(key_node, str(e))
        values = ctx.attempt(body, value_node)
        if values is not MISSING:
            yield name, expect_map(value_node), values


def _overlaps(a: ListenerConfig, b: ListenerConfig) -> bool:
    every_interface = ("", "0.0.0.0", "::")
    return a.port == b.port != 0 and (
        a.host == b.host or a.host in every_interface or b.host in every_interface
    )


def _listeners(ctx: Context, node: Node) -> dict[str, ListenerConfig]:
    listeners: dict[str, ListenerConfig] = {}
    for name, body, values in _named_entries(ctx, node, "listener", LISTENER):
        host, port = values.pop("bind")
        protocol = values["protocol"]
        needed = _NEEDED_KEY.get(protocol)
        if needed is not None and needed[0] not in body.entries:
            ctx.report(body, f"{protocol} listener {name!r} {needed[1]}")
        for key, protocols in _KEY_PROTOCOLS.items():
            if key in body.entries and protocol not in protocols:
                ctx.report(
                    body.entries[key][0],
                    f"{key!r} is only for {' and '.join(protocols)} listeners",
                )
                values.pop(key, None)
        listener = ListenerConfig(name=name, host=host, port=port, **values)
        for other in listeners.values():
            if _overlaps(listener, other):
                ctx.report(
                    body.node_of("bind"),
                    f"listener {name!r} binds the same port as listener"
                    f" {other.name!r} ({other.host or '*'}:{other.port})",
                )
                break
        listeners[name] = listener
    return listeners


class _Balancers:
    """The balancer plugins, looked up once per load and only when needed."""

    def __init__(self) -> None:
        self.found: Optional[Mapping[str, Any]] = None
        self.error: Optional[str] = None

    def check(self, ctx: Context, name: str, node: Node) -> None:
        """Report C{name} at C{node} unless exactly one plugin has it."""
        if self.found is None:
            try:
                self.found = balancer_factories()
            except DuplicatePluginName as e:
                self.found = {}
                # Said once: it is about the plugins, not about each upstream.
                self.error = f"cannot choose a balancer: {e}"
                ctx.report(node, self.error)
        if self.error is None and name not in self.found:
            names = ", ".join(sorted(self.found)) or "none"
            ctx.report(
                node,
                f"unknown balancer {name!r}{did_you_mean(name, self.found)}"
                f" (balancers found: {names})",
            )


def _policies(ctx: Context, node: Node) -> dict[str, PolicyConfig]:
    """Each policy's options, checked by its type's plugin."""
    policies: dict[str, PolicyConfig] = {}
    try:
        factories: Mapping[str, Any] = policy_factories()
    except DuplicatePluginName as e:
        ctx.report(node, f"cannot choose policies: {e}")
        return policies
    for name, (key_node, body_node) in expect_map(node).entries.items():
        try:
            _name("policy")(name)
        except ValueError as e:
            ctx.report(key_node, str(e))
        body = ctx.attempt(lambda c, n: expect_map(n), body_node)
        if body is MISSING:
            continue
        entry = body.entries.get("type")
        if entry is None:
            ctx.report(body, "a policy needs a type: one of " + ", ".join(sorted(factories)))
            continue
        kind = ctx.attempt(text(expected="a policy type"), entry[1])
        if kind is MISSING:
            continue
        factory = factories.get(kind)
        if factory is None:
            ctx.report(
                entry[1],
                f"unknown policy type {kind!r}{did_you_mean(kind, factories)}"
                f" (policy types found: {', '.join(sorted(factories)) or 'none'})",
            )
            continue
        options_node = MapNode(
            body.line, body.col, {k: v for k, v in body.entries.items() if k != "type"}
        )
        parse = factory.options
        options = ctx.attempt(
            parse if parse is not None else lambda c, n: plain(n), options_node
        )
        if options is not MISSING:
            policies[name] = PolicyConfig(name=name, type=kind, options=options)
    return policies


def _upstreams(ctx: Context, node: Node) -> dict[str, UpstreamConfig]:
    upstreams: dict[str, UpstreamConfig] = {}
    balancers = _Balancers()
    for name, body, values in _named_entries(ctx, node, "upstream", UPSTREAM):
        if "tls" in body.entries and values.get("scheme") != "https":
            ctx.report(body.entries["tls"][0], "'tls' is only for scheme: https upstreams")
        upstream = UpstreamConfig(name=name, **values)
        balancers.check(ctx, upstream.balancer, body.node_of("balancer"))
        upstreams[name] = upstream
    return upstreams


def _routes(
    ctx: Context, node: Node, listeners: Mapping[str, ListenerConfig]
) -> tuple[RouteConfig, ...]:
    routes: list[RouteConfig] = []
    first_seen: dict[str, Node] = {}
    for index, item in enumerate(expect_list(node).items):
        values = ctx.attempt(ROUTE, item)
        if values is MISSING:
            continue
        entries = expect_map(item).entries
        name_node = entries["name"][1]
        if values["name"] in first_seen:
            ctx.report(
                name_node,
                f"duplicate route name {values['name']!r}"
                f" (first at {position(first_seen[values['name']])})",
            )
        first_seen.setdefault(values["name"], name_node)
        actions = [k for k in _ACTIONS if k in entries and not is_null(entries[k][1])]
        if not actions:
            ctx.report(
                item, "a route needs one action: upstream, split, static, redirect or respond"
            )
        _check_split(ctx, expect_map(item), values)
        _check_sunset(ctx, expect_map(item), values)
        for action in actions[1:]:
            ctx.report(
                entries[action][0],
                f"a route has only one action; this one already has {actions[0]!r}",
            )
        for listener_name in values.get("listeners", ()):
            listener = listeners.get(listener_name)
            if listener is not None and listener.protocol not in _HTTP_PROTOCOLS:
                ctx.report(
                    entries["listeners"][1],
                    f"listener {listener_name!r} is a {listener.protocol} listener;"
                    " routes serve http and https listeners",
                )
        if "listeners" not in values:
            if not ctx.names["listener"]:
                ctx.report(
                    item,
                    "no listener to serve this route: define one under 'listeners'",
                )
            values["listeners"] = tuple(
                name
                for name, listener in listeners.items()
                if listener.protocol in _HTTP_PROTOCOLS
            )
        routes.append(RouteConfig(index=index, **values))
    return tuple(routes)


def _check_admin_bind(
    ctx: Context, gateway: Node, admin: AdminConfig, listeners: Mapping[str, ListenerConfig]
) -> None:
    """Report an admin API binding the port of a listener."""
    as_listener = ListenerConfig("admin", "http", admin.host, admin.port)
    for listener in listeners.values():
        if _overlaps(as_listener, listener):
            node = expect_map(gateway).node_of("admin")
            if isinstance(node, MapNode):
                node = node.node_of("bind")
            ctx.report(
                node,
                f"gateway.admin binds the same port as listener {listener.name!r}"
                f" ({listener.host or '*'}:{listener.port})",
            )
            return


def _config(ctx: Context, root: Optional[Node], digest: str) -> Optional[Config]:
    """The model of a composed file, or C{None} if it has problems."""
    if root is None:
        ctx.report_at(
            1,
            1,
            "the configuration is empty; expected a mapping with"
            " gateway, listeners, upstreams and routes",
        )
        return None
    if not isinstance(root, MapNode):
        ctx.report_at(
            1, 1, f"expected a mapping at the top level, got {describe(root)}"
        )
        return None
    sections = ctx.attempt(TOP, root, {})

    def section(key: str, parse: Parser, default: Any) -> Any:
        return (
            ctx.attempt(parse, sections[key], default) if key in sections else default
        )

    def names(key: str) -> tuple[str, ...]:
        node = sections.get(key)
        return tuple(node.entries) if isinstance(node, MapNode) else ()

    # Every name counts for references, even one whose body is wrong, so a
    # mistake in an upstream does not also show up in each route using it.
    ctx.names["listener"] = names("listeners")
    ctx.names["upstream"] = names("upstreams")
    ctx.names["policy"] = names("policies")
    gateway = section("gateway", GATEWAY, {})
    listeners = section("listeners", _listeners, {})
    upstreams = section("upstreams", _upstreams, {})
    policies = section("policies", _policies, {})
    routes = section("routes", lambda c, n: _routes(c, n, listeners), ())
    if "routes" in sections:
        check_route_hosts(ctx, sections["routes"], routes, listeners)
    if "admin" in gateway:
        _check_admin_bind(ctx, sections["gateway"], gateway["admin"], listeners)
    if ctx.problems:
        return None
    return Config(
        source=ctx.source,
        digest=digest,
        gateway=GatewayConfig(**{"node": socket.gethostname(), **gateway}),
        listeners=listeners,
        upstreams=upstreams,
        policies=policies,
        routes=routes,
        warnings=tuple(sorted(ctx.warnings, key=lambda w: (w.line, w.col))),
    )


def _load(
    text: str,
    source: str,
    base_dir: str,
    environ: Optional[Mapping[str, str]],
    digest: str,
) -> Config:
    ctx = Context(source=source, base_dir=os.path.abspath(base_dir))
    environ = os.environ if environ is None else environ
    root = compose(text, environ, ctx.report_at)
    # Only a syntax error stops here; other problems in the tree (such as
    # an unset variable) leave it whole enough to check the rest.
    syntax_error = root is None and ctx.problems
    config = None if syntax_error else _config(ctx, root, digest)
    if config is None:
        raise ConfigError(ctx.problems)
    return config


def parse_config(
    text: str,
    source: str = "inline.yaml",
    base_dir: str = ".",
    environ: Optional[Mapping[str, str]] = None,
) -> Config:
    """
    The configuration in C{text}, with relative paths taken from
    C{base_dir} and C{${VAR}} from C{environ} (default: C{os.environ}).
    Raises L{ConfigError} listing every problem.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return _load(text, source, base_dir, environ, digest)


def load_config(
    path: Union[str, "os.PathLike[str]"],
    environ: Optional[Mapping[str, str]] = None,
) -> Config:
    """
    The configuration in the file at C{path}; relative paths in it are taken
    from the file's folder. Raises L{ConfigError} listing every problem.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        problem = ConfigProblem(source, 1, 1, f"cannot read the file: {e.strerror}")
        raise ConfigError([problem]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        problem = ConfigProblem(source, line, col, "the file is not valid UTF-8")
        raise ConfigError([problem]) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return _load(text, source, base_dir, environ, hashlib.sha256(data).hexdigest())
