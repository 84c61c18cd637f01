"""
The configuration as frozen model objects.

Everything here is built by L{gatewaykit.config.load_config} from a validated YAML
file; nothing in the running gateway mutates it. A reload builds a new
L{Config} and swaps it in.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import Any, Mapping, Optional, Union

from attrs import field, frozen

from gatewaykit.config.errors import ConfigProblem

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

KiB = 1024
MiB = 1024 * KiB


@frozen
class Limits:
    """C{gateway.limits}: bounds on what one client request may be."""

    max_header_bytes: int = 16 * KiB
    max_body_bytes: int = 10 * MiB
    max_uri_bytes: int = 8 * KiB
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    # No byte of a request body for this long: 408 (nginx's client_body_timeout).
    body_timeout: float = 60.0


@frozen
class AccessLogConfig:
    """C{gateway.access_log}."""

    path: str = "-"  # "-" (stdout), "off", or an absolute file path
    format: str = "combined"  # combined | json


@frozen
class SentinelConfig:
    """C{gateway.redis.sentinel}: find the Redis master through Sentinels."""

    master: str
    addresses: tuple[tuple[str, int], ...]


@frozen
class RedisConfig:
    """
    C{gateway.redis}: the shared state store. C{on_error} says what rate
    limits do when Redis cannot answer within C{timeout}: C{open} (allow),
    C{closed} (503) or C{local} (an in-process limiter enforcing
    C{local_share} of each limit).
    """

    url: str = "redis://127.0.0.1:6379/0"
    sentinel: Optional[SentinelConfig] = None
    timeout: float = 0.25
    on_error: str = "local"
    local_share: float = 1.0


@frozen
class AdminConfig:
    """
    C{gateway.admin}: where the admin API listens, and the bearer token every
    admin call needs (empty: none).
    """

    host: str = "127.0.0.1"
    port: int = 9901
    token: str = field(default="", repr=False, metadata={"secret": True})

    @property
    def bind(self) -> str:
        """C{host:port}, with brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@frozen
class GatewayConfig:
    """The C{gateway} section."""

    node: str
    workers: Union[int, str] = 1  # an int, or "auto"
    drain_timeout: float = 30.0
    trusted_proxies: tuple[Network, ...] = ()
    limits: Limits = Limits()
    access_log: AccessLogConfig = AccessLogConfig()
    redis: Optional[RedisConfig] = None
    admin: Optional[AdminConfig] = None  # absent: no admin API


@frozen
class CertificateConfig:
    """
    One entry of C{listeners.NAME.tls.certificates}, read and checked when
    the config loads: the PEM chain (leaf first) and key, the DNS names of
    the leaf's SANs (lower case, C{*.} wildcards kept) SNI chooses it by,
    and the DER OCSP response to staple, if any.
    """

    cert: str  # the file paths, for messages
    key: str
    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    names: tuple[str, ...] = ()
    not_after: float = 0.0  # POSIX time the leaf expires
    ocsp: Optional[str] = None
    ocsp_der: Optional[bytes] = field(default=None, repr=False)


@frozen
class ListenerTLSConfig:
    """
    C{listeners.NAME.tls} of an https listener. C{ciphers} is the OpenSSL
    cipher string for TLS 1.2 (TLS 1.3 suites are all AEAD and left at
    OpenSSL's). C{client_ca_pem} holds the CA bundle mTLS verifies against.
    """

    certificates: tuple[CertificateConfig, ...]
    min_version: str = "1.2"
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    client_ca: Optional[str] = None
    client_ca_pem: Optional[bytes] = field(default=None, repr=False)
    client_auth: str = "none"  # none | optional | required
    hsts: int = 0  # max-age seconds; 0: no Strict-Transport-Security
    ciphers: Optional[str] = None  # None: the Mozilla "intermediate" list
    session_tickets: bool = True


