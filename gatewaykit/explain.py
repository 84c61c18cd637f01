"""
C{gatewaykit explain}: what the gateway would do with one request, without
sending anything.

The request is not simulated by a second implementation: its bytes go
through the real listener codec, router, policy chain and route action of a
L{Gateway} built from the config, on a fake reactor where a connection
attempt is only recorded. What cannot be known offline (an auth service's
answer, keys behind a URL, Redis, health and load of a running gateway) is
stood in for at the seams the code already has (the policy factories'
HTTP client and thread runner, the state store) and reported as assumed.

The result is a plain dict (the C{--json} output); L{render_text} makes the
readable form and L{exit_code} the command's status. See C{docs/explain.md}.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import (
    Config,
    ListenerConfig,
    RedisConfig,
    RouteConfig,
    StaticAction,
    UpstreamConfig,
)
from gatewaykit.config.schema import TOKEN
from gatewaykit.gateway import Gateway
from gatewaykit.http.errors import PROBLEM_TYPE, GatewayError
from gatewaykit.http.message import Request, Response
from gatewaykit.http.wire import reason_for
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IStateStore
from gatewaykit.listeners.http import HTTP11ServerFactory
from gatewaykit.plugins import policy_factories
from gatewaykit.policies.basic_auth import BasicAuthFactory
from gatewaykit.policies.chain import LATER
from gatewaykit.policies.forward_auth import ForwardAuthFactory
from gatewaykit.policies.jwt import JWTFactory
from gatewaykit.state import Decision
from gatewaykit.state.memory import MemoryStore
from gatewaykit.testing import GatewayReactor, TCPStringTransport
from gatewaykit.upstream.balancers import key_reader
from gatewaykit.upstream.mirror import MirrorExchange
from gatewaykit.upstream.pool import ConnectAttempt

__all__ = ["ExplainError", "exit_code", "explain", "render_json", "render_text"]

EXIT_SERVED = 0
EXIT_CONFIG = 1
EXIT_REFUSED = 2

DEFAULT_PORTS = {"http": 80, "https": 443}
_HTTP_PROTOCOLS = ("http", "https")
_CLIENT_PORT = 50000
# Response fields that say nothing about the decision.
_PLUMBING = frozenset({b"date", b"x-request-id", b"content-length", b"connection", b"via"})
# Set in PolicyCall.values by a policy assumed to pass: the identity it
# would have set is unknown, so an authorize after it cannot be decided.
_IDENTITY_KEY = "explain.identity_unknown"

_PICKS = {
    "round_robin": "the first pick of a fresh balancer; a running gateway takes the next"
    " target in turn",
    "weighted_round_robin": "the first pick of a fresh balancer; a running gateway takes the"
    " next target of its smooth weighted order",
    "least_request": "nothing is in flight on a fresh gateway; a running one picks the"
    " target with the fewest requests in flight",
    "p2c": "two random targets compared on latency and load: may differ from run to run",
    "random": "a random draw by weight: may differ from run to run",
}


class ExplainError(Exception):
    """The request cannot be explained as given (bad URL, header, listener)."""


# -- the request as given ----------------------------------------------------------


@frozen
class TargetURL:
    """An absolute C{http(s)://} URL split the way a client sends it."""

    scheme: str
    host_field: str  # the Host value a client sends: no default port, no userinfo
    host: str  # the host name or address alone (no brackets)
    port: int
    target: str  # the origin-form request target, as written (no fragment)
    userinfo: Optional[str] = None

    @classmethod
    def parse(cls, url: str) -> "TargetURL":
        """Split C{url}; L{ExplainError} when it is not an absolute http(s) URL."""
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in DEFAULT_PORTS:
            raise ExplainError(f"expected an http:// or https:// URL, got {url!r}")
        if any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise ExplainError(f"the URL holds spaces or control characters: {url!r}")
        cuts = [i for i in (rest.find(c) for c in "/?#") if i != -1]
        end = min(cuts) if cuts else len(rest)
        authority, target = rest[:end], rest[end:].partition("#")[0]
        if not target.startswith("/"):
            target = "/" + target
        userinfo, at, host_port = authority.rpartition("@")
        if not host_port:
            raise ExplainError(f"the URL has no host: {url!r}")
        try:
            parts = urlsplit(f"{scheme}://{host_port}")
            port = parts.port
        except ValueError as e:
            raise ExplainError(f"invalid host or port in {url!r}: {e}") from None
        if not parts.hostname:
            raise ExplainError(f"the URL has no host: {url!r}")
        default = DEFAULT_PORTS[scheme]
        # As curl does: the Host field names the port only when not the default.
        host_field = host_port
        if port == default and host_port.endswith(f":{port}"):
            host_field = host_port[: -len(f":{port}")]
        return cls(
            scheme, host_field, parts.hostname, port or default, target, userinfo if at else None
        )


def parse_header(text: str) -> tuple[str, str]:
    """C{'Name: value'} as a pair; L{ExplainError} when it is not a valid field."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not TOKEN.fullmatch(name):
        raise ExplainError(f"expected a header as 'Name: value', got {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise ExplainError(f"header {name} holds a line break or NUL")
    return name, value


def request_bytes(method: str, url: TargetURL, headers: Sequence[tuple[str, str]]) -> bytes:
    """
    The request a client (curl) sends for C{url}: Host from the URL unless
    a header gives it, credentials of the URL as Basic when no
    Authorization is given, then C{headers} in order; no body.
    """
    if not TOKEN.fullmatch(method):
        raise ExplainError(f"{method!r} is not a valid method")
    given = {name.lower() for name, _ in headers}
    fields = []
    if "host" not in given:
        fields.append(("Host", url.host_field))
    if url.userinfo is not None and "authorization" not in given:
        credentials = unquote(url.userinfo).encode("utf-8")
        fields.append(("Authorization", "Basic " + base64.b64encode(credentials).decode()))
    fields.extend(headers)
    lines = [f"{method} {url.target} HTTP/1.1", *(f"{n}: {v}" for n, v in fields)]
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ExplainError("the URL and headers must be written in latin-1") from None


def choose_listener(
    config: Config, scheme: str, host: str, port: int, name: Optional[str] = None
) -> tuple[ListenerConfig, str, Optional[str]]:
    """
    The listener a request to C{host:port} arrives on, how it was chosen
    (C{option}, C{port}, C{address} or C{assumed}) and, when assumed, why.
    """
    http = [each for each in config.listeners.values() if each.protocol in _HTTP_PROTOCOLS]
    if name is not None:
        listener = config.listeners.get(name)
        if listener is None:
            known = ", ".join(each.name for each in http) or "none"
            raise ExplainError(f"no listener named {name!r} (http listeners: {known})")
        if listener.protocol not in _HTTP_PROTOCOLS:
            raise ExplainError(
                f"listener {name!r} is a {listener.protocol} listener; routes serve http ones"
            )
        return listener, "option", None
    if not http:
        raise ExplainError("the config has no http listener")
    same_scheme = [each for each in http if each.protocol == scheme]
    on_port = [each for each in same_scheme if each.port == port]
    if len(on_port) == 1:
        return on_port[0], "port", None
    on_address = [each for each in on_port if each.host == host]
    if len(on_address) == 1:
        return on_address[0], "address", None
    if on_port:
        names = ", ".join(each.name for each in on_port)
        return (
            on_port[0],
            "assumed",
            f"listeners {names} all bind port {port}; assumed the first, {on_port[0].name}"
            " (choose with --listener)",
        )
    first = (same_scheme or http)[0]
    why = f"no {scheme} listener binds port {port}" if same_scheme else f"no {scheme} listener"
    return (
        first,
        "assumed",
        f"{why}; assumed the first {first.protocol} listener, {first.name}"
        " (choose with --listener)",
    )


# -- stand-ins for what lies outside the process ------------------------------------


class Journal:
    """What the instrumented gateway saw of the one request."""

    def __init__(self) -> None:
        self.request: Optional[Request] = None  # a copy, as dispatched
        self.dispatched: Optional[Request] = None  # the live one
        self.steps: list[dict[str, Any]] = []
        self.current: Optional[dict[str, Any]] = None
        self.action_notes: list[str] = []
        self.action_assumptions: list[str] = []

    def note(self, text: str, assumed: bool = False) -> None:
        """Note C{text} on the policy running now, else on the action."""
        step = self.current
        if step is None:
            self.action_notes.append(text)
            if assumed:
                self.action_assumptions.append(text)
            return
        step["notes"].append(text)
        if assumed:
            step["assumed"] = True


def _redis_location(redis: RedisConfig) -> str:
    if redis.sentinel is not None:
        return f"Redis (sentinel master {redis.sentinel.master})"
    return f"Redis at {redis.url}"


def _stored_what(key: str) -> str:
    if key.startswith("gk:session:"):
        return "the session"
    if key.startswith("gk:sticky:"):
        return "the target bound to the sticky session"
    return f"key {key}"


@implementer(IStateStore)
class OfflineStore:
    """
    The state store as a fresh gateway has it: in-process counters that
    start empty. With C{gateway.redis} each question is noted as one that
    would go to Redis, and answered as an empty Redis would.
    """

    def __init__(self, redis: Optional[RedisConfig], clock: Any, journal: Journal) -> None:
        self.shared = redis is not None
        self._redis = redis
        self._memory = MemoryStore(clock)
        self._journal = journal

    def rate_limit(
        self, key: str, limit: int, window: float, burst: int, algorithm: str
    ) -> Deferred[Decision]:
        decision = self._memory.decide(key, limit, window, burst, algorithm)
        verdict = (
            f"{decision.remaining} of {decision.limit} left"
            if decision.allowed
            else f"over the limit, retry in {decision.retry_after:g}s"
        )
        if self._redis is None:
            self._journal.note(
                f"in-process counter, empty in a fresh gateway: {verdict}"
                " (a running gateway's counts are not known offline)"
            )
        else:
            self._journal.note(
                f"would ask {_redis_location(self._redis)}; assumed a fresh counter: {verdict}",
                assumed=True,
            )
        return succeed(decision)

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        where = "the in-process store" if self._redis is None else _redis_location(self._redis)
        self._journal.note(
            f"would look up {_stored_what(key)} in {where}; assumed not found", assumed=True
        )
        return self._memory.get(key)

    def set(self, key: str, value: bytes, ttl: float) -> Deferred[None]:
        return self._memory.set(key, value, ttl)

    def delete(self, key: str) -> Deferred[None]:
        return self._memory.delete(key)

    def close(self) -> Deferred[None]:
        return self._memory.close()


class OfflineHTTPClient:
    """
    The policies' HTTP client offline: a GET is never sent and never
    answered, so the policy asking waits (and is reported as assumed).
    """

    def get(self, url: str, fields: Any = (), timeout: float = 5.0) -> Deferred[Any]:
        return Deferred()

    def close(self) -> Deferred[None]:
        return succeed(None)


def _run_now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """basic_auth's password check, in this thread: the answer is known at once."""
    try:
        return succeed(f(*args))
    except Exception:
        failed: Deferred[Any] = Deferred()
        failed.errback(Failure())
        return failed


def _identity_text(identity: Any) -> str:
    text = f"{identity.kind}:{identity.subject}" if identity.subject else identity.kind
    if identity.scopes:
        text += f" (scopes: {', '.join(sorted(identity.scopes))})"
    return text


def _field_dict(fields: Any) -> dict[str, str]:
    """Fields as C{{Name: value}}, repeated ones joined with C{", "}."""
    found: dict[str, str] = {}
    for name, value in fields:
        if name.lower() in _PLUMBING:
            continue
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


@implementer(IPolicy)
class ObservedPolicy:
    """
    A real policy with its decision written down. A decision that waits
    on something outside (its C{Deferred} does not fire offline) is taken
    as a pass, and said so.
    """

    def __init__(self, policy: IPolicy, kind: str, options: Any, journal: Journal) -> None:
        self.name = policy.name
        self._policy = policy
        self._kind = kind
        self._options = options
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        # close() and whatever else the gateway asks of the real policy.
        return getattr(self._policy, name)

    def on_request(self, call: Any) -> Any:
        journal = self._journal
        step = policy_step(self.name, self._kind, "pass")
        journal.steps.append(step)
        unknown = call.values.get(_IDENTITY_KEY)
        if self._kind == "authorize" and call.identity is None and unknown is not None:
            step["outcome"] = "assumed_pass"
            step["notes"].append(
                f"needs the identity {unknown} would set, which is not known offline"
            )
            return None
        identity = call.identity
        journal.current = step
        try:
            result = self._policy.on_request(call)
        except Exception as e:
            self._refused(step, GatewayError(500, "internal_error", f"the policy crashed: {e!r}"))
            raise
        finally:
            journal.current = None
        if result is LATER:  # it would resume the call itself; offline it never does
            return self._assume_pass(step, call)
        if isinstance(result, Deferred):
            settled: list[Any] = []
            result.addBoth(_keep, settled)
            if not settled:
                return self._assume_pass(step, call)
            decided = settled[0]
        else:
            decided = result
        assumed = step.pop("assumed", False)
        if isinstance(decided, Failure):
            self._refused(step, GatewayError(500, "internal_error", decided.getErrorMessage()))
        elif isinstance(decided, (GatewayError, Response)):
            self._refused(step, decided)
        elif assumed:
            step["outcome"] = "assumed_pass"
        if call.identity is not None and call.identity is not identity:
            step["identity"] = _identity_text(call.identity)
        return result

    @staticmethod
    def _refused(step: dict[str, Any], answer: Any) -> None:
        step["status"] = answer.status
        if isinstance(answer, GatewayError):
            step["outcome"] = "refuse"
            step["code"] = answer.code
            step["detail"] = answer.detail
            step["headers"] = _field_dict(answer.headers)
        else:
            step["outcome"] = "refuse" if answer.status >= 400 else "answer"
            step["headers"] = _field_dict(answer.fields)

    def _assume_pass(self, step: dict[str, Any], call: Any) -> None:
        """Take a decision that waits for something outside as a pass, and say so."""
        step["outcome"] = "assumed_pass"
        step["notes"].append(self._waits_for())
        call.values[_IDENTITY_KEY] = self.name

    def _waits_for(self) -> str:
        options = self._options
        if self._kind == "jwt":
            return (
                f"would fetch the signing keys from {getattr(options, 'jwks_url', '?')}"
                " to verify the token; assumed valid"
            )
        if self._kind == "forward_auth":
            return f"would ask {getattr(options, 'url', '?')}; assumed to answer 2xx"
        return "waits for an answer from outside the gateway, not known offline; assumed to pass"


def policy_step(name: str, kind: str, outcome: str) -> dict[str, Any]:
    """
    One policy's entry in the explanation: its C{outcome} (C{pass},
    C{assumed_pass}, C{refuse}, C{answer} or C{not_reached}), and for an
    answer its C{status}, C{code}, C{detail} and C{headers}.
    """
    return {
        "name": name,
        "type": kind,
        "outcome": outcome,
        "status": None,
        "code": None,
        "detail": None,
        "headers": {},
        "identity": None,
        "notes": [],
    }


def _keep(result: Any, into: list[Any]) -> Any:
    into.append(result)
    return result


@implementer(IPolicyFactory)
class ObservedPolicyType:
    """A policy type whose policies are built as L{ObservedPolicy}s."""

    def __init__(self, factory: IPolicyFactory, journal: Journal) -> None:
        self.name = factory.name
        self.options = factory.options
        self._factory = factory
        self._journal = journal

    def build(self, name: str, options: Any, context: Any) -> IPolicy:
        policy = self._factory.build(name, options, context)
        return ObservedPolicy(policy, self.name, options, self._journal)


def offline_policy_types(journal: Journal) -> dict[str, IPolicyFactory]:
    """
    Every policy type, observed; those that reach outside the process get
    their offline stand-ins through the seams their factories offer.
    """
    client = OfflineHTTPClient()
    types: dict[str, Any] = dict(policy_factories())
    types["jwt"] = JWTFactory(client)
    types["forward_auth"] = ForwardAuthFactory(client)
    types["basic_auth"] = BasicAuthFactory(_run_now)
    return {name: ObservedPolicyType(factory, journal) for name, factory in types.items()}


class ObservedGateway:
    """The listener's view of the gateway: it notes the request it dispatches."""

    def __init__(self, gateway: Gateway, journal: Journal) -> None:
        self._gateway = gateway
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    def dispatch(self, stream: Any) -> None:
        request = stream.request
        self._journal.dispatched = request
        # Policies may change the request (strip a key): keep it as it came.
        self._journal.request = request.copy()
        self._gateway.dispatch(stream)


# -- running it ---------------------------------------------------------------------


def _peer(client_ip: str) -> Any:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        raise ExplainError(f"--client-ip: {client_ip!r} is not an IP address") from None
    if address.version == 6:
        return IPv6Address("TCP", client_ip, _CLIENT_PORT)
    return IPv4Address("TCP", client_ip, _CLIENT_PORT)


def _parse_answer(data: bytes) -> Optional[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    """The final response the gateway wrote (interim ones skipped), if it wrote one."""
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return None
        status_line, *lines = head.split(b"\r\n")
        status = int(status_line.split()[1])
        fields = []
        for line in lines:
            name, _, value = line.partition(b":")
            fields.append((name.strip(), value.strip()))
        if status < 200:
            data = rest
            continue
        lengths = [v for n, v in fields if n.lower() == b"content-length"]
        body = rest[: int(lengths[0])] if lengths else rest
        return status, fields, body
    return None


def _connection_attempts(reactor: GatewayReactor) -> list[str]:
    """The upstream targets the gateway tried to connect to, in order."""
    found = []
    for client in [*reactor.tcpClients, *reactor.sslClients]:
        factory = client[2]
        # A TLS connection's factory wraps the pool's.
        factory = getattr(factory, "wrappedFactory", factory)
        # A mirror's copies are not where the request goes.
        if isinstance(factory, ConnectAttempt) and not isinstance(factory.waiter, MirrorExchange):
            found.append(factory.target.address)
    return found


def _sent_upstream(reactor: GatewayReactor) -> Optional[dict[str, Any]]:
    """
    The request head the gateway sends its target, as sent: the first plain
    connection attempt (not a mirror's) is let through to a transport that
    keeps what is written. None when there is none (nothing proxied, or the
    upstream is TLS: its head is only written after a handshake).
    """
    for _, _, factory, _, _ in reactor.tcpClients:
        if not isinstance(factory, ConnectAttempt) or isinstance(factory.waiter, MirrorExchange):
            continue
        connection = factory.buildProtocol(None)
        upstream_side = TCPStringTransport()
        connection.makeConnection(upstream_side)
        head, found, _ = upstream_side.value().partition(b"\r\n\r\n")
        if not found:
            return None
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [list(line.split(": ", 1)) for line in lines]
        return {"request_line": request_line, "headers": headers}
    return None


def explain(
    config: Config,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    client_ip: str = "127.0.0.1",
    listener: Optional[str] = None,
) -> dict[str, Any]:
    """
    What the gateway for C{config} would do with C{method url} and
    C{headers} from C{client_ip}, found by running it offline; the
    explanation as a JSON-ready dict. L{ExplainError} when the request
    cannot be made.
    """
    target_url = TargetURL.parse(url)
    listener_config, chosen_by, listener_note = choose_listener(
        config, target_url.scheme, target_url.host, target_url.port, listener
    )
    data = request_bytes(method, target_url, headers)
    peer = _peer(client_ip)
    journal = Journal()
    reactor = GatewayReactor()
    # Token lifetimes and rate windows are judged on this clock: make it now.
    reactor.advance(time.time())
    store = OfflineStore(config.gateway.redis, reactor, journal)
    gateway = Gateway(config, reactor, store=store, policy_types=offline_policy_types(journal))
    try:
        if listener_config.name not in gateway.routers:
            raise ExplainError(
                f"listener {listener_config.name!r} ({listener_config.protocol}) has no routes"
                " served yet"
            )
        scheme = "https" if listener_config.protocol == "https" else "http"
        observed: Any = ObservedGateway(gateway, journal)
        factory = HTTP11ServerFactory(listener_config, observed, reactor, scheme)
        protocol = factory.buildProtocol(None)
        transport = TCPStringTransport(
            hostAddress=IPv4Address(
                "TCP", listener_config.host or "0.0.0.0", listener_config.port or target_url.port
            ),
            peerAddress=peer,
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        attempts = _connection_attempts(reactor)
        answer = _parse_answer(transport.value())
        return _explanation(
            config,
            _request_part(method, url, data, journal.request, client_ip),
            _listener_part(listener_config, chosen_by, listener_note, target_url.port),
            journal,
            answer,
            attempts,
            _sent_upstream(reactor),
        )
    finally:
        gateway.close()
        store.close()


# -- the explanation ------------------------------------------------------------------


def _request_part(
    method: str, url: str, data: bytes, seen: Optional[Request], client_ip: str
) -> dict[str, Any]:
    head = data.decode("latin-1").split("\r\n")
    fields = [line.split(": ", 1) for line in head[1:] if line]
    part: dict[str, Any] = {
        "method": method,
        "url": url,
        "target": head[0].split(" ")[1],
        "headers": [[name, value] for name, value in fields],
        "peer": client_ip,
        "client_ip": client_ip,
        "host": None,
        "path": None,
        "query": None,
    }
    if seen is not None:
        part.update(host=seen.host, path=seen.path, query=seen.query, client_ip=seen.client_ip)
    return part


def _listener_part(
    listener: ListenerConfig, chosen_by: str, note: Optional[str], port: int
) -> dict[str, Any]:
    host = listener.host or "*"
    if ":" in host:
        host = f"[{host}]"
    return {
        "name": listener.name,
        "protocol": listener.protocol,
        "bind": f"{host}:{listener.port}",
        "chosen_by": chosen_by,
        "note": note,
    }


def _host_reason(route: RouteConfig, host: str) -> dict[str, Any]:
    patterns = [pattern.lower().rstrip(".") for pattern in route.match.hosts]
    if not patterns:
        return {"kind": "any", "pattern": None}
    if host in patterns:
        return {"kind": "exact", "pattern": host}
    wildcards = [p for p in patterns if p.startswith("*.") and host.endswith(p[1:])]
    if wildcards:
        return {"kind": "wildcard", "pattern": max(wildcards, key=len)}
    return {"kind": "any", "pattern": None}


def _path_reason(route: RouteConfig) -> dict[str, Any]:
    match = route.match
    if match.path is not None:
        return {"kind": "exact", "pattern": match.path}
    if match.path_regex is not None:
        return {"kind": "regex", "pattern": match.path_regex.pattern}
    prefix = (match.path_prefix or "").rstrip("/")
    if prefix:
        return {"kind": "prefix", "pattern": prefix}
    return {"kind": "any", "pattern": None}


def _conditions(
    conditions: Sequence[Any], lookup: Callable[[str], Optional[str]]
) -> list[dict[str, Any]]:
    return [
        {"name": each.name, "condition": each.value, "value": lookup(each.name)}
        for each in conditions
    ]


def _route_part(route: RouteConfig, request: Request) -> dict[str, Any]:
    match = route.match
    asked = request.headers.get_str("access-control-request-method")
    preflight = request.method == "OPTIONS" and asked is not None and "origin" in request.headers
    methods = list(match.methods)
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    return {
        "name": route.name,
        "index": route.index,
        "host": _host_reason(route, request.host),
        "path": _path_reason(route),
        "methods": methods or None,
        "headers": _conditions(match.headers, request.headers.get_str),
        "query": _conditions(match.query, request.query_param),
        "cookies": _conditions(match.cookies, request.cookies.get),
        "preflight_for": asked.upper() if preflight and asked else None,
    }


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _pick_note(upstream: UpstreamConfig, request: Request) -> str:
    if upstream.balancer == "hash":
        value = key_reader(upstream.hash_key)(request)
        if not value:
            return f"the request has no {upstream.hash_key}: balanced round robin instead"
        return (
            f"hash of {upstream.hash_key} {value!r}: the same value goes to the same target"
            " while it is available"
        )
    return _PICKS.get(
        upstream.balancer, f"what the {upstream.balancer} balancer picks on a fresh gateway"
    )


def _upstream_part(
    route: RouteConfig, upstream: UpstreamConfig, request: Request, target: Optional[str]
) -> dict[str, Any]:
    retries = upstream.retries
    timeouts = upstream.timeouts
    part: dict[str, Any] = {
        "kind": "upstream",
        "upstream": upstream.name,
        "balancer": upstream.balancer,
        "hash_key": str(upstream.hash_key) if upstream.balancer == "hash" else None,
        "targets": [{"address": t.address, "weight": t.weight} for t in upstream.targets],
        "target": target,
        "pick": _pick_note(upstream, request) if target is not None else None,
        "sticky": None,
        "retries": {
            "attempts": retries.attempts,
            "on": [str(each) for each in retries.on],
            "per_try_timeout": retries.per_try_timeout,
        },
        "timeouts": {
            "connect": timeouts.connect,
            "response": route.timeout if route.timeout is not None else timeouts.response,
            "idle": timeouts.idle,
        },
        "health_checks": upstream.health is not None,
        "outlier_ejection": upstream.outlier is not None,
        "mirror": (
            {"upstream": route.mirror.upstream, "percent": route.mirror.percent}
            if route.mirror is not None
            else None
        ),
    }
    sticky = upstream.sticky
    if sticky is not None:
        if sticky.cookie in request.cookies:
            note = (
                f"cookie {sticky.cookie} given: it goes to the target the state store binds"
                " to it, if any, else it is balanced"
            )
        else:
            note = f"no {sticky.cookie} cookie: balanced, and the response sets one"
        part["sticky"] = {"cookie": sticky.cookie, "note": note}
    return part


def _split_part(
    config: Config, route: RouteConfig, request: Request, target: Optional[str]
) -> dict[str, Any]:
    """The side of a split the request went to (by its target), shown as an upstream."""
    sides = [config.upstreams[side.upstream] for side in route.split if side.weight]
    chosen = next((u for u in sides if any(t.address == target for t in u.targets)), None)
    part = _upstream_part(route, chosen or sides[0], request, target)
    part["split"] = {
        "sides": [{"upstream": s.upstream, "weight": s.weight} for s in route.split],
        "by": str(route.split_by) if route.split_by is not None else "random",
        "chosen": chosen.name if chosen is not None else None,
    }
    return part


def _static_file(action: StaticAction, path: str) -> dict[str, Any]:
    relative = b"/".join(unquote_to_bytes(s) for s in path.encode("latin-1").split(b"/")[1:])
    file = os.path.join(os.fsencode(action.root), relative)
    folder = os.path.isdir(file)
    if folder and path.endswith("/"):
        file = os.path.join(file, os.fsencode(action.index))
        folder = False
    return {
        "kind": "static",
        "root": action.root,
        "index": action.index,
        "file": os.fsdecode(file),
        "exists": os.path.isfile(file),
        "folder": folder,
    }


def _action_part(
    config: Config,
    route: RouteConfig,
    request: Request,
    answer: Optional[dict[str, Any]],
    attempts: list[str],
) -> dict[str, Any]:
    if route.upstream is not None:
        upstream = config.upstreams[route.upstream]
        return _upstream_part(route, upstream, request, attempts[0] if attempts else None)
    if route.split:
        return _split_part(config, route, request, attempts[0] if attempts else None)
    if route.static is not None:
        return _static_file(route.static, request.path)
    if route.redirect is not None:
        location = (answer or {}).get("headers", {}).get("Location")
        return {
            "kind": "redirect",
            "to": route.redirect.to,
            "status": route.redirect.status,
            "location": location,
        }
    assert route.respond is not None
    return {"kind": "respond", "status": route.respond.status}


def _answer_part(
    parsed: tuple[int, list[tuple[bytes, bytes]], bytes], by: str, policy: Optional[str]
) -> dict[str, Any]:
    status, fields, body = parsed
    part: dict[str, Any] = {
        "status": status,
        "by": by,
        "policy": policy,
        "code": None,
        "detail": None,
        "headers": _field_dict(fields),
        "body": None,
    }
    content_type = part["headers"].get("Content-Type", "")
    if content_type.startswith("application/problem+json"):
        # Empty for a HEAD request: the status says enough then.
        problem = json.loads(body) if body else {}
        kind = problem.get("type", "")
        part["code"] = kind[len(PROBLEM_TYPE) :] if kind.startswith(PROBLEM_TYPE) else kind or None
        part["detail"] = problem.get("detail")
        del part["headers"]["Content-Type"]
    elif body and len(body) <= 200:
        part["body"] = body.decode("utf-8", "replace")
    return part


def _explanation(
    config: Config,
    request_part: dict[str, Any],
    listener_part: dict[str, Any],
    journal: Journal,
    parsed: Optional[tuple[int, list[tuple[bytes, bytes]], bytes]],
    attempts: list[str],
    sent: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    request = journal.request
    route_name = journal.dispatched.route if journal.dispatched is not None else None
    route = next((r for r in config.routes if r.name == route_name), None)
    deciding = next((s for s in journal.steps if s["outcome"] in ("refuse", "answer")), None)
    if request is None:
        by = "listener"
    elif route is None:
        by = "router"
    elif deciding is not None:
        by = "policy"
    else:
        by = "action"
    answer = None
    if parsed is not None:
        answer = _answer_part(parsed, by, deciding["name"] if deciding else None)
    policies: list[dict[str, Any]] = []
    action = None
    if route is not None and request is not None:
        policies = list(journal.steps)
        for name in route.policies[len(policies) :]:
            policies.append(policy_step(name, config.policies[name].type, "not_reached"))
        action = _action_part(config, route, request, answer, attempts)
        action["reached"] = deciding is None
        action["notes"] = journal.action_notes
        if action["kind"] == "upstream":
            action["sent"] = sent
    if answer is not None:
        outcome = "refused" if answer["status"] >= 400 else "answered"
    elif attempts:
        outcome = "proxied"
    else:
        outcome = "pending"
    assumptions = [listener_part["note"]] if listener_part["note"] else []
    assumptions.extend(
        f"policy {step['name']} ({step['type']}) passes: {step['notes'][-1]}"
        for step in policies
        if step["outcome"] == "assumed_pass"
    )
    assumptions.extend(journal.action_assumptions)
    if action is not None and action["kind"] == "upstream" and action["target"] is not None:
        assumptions.append(
            "every target is healthy and none is ejected: health and load of a running"
            " gateway are not known offline"
        )
    if outcome == "pending":
        assumptions.append("nothing answered and no upstream was asked: the result is unknown")
    explanation: dict[str, Any] = {
        "config": config.source,
        "request": request_part,
        "listener": listener_part,
        "route": _route_part(route, request) if route is not None and request else None,
        "policies": policies,
        "action": action,
        "answer": answer,
        "outcome": outcome,
        "status": answer["status"] if answer is not None else None,
        "assumptions": assumptions,
    }
    explanation["exit_code"] = exit_code(explanation)
    return explanation


def exit_code(explanation: Mapping[str, Any]) -> int:
    """0 when the request would be served (2xx/3xx or proxied), 2 when refused."""
    status = explanation.get("status")
    return EXIT_REFUSED if status is not None and status >= 400 else EXIT_SERVED


# -- output -------------------------------------------------------------------------------


def render_json(explanation: Mapping[str, Any]) -> str:
    """The explanation as indented JSON."""
    return json.dumps(explanation, indent=2)


def _host_words(host: Mapping[str, Any]) -> str:
    if host["kind"] == "any":
        return "any host"
    return f"host {host['pattern']} ({host['kind']})"


def _path_words(path: Mapping[str, Any], actual: str) -> str:
    if path["kind"] == "any":
        return "any path"
    words = {"exact": "path", "regex": "path regex", "prefix": "path prefix"}[path["kind"]]
    return f"{words} {path['pattern']} ({actual})"


def _route_lines(route: Mapping[str, Any], request: Mapping[str, Any]) -> list[str]:
    words = [_host_words(route["host"]), _path_words(route["path"], request["path"])]
    if route["methods"]:
        words.append(f"methods {', '.join(route['methods'])}")
    for kind in ("headers", "query", "cookies"):
        label = {"headers": "header", "query": "query", "cookies": "cookie"}[kind]
        for each in route[kind]:
            words.append(f"{label} {each['name']} {each['condition']!r} (is {each['value']!r})")
    lines = [f"{route['name']} (routes[{route['index']}])", "matched on " + ", ".join(words)]
    if route["preflight_for"]:
        lines.append(f"a CORS preflight, routed as the {route['preflight_for']} it asks about")
    return lines


def _policy_line(number: int, step: Mapping[str, Any]) -> str:
    outcome = step["outcome"]
    text = f"{number}. {step['name']} ({step['type']}): "
    if outcome in ("refuse", "answer"):
        verb = "refuses" if outcome == "refuse" else "answers"
        text += f"{verb} {step['status']}"
        if step.get("code"):
            text += f" {step['code']}"
        if step.get("detail"):
            text += f": {step['detail']}"
    else:
        text += outcome.replace("_", " ")
    if step.get("identity"):
        text += f", identity {step['identity']}"
    notes = step["notes"]
    if notes and outcome != "assumed_pass":
        text += "; " + "; ".join(notes)
    elif notes:
        text += ": " + "; ".join(notes)
    return text


def _action_lines(action: Mapping[str, Any]) -> tuple[str, list[str]]:
    kind = action["kind"]
    if kind == "upstream":
        targets = ", ".join(
            t["address"] + (f" (weight {t['weight']})" if t["weight"] != 1 else "")
            for t in action["targets"]
        )
        balancer = action["balancer"]
        if action["hash_key"]:
            balancer += f" on {action['hash_key']}"
        lines = [f"{action['upstream']} ({balancer}): {targets}"]
        split = action.get("split")
        if split is not None:
            shares = ", ".join(f"{s['upstream']} {s['weight']}" for s in split["sides"])
            chosen = split["chosen"] or "no side yet"
            lines.insert(0, f"split {shares} ({split['by']}): this request goes to {chosen}")
        if action["target"] is not None:
            lines.append(f"would connect to {action['target']}: {action['pick']}")
            if action["sticky"]:
                lines.append(f"sticky: {action['sticky']['note']}")
            lines.extend(action["notes"])
            sent = action.get("sent")
            if sent is not None:
                lines.append(f"sends: {sent['request_line']}")
                lines.extend(f"  {name}: {value}" for name, value in sent["headers"])
        else:
            lines.append("no target is picked: the request does not get that far")
        mirror = action.get("mirror")
        if mirror is not None:
            lines.append(
                f"mirror: {mirror['percent']:g}% of requests copied to {mirror['upstream']},"
                " answers discarded"
            )
        retries = action["retries"]
        timeouts = action["timeouts"]
        lines.append(
            f"retries: up to {retries['attempts']} more on {', '.join(retries['on'])}"
            + (
                f", {_seconds(retries['per_try_timeout'])} per try"
                if retries["per_try_timeout"]
                else ""
            )
            + f"; timeouts: connect {_seconds(timeouts['connect'])},"
            f" response {_seconds(timeouts['response'])}, idle {_seconds(timeouts['idle'])}"
        )
        return "upstream", lines
    not_reached = "" if action["reached"] else " (not reached)"
    if kind == "static":
        state = "exists" if action["exists"] else "no such file"
        if action["folder"]:
            state = "a folder, asked for without its slash"
        return "static", [f"{action['root']} -> {action['file']} ({state}){not_reached}"]
    if kind == "redirect":
        where = action["location"] or repr(action["to"])
        return "redirect", [f"{action['status']} to {where}{not_reached}"]
    return "respond", [f"status {action['status']}{not_reached}"]


def _result_lines(explanation: Mapping[str, Any]) -> list[str]:
    answer = explanation["answer"]
    code = explanation["exit_code"]
    if answer is None:
        if explanation["outcome"] == "proxied":
            return [f"proxied to {explanation['action']['target']} (exit {code})"]
        return [f"no answer offline (exit {code})"]
    by = {
        "listener": "the listener, before routing",
        "router": "the router",
        "policy": f"policy {answer['policy']}",
        "action": "the route's action",
    }[answer["by"]]
    text = f"{answer['status']} " + (answer["code"] or reason_for(answer["status"]).decode("ascii"))
    if answer["detail"]:
        text += f": {answer['detail']}"
    lines = [f"{text} - answered by {by} (exit {code})"]
    lines.extend(f"{name}: {value}" for name, value in answer["headers"].items())
    if answer["body"] is not None:
        lines.append(f"body: {answer['body']!r}")
    return lines


def render_text(explanation: Mapping[str, Any]) -> str:
    """The explanation for people: one labelled block per step."""
    request = explanation["request"]
    listener = explanation["listener"]
    blocks: list[tuple[str, list[str]]] = []
    seen = f"{request['method']} {request['url']}"
    where = [f"from {request['client_ip']}"]
    if request["client_ip"] != request["peer"]:
        where.append(f"(peer {request['peer']}, through X-Forwarded-For)")
    lines = [seen + " " + " ".join(where)]
    if request["path"] is not None:
        query = f"?{request['query']}" if request["query"] else ""
        lines.append(f"seen as host {request['host'] or '-'}, path {request['path']}{query}")
    blocks.append(("request", lines))
    how = {
        "option": "chosen with --listener",
        "port": "by the URL's port",
        "address": "by the URL's address and port",
        "assumed": "assumed (see below)",
    }[listener["chosen_by"]]
    blocks.append(
        ("listener", [f"{listener['name']} ({listener['protocol']} on {listener['bind']}): {how}"])
    )
    route = explanation["route"]
    answer = explanation["answer"]
    if route is not None:
        blocks.append(("route", _route_lines(route, request)))
    elif answer is not None and answer["by"] == "listener":
        blocks.append(("route", ["not reached"]))
    elif answer is not None and answer["status"] == 405:
        blocks.append(("route", [f"none accepts {request['method']} on this path"]))
    else:
        blocks.append(("route", ["none matches"]))
    if explanation["policies"]:
        blocks.append(
            (
                "policies",
                [_policy_line(n, step) for n, step in enumerate(explanation["policies"], 1)],
            )
        )
    if explanation["action"] is not None:
        blocks.append(_action_lines(explanation["action"]))
    blocks.append(("result", _result_lines(explanation)))
    if explanation["assumptions"]:
        blocks.append(("assumed", explanation["assumptions"]))
    width = max(len(label) for label, _ in blocks) + 2
    out = []
    for label, lines in blocks:
        for index, line in enumerate(lines):
            out.append((label if index == 0 else "").ljust(width) + line)
    return "\n".join(out)
