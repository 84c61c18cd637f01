"""
The C{cache} policy: a shared HTTP cache (RFC 9111) in front of a route.

Responses to GET are kept in memory (LRU within C{max_bytes}, each at most
C{max_object_bytes}), and with C{redis_tier} in the state store too, for as
long as their C{Cache-Control}/C{Expires}/C{Last-Modified} say; hits are
answered from there, with C{Age}. Stale entries are revalidated with
C{If-None-Match}/C{If-Modified-Since}, served stale while refreshed in the
background (C{stale-while-revalidate}) or instead of an upstream failure
(C{stale-if-error}). Concurrent misses for one key send one request
upstream. Every response of the route says what happened in C{X-Cache}
(C{HIT}, C{MISS}, C{STALE}, C{REVALIDATED}, C{BYPASS}) and where in
C{X-Cache-Node}.

See C{docs/caching.md} for every rule and why.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional
from urllib.parse import urljoin

from attrs import frozen
from twisted.logger import Logger
from zope.interface import implementer

from gatewaykit.cache.answers import (
    BYPASS,
    HIT,
    MISS,
    REVALIDATED,
    STALE,
    X_CACHE,
    X_CACHE_NODE,
    CachedAnswer,
)
from gatewaykit.cache.background import BackgroundStream
from gatewaykit.cache.entry import Entry
from gatewaykit.cache.fill import CacheFill, Collapse, Outcome
from gatewaykit.cache.keys import authority, key_for_url, primary_key
from gatewaykit.cache.lookup import FRESH, REFRESH, TOLERATED, Lookup
from gatewaykit.cache.store import MemoryTier
from gatewaykit.cache.tier import RedisTier
from gatewaykit.config.schema import Section, boolean, duration, size
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.forwarding import new_request_id
from gatewaykit.http.message import Headers, Request
from gatewaykit.http.wire import HTTPDate
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IStateStore
from gatewaykit.policies.chain import PolicyCall, PolicyContext

log = Logger()

MiB = 1024 * 1024

# How long requests wait for another's response to the same key before
# going upstream themselves (nginx's proxy_cache_lock_timeout default).
COLLAPSE_TIMEOUT = 5.0
# A background refresh that has not ended after this long no longer stops
# another from starting.
REFRESH_TIMEOUT = 30.0

# Methods that change nothing (RFC 9110 9.2.1): their responses invalidate nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# The client's validators, answered by the cache itself.
_CLIENT_VALIDATORS = (b"if-none-match", b"if-modified-since")
# Spelled here: inside Cache, "bytes" is its gauge.
Label = bytes
Coding = Optional[bytes]
Fields = list[tuple[bytes, bytes]]

_RESULTS = {HIT: "hit", MISS: "miss", STALE: "stale", REVALIDATED: "revalidated", BYPASS: "bypass"}


@frozen
class CacheOptions:
    """A C{cache} policy's keys."""

    max_bytes: int = 256 * MiB
    max_object_bytes: int = 8 * MiB
    default_ttl: float = 0.0
    stale_if_error: float = 0.0
    redis_tier: bool = False


OPTIONS = Section(
    {
        "max_bytes": size(minimum=1),
        "max_object_bytes": size(minimum=1),
        "default_ttl": duration(positive=False),
        "stale_if_error": duration(positive=False),
        "redis_tier": boolean,
    }
).into(CacheOptions)


# The memory tiers by state store and policy name: a reload builds new
# policies, which keep what the previous version of the same policy stored.
_TIERS: weakref.WeakKeyDictionary[Any, dict[str, MemoryTier]] = weakref.WeakKeyDictionary()


def _memory_tier(store: Any, name: str, max_bytes: int) -> MemoryTier:
    try:
        tiers = _TIERS.setdefault(store, {})
    except TypeError:  # a store that cannot be weakly referenced
        return MemoryTier(max_bytes)
    tier = tiers.get(name)
    if tier is None:
        tier = tiers[name] = MemoryTier(max_bytes)
    else:
        tier.resize(max_bytes)
    return tier


def refresh_request(request: Request, entry: Entry, now: float) -> Request:
    """
    A copy of C{request} to refresh C{entry} with: GET, no body, a new id,
    the client's conditions and range replaced by the entry's validators.
    """
    dropped = {b"if-none-match", b"if-modified-since", b"range", b"if-range", b"cache-control"}
    fields = [(n, v) for n, v in request.headers.raw if n.lower() not in dropped]
    _add_validators(fields, entry)
    return request.copy(
        method="GET",
        version="1.1",
        headers=Headers(fields),
        request_id=new_request_id(),
        received_at=now,
    )


def _add_validators(fields: list[tuple[bytes, bytes]], entry: Entry) -> bool:
    """Add C{entry}'s validators as conditions to request C{fields}; whether it has any."""
    if entry.etag is not None:
        fields.append((b"If-None-Match", entry.etag))
    last_modified = Headers(entry.fields).get(b"last-modified")
    if last_modified is not None:
        fields.append((b"If-Modified-Since", last_modified))
    return entry.etag is not None or last_modified is not None


