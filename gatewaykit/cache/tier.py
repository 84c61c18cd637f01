"""
The shared second tier in the state store (C{redis_tier: true}): a miss in
this process's memory may be a hit stored by another worker or node.

Keys are C{gk:cache:<policy>:<sha256 of the primary key>}, holding either a
serialised L{Entry} or, for a response that varies, the list of field names
it varies on; the variants are under the SHA-256 of the primary and
secondary keys. Objects live as long as they may be used (freshness plus
the stale allowances, plus an hour for one that can be revalidated), at most
a day. A purge by prefix cannot list keys through the store, so it appends
to a purge log (C{gk:cache:<policy>:purged}) that every lookup reads: an
object stored before a purge of its path is not used.

Nothing here fails a request: a store that is down or slow (its own
timeout applies) is a miss, and writes are not waited for.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewaykit.cache.entry import Entry
from gatewaykit.cache.keys import under_prefix, variant_keys
from gatewaykit.http.message import Headers
from gatewaykit.interfaces import IStateStore
from gatewaykit.state import StoreUnavailable

log = Logger()

KEY_PREFIX = "gk:cache:"
MAX_TTL = 86400.0
REVALIDATION_GRACE = 3600.0
_VARY = b"V"
_PURGES = "purged"
_WARN_EVERY = 60.0


class RedisTier:
    """The cache's objects in the state store, for one cache policy."""

    def __init__(self, store: IStateStore, policy: str, clock: Any) -> None:
        self._store = store
        self._prefix = f"{KEY_PREFIX}{policy}:"
        self._clock = clock
        self._warned_at = -_WARN_EVERY

    def store_key(self, key: str) -> str:
        """The store's key for cache key C{key}."""
        return self._prefix + hashlib.sha256(key.encode("utf-8")).hexdigest()

    # -- reading -----------------------------------------------------------

    def get(
        self, primary: str, headers: Headers, coding: Optional[bytes] = None
    ) -> Deferred[Optional[Entry]]:
        """Fires with the entry for a request (C{None}: none, or the store failed)."""
        lookup: Deferred[Any] = gatherResults(
            [self._store.get(self.store_key(primary)), self._store.get(self._prefix + _PURGES)],
            consumeErrors=True,
        )
        lookup.addCallback(self._found, primary, headers, coding)
        return lookup.addErrback(self._failed, "lookup")

    def _found(
        self,
        results: list[Optional[bytes]],
        primary: str,
        headers: Headers,
        coding: Optional[bytes],
    ) -> Any:
        blob, purges = results
        if blob is None:
            return None
        if blob.startswith(_VARY):
            names = tuple(name for name in blob[len(_VARY) :].split(b",") if name)
            return self._variant(None, variant_keys(primary, names, headers, coding), purges)
        return self._entry(blob, purges)

    def _variant(self, blob: Optional[bytes], keys: list[str], purges: Optional[bytes]) -> Any:
        """The first of C{keys} the store has (tried one after the other)."""
        if blob is not None or not keys:
            return self._entry(blob, purges)
        found = self._store.get(self.store_key(keys[0]))
        return found.addCallback(self._variant, keys[1:], purges)

    def _entry(self, blob: Optional[bytes], purges: Optional[bytes]) -> Optional[Entry]:
        if blob is None:
            return None
        entry = Entry.deserialise(blob)
        if purges is not None:
            for prefix, when in json.loads(purges):
                if entry.stored_at <= when and under_prefix(entry.path, prefix):
                    return None
        return entry

    # -- writing -----------------------------------------------------------

    def put(self, entry: Entry) -> None:
        """Store C{entry} (in the background)."""
        now = self._clock.seconds()
        ttl = entry.keep_for(now)
        if entry.etag is not None or entry.last_modified is not None:
            ttl += REVALIDATION_GRACE
        ttl = min(ttl, MAX_TTL)
        if ttl <= 0:
            return
        if entry.vary:
            self._write(entry.primary, _VARY + b",".join(entry.vary), ttl)
        self._write(entry.key, entry.serialise(), ttl)

    def _write(self, key: str, value: bytes, ttl: float) -> None:
        self._store.set(self.store_key(key), value, ttl).addErrback(self._failed, "write")

    def delete(self, primary: str) -> None:
        """Forget C{primary} and its variants (in the background)."""
        self._store.delete(self.store_key(primary)).addErrback(self._failed, "delete")

    def purge_prefix(self, prefix: str) -> None:
        """Make every object stored until now under C{prefix} unusable (in the background)."""
        now = self._clock.seconds()
        key = self._prefix + _PURGES

        def append(current: Optional[bytes]) -> Deferred[None]:
            log_entries = json.loads(current) if current else []
            kept = [[p, when] for p, when in log_entries if when > now - MAX_TTL]
            kept.append([prefix, now])
            return self._store.set(key, json.dumps(kept).encode("utf-8"), MAX_TTL)

        self._store.get(key).addCallback(append).addErrback(self._failed, "purge")

    # -- failures ----------------------------------------------------------

    def _failed(self, failure: Failure, what: str) -> None:
        if failure.check(FirstError):
            failure = failure.value.subFailure
        if failure.check(StoreUnavailable):
            return None  # the store logs its own outages
        now = self._clock.seconds()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warn(
                "cache: Redis tier {what} failed: {error}",
                what=what,
                error=failure.getErrorMessage(),
            )
        return None