@frozen
class ListenerConfig:
    """One entry of C{listeners}."""

    name: str
    protocol: str  # http | https | tcp | tls_passthrough
    host: str  # "" means every interface
    port: int
    upstream: Optional[str] = None  # tcp: where the bytes go
    idle_timeout: float = 3600.0  # tcp, tls_passthrough: a tunnel with no bytes is closed
    tls: Optional[ListenerTLSConfig] = None  # https
    # tls_passthrough: (server name, upstream) pairs; names are exact,
    # "*.example.com" or "*" (any other, and clients without SNI).
    sni: tuple[tuple[str, str], ...] = ()


@frozen
class TargetConfig:
    """One target of an upstream."""

    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        """C{host:port}, with brackets around an IPv6 host."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@frozen
class UpstreamTimeouts:
    """C{upstreams.NAME.timeouts}, in seconds."""

    connect: float = 2.0
    response: float = 60.0  # request fully sent -> response head received
    idle: float = 90.0  # no bytes either way on an active exchange


@frozen
class PoolConfig:
    """C{upstreams.NAME.pool}: keep-alive connections kept per target."""

    max_idle_per_target: int = 64
    idle_timeout: float = 60.0


@frozen
class HashKey:
    """
    C{upstreams.NAME.hash_key}: what the C{hash} balancer hashes. C{kind} is
    C{ip}, C{path}, C{header}, C{cookie} or C{query}; the last three name a
    field, cookie or parameter in C{name}.
    """

    kind: str = "ip"
    name: Optional[str] = None

    KINDS = ("ip", "path", "header", "cookie", "query")

    @classmethod
    def parse(cls, text: str) -> "HashKey":
        """C{ip}, C{path}, C{header:NAME}, C{cookie:NAME} or C{query:NAME}."""
        kind, sep, name = text.partition(":")
        if kind not in cls.KINDS:
            raise ValueError(
                f"unknown hash key {text!r}; expected ip, path, header:NAME,"
                " cookie:NAME or query:NAME"
            )
        if kind in ("ip", "path"):
            if sep:
                raise ValueError(f"hash key {kind!r} takes no name")
            return cls(kind)
        if not name:
            raise ValueError(f"hash key {kind!r} needs a name: {kind}:NAME")
        return cls(kind, name.lower() if kind == "header" else name)

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}:{self.name}"


@frozen
class HealthCheckConfig:
    """
    C{upstreams.NAME.health}: active checks of every target, either an HTTP
    C{GET path} expecting a status in C{expect_status}, or (C{tcp}) a
    connection that opens.
    """

    path: Optional[str] = None
    tcp: bool = False
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)

    def expects(self, status: int) -> bool:
        """Whether C{status} counts as healthy."""
        return any(low <= status <= high for low, high in self.expect_status)


@frozen
class OutlierConfig:
    """
    C{upstreams.NAME.outlier}: eject a target after C{consecutive_failures}
    failures of real requests, for C{base_ejection} doubled on each repeat
    (at most 10 times it), never more than C{max_ejected_percent} of targets.
    """

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejected_percent: int = 50


@frozen
class RetryConfig:
    """
    C{upstreams.NAME.retries}: C{attempts} extra tries, on another target when
    there is one, for the failures in C{on} (C{connect_failure}, C{reset},
    C{timeout} or a 5xx status code), each try limited to C{per_try_timeout}
    (0: no limit), retries adding at most C{budget_percent} of the requests of
    the last seconds (retries after a connect failure are free: nothing was
    sent). Without the key, a failed connection is tried once on another
    target, as nginx does.
    """

    attempts: int = 2
    on: tuple[Union[str, int], ...] = ("connect_failure", "reset", 502, 503, 504)
    per_try_timeout: float = 0.0
    budget_percent: float = 20.0

    CONDITIONS = ("connect_failure", "reset", "timeout")


DEFAULT_RETRIES = RetryConfig(attempts=1, on=("connect_failure",))


@frozen
class CircuitBreakerConfig:
    """
    C{upstreams.NAME.circuit_breaker}: at most C{max_requests} requests in
    flight and C{max_pending} waiting for a connection; beyond, 503
    C{circuit_open} at once.
    """

    max_requests: int = 1024
    max_pending: int = 1024


@frozen
class StickyConfig:
    """
    C{upstreams.NAME.sticky}: the first response sets C{cookie} naming the
    client's session; later requests with it go to the same target while it
    is available. The session -> target map lives in the state store for
    C{ttl} (refreshed by use), so every worker and node agrees.
    """

    cookie: str = "gk_sticky"
    ttl: float = 3600.0


@frozen
class UpstreamTLSConfig:
    """
    C{upstreams.NAME.tls}, for C{scheme: https}: verify the target's
    certificate against C{ca} (default: the system's trust store) and its
    name against C{server_name} (default: the target's host), which is also
    sent as SNI; present C{client_cert} when given. Files are read when the
    config loads.
    """

    verify: bool = True
    ca: Optional[str] = None
    ca_pem: Optional[bytes] = field(default=None, repr=False)
    server_name: Optional[str] = None
    client_cert: Optional[str] = None
    client_cert_pem: Optional[bytes] = field(default=None, repr=False)
    client_key: Optional[str] = None
    client_key_pem: Optional[bytes] = field(default=None, repr=False)


@frozen
class UpstreamConfig:
    """One entry of C{upstreams}."""

    name: str
    targets: tuple[TargetConfig, ...]
    balancer: str = "round_robin"
    hash_key: HashKey = HashKey()
    scheme: str = "http"
    tls: UpstreamTLSConfig = UpstreamTLSConfig()
    health: Optional[HealthCheckConfig] = None
    outlier: Optional[OutlierConfig] = None
    retries: RetryConfig = DEFAULT_RETRIES
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    sticky: Optional[StickyConfig] = None
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    pool: PoolConfig = PoolConfig()
    host: Optional[str] = None  # the Host sent upstream; None: the client's

    @property
    def host_field(self) -> Optional[bytes]:
        """The C{Host} value sent to targets, or C{None} to keep the client's."""
        return None if self.host is None else self.host.encode("ascii")


@frozen
class Condition:
    """
    One C{headers}/C{query}/C{cookies} condition: an exact value, a regular
    expression searched (a value starting with C{~}), or presence (C{"*"}).
    """

    name: str
    value: str
    pattern: Optional[re.Pattern[str]] = field(default=None, eq=False)

    @classmethod
    def parse(cls, name: str, value: str) -> "Condition":
        """Build a condition from its config form; may raise C{re.error}."""
        if value.startswith("~"):
            return cls(name, value, re.compile(value[1:]))
        return cls(name, value)

    def matches(self, actual: Optional[str]) -> bool:
        """Whether C{actual} (C{None} when absent) satisfies this condition."""
        if actual is None:
            return False
        if self.pattern is not None:
            return self.pattern.search(actual) is not None
        return self.value == "*" or actual == self.value


@frozen
class Match:
    """C{routes[].match}: every condition given must hold."""

    hosts: tuple[str, ...] = ()  # lower case; "*.example.com" wildcards
    path: Optional[str] = None
    path_prefix: Optional[str] = None
    path_regex: Optional[re.Pattern[str]] = field(default=None, eq=False)
    methods: tuple[str, ...] = ()  # upper case
    headers: tuple[Condition, ...] = ()
    query: tuple[Condition, ...] = ()
    cookies: tuple[Condition, ...] = ()

    @property
    def condition_count(self) -> int:
        """How many non-path conditions there are (for specificity)."""
        return (
            (1 if self.methods else 0)
            + len(self.headers)
            + len(self.query)
            + len(self.cookies)
        )


@frozen
class StaticAction:
    """C{static}: serve files under C{root} (an absolute path)."""

    root: str
    index: str = "index.html"


@frozen
class RedirectAction:
    """C{redirect}: answer with C{status} and C{Location} built from C{to}."""

    to: str
    status: int = 302

    PLACEHOLDERS = ("scheme", "host", "port", "path", "query", "uri")

    @classmethod
    def check_template(cls, to: str) -> str:
        """Return C{to} if its C{{placeholders}} are all known, else raise C{ValueError}."""
        import string

        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(to) if f is not None}
        except ValueError as exc:
            raise ValueError(f"malformed redirect target: {exc}") from None
        unknown = sorted(fields - set(cls.PLACEHOLDERS))
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}} in redirect target;"
                f" known: {', '.join('{' + p + '}' for p in cls.PLACEHOLDERS)}"
            )
        return to