@implementer(IPolicy)
class Cache:
    """
    One named C{cache} policy.

    @ivar lookups: responses by what the cache did (C{hit}, C{miss},
        C{stale}, C{revalidated}, C{bypass}): the C{X-Cache} values sent.
    @ivar memory: the in-memory tier.
    @ivar tier: the Redis tier, or C{None}.
    """

    def __init__(
        self,
        name: str,
        options: CacheOptions,
        clock: Any,
        store: IStateStore,
        node: str,
    ) -> None:
        self.name = name
        self.clock = clock
        self.max_object_bytes = min(options.max_object_bytes, options.max_bytes)
        self.default_ttl = options.default_ttl
        self.stale_if_error = options.stale_if_error
        self.node = node.encode("ascii", "replace")
        self.memory = _memory_tier(store, name, options.max_bytes)
        self.tier = RedisTier(store, name, clock) if options.redis_tier else None
        self.lookups: dict[str, int] = dict.fromkeys(_RESULTS.values(), 0)
        self._collapses: dict[str, Collapse] = {}
        self._refreshing: dict[str, float] = {}
        self._date = HTTPDate(clock.seconds)

    @property
    def bytes(self) -> int:
        """Bytes held in memory (the C{gatewaykit_cache_bytes} gauge)."""
        return self.memory.bytes

    def count(self, label: Label) -> None:
        """Count one response sent with C{X-Cache: label}."""
        self.lookups[_RESULTS[label]] += 1

    # -- requests ---------------------------------------------------------

    def on_request(self, call: PolicyCall) -> Any:
        request = call.request
        method = request.method
        if method != "GET" and method != "HEAD":
            self._bypass(call)
            return None
        lookup = Lookup(request, self.clock.seconds())
        if lookup.preconditions:
            self._bypass(call)
            return None
        memory = self.memory
        entry = memory.get(lookup.primary)
        if entry is None:
            lookup.coding = self._coding(call)
            entry = memory.find_variant(lookup.primary, request.headers, lookup.coding)
        if entry is not None:
            if lookup.plain and not entry.no_cache and lookup.now < entry.expires:
                # The fast path: fresh, and asked for as stored.
                self.lookups["hit"] += 1
                return CachedAnswer(entry, lookup, HIT, self.node, lookup.now)
            return self._use(call, lookup, entry)
        if self.tier is not None:
            found = self.tier.get(lookup.primary, request.headers, lookup.coding)
            return found.addCallback(self._from_tier, call, lookup)
        return self._miss(call, lookup, None)

    def _coding(self, call: PolicyCall) -> Coding:
        """The coding a later policy (compress) will give the response, if any says."""
        for policy in call.later_policies():
            variant_coding = getattr(policy, "variant_coding", None)
            if variant_coding is not None:
                coding: Coding = variant_coding(call.request)
                return coding
        return None

    def _from_tier(self, entry: Optional[Entry], call: PolicyCall, lookup: Lookup) -> Any:
        lookup.now = self.clock.seconds()
        if entry is None:
            return self._miss(call, lookup, None)
        self.memory.put(entry)
        return self._use(call, lookup, entry)

    def _answer(self, entry: Entry, lookup: Lookup, label: Label) -> CachedAnswer:
        self.count(label)
        return CachedAnswer(entry, lookup, label, self.node, self.clock.seconds())

    def _use(self, call: PolicyCall, lookup: Lookup, entry: Entry) -> Any:
        """Answer with a stored C{entry}, or go upstream to revalidate it."""
        verdict = lookup.judge(entry)
        if verdict == FRESH:
            return self._answer(entry, lookup, HIT)
        if verdict == TOLERATED:
            return self._answer(entry, lookup, STALE)
        if verdict == REFRESH:
            self._refresh(call, entry)
            return self._answer(entry, lookup, STALE)
        return self._miss(call, lookup, entry)

    def _miss(self, call: PolicyCall, lookup: Lookup, stale: Optional[Entry]) -> Any:
        """Go upstream (revalidating C{stale} if given), or wait for a request that did."""
        if lookup.only_if_cached:
            self.count(MISS)
            return GatewayError(
                504,
                "not_cached",
                "only-if-cached: no stored response can answer this request",
                headers=((X_CACHE, MISS), (X_CACHE_NODE, self.node)),
            )
        request = call.request
        if lookup.coding is None:
            lookup.coding = self._coding(call)
        if request.method != "GET" or lookup.no_store or lookup.range:
            # Its response is not stored: nothing to share with others.
            may_store = request.method == "GET" and not lookup.no_store and not lookup.range
            call.wrap_stream(
                lambda inner: CacheFill(inner, self, lookup, stale, may_store=may_store)
            )
            return None
        key = stale.key if stale is not None else self.memory.storage_key(
            lookup.primary, request.headers, lookup.coding
        )
        collapse = self._collapses.get(key)
        if collapse is not None:
            return collapse.wait().addCallback(self._waited, call, lookup, stale)
        collapse = self._collapses[key] = Collapse(
            key, self.clock, COLLAPSE_TIMEOUT, self._forget
        )
        self._upstream(call, lookup, stale, collapse)
        return None

    def _forget(self, collapse: Collapse) -> None:
        if self._collapses.get(collapse.key) is collapse:
            del self._collapses[collapse.key]

    def _waited(
        self, outcome: Outcome, call: PolicyCall, lookup: Lookup, stale: Optional[Entry]
    ) -> Any:
        """The request this one waited for has its answer: use it, or go upstream."""
        lookup.now = self.clock.seconds()
        if outcome is not None:
            label, entry = outcome
            if label == STALE:
                return self._answer(entry, lookup, STALE)
            found = self.memory.find(lookup.primary, call.request.headers, lookup.coding)
            if found is not None and lookup.judge(found) == FRESH:
                return self._answer(found, lookup, HIT)
        self._upstream(call, lookup, stale, None)
        return None

    def _upstream(
        self,
        call: PolicyCall,
        lookup: Lookup,
        stale: Optional[Entry],
        collapse: Optional[Collapse],
    ) -> None:
        """Send the request on, with the cache's validators in place of the client's."""
        headers = call.request.headers
        answers_conditions = lookup.conditional
        if answers_conditions:
            for name in _CLIENT_VALIDATORS:
                headers.remove(name)
        validating = stale is not None and _add_validators(headers.raw, stale)
        call.wrap_stream(
            lambda inner: CacheFill(
                inner,
                self,
                lookup,
                stale,
                collapse,
                validating=validating,
                answers_conditions=answers_conditions,
            )
        )

    def _refresh(self, call: PolicyCall, entry: Entry) -> None:
        """Revalidate C{entry} in the background (stale-while-revalidate)."""
        now = self.clock.seconds()
        started = self._refreshing.get(entry.key)
        if started is not None and now - started < REFRESH_TIMEOUT:
            return
        self._refreshing[entry.key] = now
        request = refresh_request(call.request, entry, now)
        lookup = Lookup(request, now)
        lookup.coding = self._coding(call)  # so a new variant replaces this one
        key = entry.key

        def done() -> None:
            if self._refreshing.get(key) == now:
                del self._refreshing[key]

        stream = CacheFill(
            BackgroundStream(request, self._date, done),
            self,
            lookup,
            entry,
            validating=entry.etag is not None or entry.last_modified is not None,
        )
        try:
            call.subrequest(request, stream)
        except Exception:
            log.failure("cache {policy}: refreshing {key} failed", policy=self.name, key=key)
            done()

    # -- unsafe methods ---------------------------------------------------

    def _bypass(self, call: PolicyCall) -> None:
        request = call.request
        self.count(BYPASS)
        unsafe = request.method not in SAFE_METHODS

        def mark(status: int, fields: Fields) -> None:
            fields.append((X_CACHE, BYPASS))
            fields.append((X_CACHE_NODE, self.node))
            if unsafe and status < 400:
                self._invalidate(request, fields)

        call.on_response(mark)

    def _invalidate(self, request: Request, fields: Fields) -> None:
        """
        Forget the target URI after an unsafe request succeeded, and the
        C{Location} and C{Content-Location} URIs of the same origin (RFC 9111 4.4).
        """
        primary = primary_key(request)
        self.forget(primary)
        origin = f"{request.scheme}://{authority(request.scheme, request.host, request.port)}/"
        headers = Headers(fields)
        for name in (b"location", b"content-location"):
            value = headers.get(name)
            if value is None:
                continue
            target = key_for_url(urljoin(primary, value.decode("latin-1").strip()))
            if target is not None and target.startswith(origin):
                self.forget(target)

    # -- storing ----------------------------------------------------------

    def store(self, entry: Entry) -> None:
        """Keep C{entry} in memory, and in the Redis tier."""
        self.memory.put(entry)
        if self.tier is not None:
            self.tier.put(entry)

    def forget(self, primary: str) -> int:
        """Drop every entry of C{primary} from both tiers; how many were in memory."""
        count = self.memory.remove_primary(primary)
        if self.tier is not None:
            self.tier.delete(primary)
        return count

    def purge(self, prefix: Optional[str] = None, url: Optional[str] = None) -> int:
        """
        Drop what is stored under path C{prefix}, or for C{url} (the admin
        API's C{POST /cache/purge}); how many entries went from memory.
        """
        count = self.memory.purge(prefix, url)
        tier = self.tier
        if tier is not None:
            if prefix is not None:
                tier.purge_prefix(prefix)
            elif url is not None:
                primary = key_for_url(url)
                if primary is not None:
                    tier.delete(primary)
        return count

    def close(self) -> None:
        """Send requests still waiting for another's response on their way."""
        for collapse in list(self._collapses.values()):
            collapse.settle(None)


@implementer(IPolicyFactory)
class CacheFactory:
    """The C{cache} policy type."""

    name = "cache"
    options = staticmethod(OPTIONS)

    def build(self, name: str, options: CacheOptions, context: PolicyContext) -> Cache:
        return Cache(name, options, context.reactor, context.store, context.config.gateway.node)


__all__ = ["Cache", "CacheFactory", "CacheOptions"]
