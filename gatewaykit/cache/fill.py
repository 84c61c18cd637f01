"""
A response on its way from the upstream through the cache: it is passed
on to the client as it arrives and kept for the store at the same time,
and requests for the same key that arrived meanwhile wait for it (request
collapsing) instead of going upstream too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from gatewaykit.cache.answers import (
    MISS,
    NOT_MODIFIED_FIELDS,
    REVALIDATED,
    STALE,
    X_CACHE,
    X_CACHE_NODE,
    not_modified,
    send_entry,
)
from gatewaykit.cache.entry import Entry
from gatewaykit.cache.freshness import http_date
from gatewaykit.cache.keys import response_coding, secondary_key, variant_key
from gatewaykit.cache.lookup import Lookup
from gatewaykit.http.stream import StreamWrapper

Outcome = Optional[tuple[bytes, Entry]]
"""What a fill tells its waiters: C{None} (go upstream yourselves), or
C{(STALE, entry)} (serve this stale entry), or another label with the
entry just stored or revalidated (look again: it may not be your variant)."""

_OURS = frozenset({b"x-cache", b"x-cache-node"})


class Collapse:
    """
    The requests waiting for one response to the same key. They are told
    the outcome once it is known, or C{timeout} seconds after the first
    began to wait (C{None}: go upstream), as nginx's
    C{proxy_cache_lock_timeout}.
    """

    def __init__(
        self, key: str, clock: Any, timeout: float, forget: Callable[[Collapse], None]
    ) -> None:
        self.key = key
        self.settled = False
        self._waiters: list[Deferred[Outcome]] = []
        self._forget = forget
        self._clock = clock
        self._timeout = timeout
        # Started by the first waiter: most misses have none to time out.
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._waiters)

    def wait(self) -> Deferred[Outcome]:
        """Fires with the outcome."""
        waiter: Deferred[Outcome] = Deferred()
        self._waiters.append(waiter)
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self.settle, None)
        return waiter

    def settle(self, outcome: Outcome) -> None:
        """Tell every waiter C{outcome}; later requests no longer join."""
        if self.settled:
            return
        self.settled = True
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._forget(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(outcome)


def labelled(
    fields: list[tuple[bytes, bytes]], label: bytes, node: bytes
) -> list[tuple[bytes, bytes]]:
    """C{fields} with C{X-Cache: label} and C{X-Cache-Node} (replacing an upstream's)."""
    kept = [(name, value) for name, value in fields if name.lower() not in _OURS]
    kept.append((X_CACHE, label))
    kept.append((X_CACHE_NODE, node))
    return kept


class CacheFill(StreamWrapper):
    """
    The response to a request the cache could not answer, between the
    upstream (or the policies after the cache) and the client.

    It decides from the head whether the response may be stored, then
    passes each piece on and keeps a copy, up to C{max_object_bytes}; at
    the end the copy is stored. With a C{stale} entry it also handles what
    a revalidation may bring: a 304 refreshes the entry, which answers the
    client (C{REVALIDATED}); a server error or a failure to reach the
    upstream is answered with the stale entry when its C{stale-if-error}
    allows (C{STALE}).

    @param cache: the L{gatewaykit.policies.cache.Cache} policy (clock,
        limits, counters, storing).
    @param lookup: the request as the cache read it.
    @param stale: the stored entry being revalidated or kept for errors.
    @param collapse: the requests waiting for this response.
    @param may_store: whether the response may be stored at all.
    @param validating: whether the request carries the cache's validators.
    @param answers_conditions: the client's own validators were taken off
        the request: a 200 they match is answered 304 (and still stored).
    """

    def __init__(
        self,
        inner: Any,
        cache: Any,
        lookup: Lookup,
        stale: Optional[Entry] = None,
        collapse: Optional[Collapse] = None,
        may_store: bool = True,
        validating: bool = False,
        answers_conditions: bool = False,
    ) -> None:
        super().__init__(inner)
        self._cache = cache
        self._lookup = lookup
        self._stale = stale
        self._collapse = collapse
        self._may_store = may_store
        self._validating = validating
        self._answers_conditions = answers_conditions
        self._entry: Optional[Entry] = None
        self._chunks: Optional[list[bytes]] = None
        self._captured = 0
        self._detached = False  # the client's answer is complete: nothing more goes to it
        self._handler: Any = None

    # The handler is told when the client goes away; so must we be.
    @property
    def handler(self) -> Any:
        return self._handler

    @handler.setter
    def handler(self, value: Any) -> None:
        self._handler = value
        self.inner.handler = self if value is not None else None

    def stream_lost(self) -> None:
        self._give_up()
        handler = self._handler
        if handler is not None:
            handler.stream_lost()

    # -- the head -----------------------------------------------------------

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        cache = self._cache
        lookup = self._lookup
        now = cache.clock.seconds()
        stale = self._stale
        if stale is not None:
            if status == 304 and self._validating:
                entry = stale.updated(
                    fields, lookup.now, now, cache.default_ttl, cache.stale_if_error
                )
                cache.store(entry)
                self._settle((REVALIDATED, entry))
                self._answer(entry, REVALIDATED, now)
                return
            if status >= 500 and lookup.may_serve_on_error(stale, now):
                self._settle((STALE, stale))
                self._answer(stale, STALE, now)
                return
        if self._candidate(status, fields, content_length, reason, now) is None:
            self._settle(None)
        cache.count(MISS)
        fields = labelled(fields, MISS, cache.node)
        if (
            self._answers_conditions
            and status == 200
            and lookup.conditional
            and _matches(lookup, fields)
        ):
            # The client's copy is current: it gets a 304 at once; the
            # body still comes in for the store, or is dropped.
            kept = [(n, v) for n, v in fields if n.lower() in NOT_MODIFIED_FIELDS]
            kept.append((X_CACHE, MISS))
            kept.append((X_CACHE_NODE, cache.node))
            kept.append((b"X-Request-ID", lookup.request.request_id.encode("ascii")))
            self.inner.write_head(304, kept)
            self.inner.finish()
            self._detached = True
            return
        self.inner.write_head(status, fields, content_length, reason)

    def _candidate(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int],
        reason: Optional[bytes],
        now: float,
    ) -> Optional[Entry]:
        """Start keeping the response if it may be stored; the entry to be, or C{None}."""
        lookup = self._lookup
        request = lookup.request
        if not self._may_store or request.method != "GET":
            return None
        cache = self._cache
        if content_length is not None and content_length > cache.max_object_bytes:
            return None
        entry = Entry(
            lookup.primary,
            lookup.primary,
            request.path,
            status,
            reason,
            fields,
            lookup.now,
            now,
            cache.default_ttl,
            cache.stale_if_error,
        )
        if entry.refusal(lookup.authorized) is not None or not entry.useful():
            return None
        if entry.vary:
            # Keyed by the negotiated coding only if the body has it (not
            # if the upstream chose a coding of its own).
            coding = lookup.coding
            if coding is not None and response_coding(fields) != coding:
                coding = None
            secondary = secondary_key(entry.vary, request.headers, coding)
            entry.key = variant_key(lookup.primary, secondary)
        self._entry = entry
        self._chunks = []
        return entry

    def _answer(self, entry: Entry, label: bytes, now: float) -> None:
        """Answer the client from C{entry} instead of what the upstream sent."""
        cache = self._cache
        cache.count(label)
        self._detached = True
        send_entry(self.inner, entry, self._lookup, label, cache.node, now)

    # -- the body -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is not None:
            self._captured += len(data)
            if self._captured > self._cache.max_object_bytes:
                self._give_up()
            else:
                chunks.append(data)
        if not self._detached:
            self.inner.write(data)

    def finish(self) -> None:
        entry, chunks = self._entry, self._chunks
        self._entry = self._chunks = None
        if entry is not None and chunks is not None:
            entry.body = b"".join(chunks)
            self._cache.store(entry)
            self._settle((MISS, entry))
        else:
            self._settle(None)
        if not self._detached:
            self.inner.finish()

    def abort(self) -> None:
        self._give_up()
        if not self._detached:
            self.inner.abort()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self._detached:
            self.inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if not self._detached:
            self.inner.unregisterProducer()

    # -- endings ------------------------------------------------------------

    def _give_up(self) -> None:
        self._entry = self._chunks = None
        self._settle(None)

    def _settle(self, outcome: Outcome) -> None:
        collapse, self._collapse = self._collapse, None
        if collapse is not None:
            collapse.settle(outcome)


def _matches(lookup: Lookup, fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether the client's validators match a response with C{fields}."""
    etag = last_modified = None
    for name, value in fields:
        lower = name.lower()
        if lower == b"etag" and etag is None:
            etag = value.strip()
        elif lower == b"last-modified" and last_modified is None:
            last_modified = http_date(value)
    return not_modified(lookup, etag, last_modified)