@frozen
class RespondAction:
    """C{respond}: a fixed answer from the gateway."""

    status: int = 200
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@frozen
class SplitSide:
    """One entry of C{routes[].split}: an upstream and its weight (0 sends it nothing)."""

    upstream: str
    weight: int


SPLIT_KEY_KINDS = ("ip", "header", "cookie")
"""What C{routes[].split_by} may name besides C{random}."""


def parse_split_by(text: str) -> Optional[HashKey]:
    """
    C{random} (C{None}), or C{ip}, C{header:NAME} or C{cookie:NAME}: the key
    whose hash keeps one client on one side of a split.
    """
    if text == "random":
        return None
    try:
        key = HashKey.parse(text)
    except ValueError:
        key = None
    if key is None or key.kind not in SPLIT_KEY_KINDS:
        raise ValueError(
            f"unknown split key {text!r}; expected random, ip, header:NAME or cookie:NAME"
        )
    return key


@frozen
class MirrorConfig:
    """
    C{routes[].mirror}: copies of C{percent} of the route's requests go to
    C{upstream}, their answers discarded; at most C{max_in_flight} copies
    at once, and none of a body over C{max_body_bytes}.
    """

    upstream: str
    percent: float = 100.0
    max_in_flight: int = 100
    max_body_bytes: int = 256 * KiB


Action = Union[str, StaticAction, RedirectAction, RespondAction]


@frozen
class PolicyConfig:
    """
    One entry of C{policies}: its C{type} (a policy plugin's name) and the
    C{options} that plugin's factory checked (its own object, or a C{dict}).
    """

    name: str
    type: str
    options: Any = field(eq=False, hash=False, default=None)


@frozen
class WebSocketConfig:
    """
    C{routes[].websocket}: C{Upgrade: websocket} requests are proxied and
    become tunnels; at most C{max_tunnels} at once on the route (0: no cap),
    each closed after C{idle_timeout} without a byte either way.
    """

    max_tunnels: int = 0
    idle_timeout: float = 3600.0


@frozen
class RouteConfig:
    """
    One entry of C{routes}. Exactly one of C{upstream}, C{split}, C{static},
    C{redirect}, C{respond} is set. C{split_by} (C{None}: random) goes with
    C{split}; C{mirror} may go with any action.
    """

    name: str
    index: int  # position in the file, the last tie-breaker
    listeners: tuple[str, ...]
    match: Match = Match()
    upstream: Optional[str] = None
    static: Optional[StaticAction] = None
    redirect: Optional[RedirectAction] = None
    respond: Optional[RespondAction] = None
    split: tuple[SplitSide, ...] = ()
    split_by: Optional[HashKey] = None
    mirror: Optional[MirrorConfig] = None
    timeout: Optional[float] = None  # overrides the upstream's response timeout
    policies: tuple[str, ...] = ()  # names under the top-level policies, in order
    websocket: Optional[WebSocketConfig] = None  # None: upgrades are not tunnelled
    # Announced to clients (docs/api-versioning.md): POSIX seconds, and URLs.
    deprecation: Optional[int] = None
    sunset: Optional[int] = None
    successor: Optional[str] = None
    deprecation_link: Optional[str] = None


def frozen_mapping(items: Mapping) -> Mapping:
    """A read-only view of a copy of C{items}."""
    return MappingProxyType(dict(items))


@frozen
class Config:
    """A whole validated configuration."""

    source: str  # the file it was read from
    digest: str  # sha256 of the file's bytes
    gateway: GatewayConfig
    listeners: Mapping[str, ListenerConfig] = field(
        factory=dict, converter=frozen_mapping
    )
    upstreams: Mapping[str, UpstreamConfig] = field(
        factory=dict, converter=frozen_mapping
    )
    policies: Mapping[str, PolicyConfig] = field(factory=dict, converter=frozen_mapping)
    routes: tuple[RouteConfig, ...] = ()
    # What loads but deserves a look (an expired certificate...): printed
    # by "gatewaykit check" as PATH:LINE:COL: warning: message.
    warnings: tuple[ConfigProblem, ...] = field(default=(), eq=False)
