"""
The in-memory tier: stored responses by key, least recently used evicted
first once they hold more than C{max_bytes}.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from gatewaykit.cache.entry import Entry
from gatewaykit.cache.keys import key_for_url, under_prefix, variant_keys
from gatewaykit.http.message import Headers


class VaryIndex:
    """What a primary key whose response varies needs: the field names, the variants held."""

    __slots__ = ("names", "keys")

    def __init__(self, names: tuple[bytes, ...]) -> None:
        self.names = names
        self.keys: set[str] = set()


def _uri(primary: str) -> str:
    """The target URI part of a primary key (C{/a?b} of C{http://h/a?b})."""
    authority_start = primary.index("://") + 3
    slash = primary.find("/", authority_start)
    return primary[slash:] if slash != -1 else "/"


class MemoryTier:
    """
    Entries in this process, LRU-bounded by C{max_bytes}.

    @ivar bytes: what the entries count for now (L{Entry.size} summed).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._vary: dict[str, VaryIndex] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # -- finding ---------------------------------------------------------

    def get(self, key: str) -> Optional[Entry]:
        """The entry under C{key}, marked as just used."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def storage_key(self, primary: str, headers: Headers, coding: Optional[bytes] = None) -> str:
        """The key a request's response is under, as far as known now."""
        index = self._vary.get(primary)
        if index is None:
            return primary
        return variant_keys(primary, index.names, headers, coding)[0]

    def find_variant(
        self, primary: str, headers: Headers, coding: Optional[bytes] = None
    ) -> Optional[Entry]:
        """The stored variant of C{primary} matching a request's C{headers}, if any."""
        index = self._vary.get(primary)
        if index is None:
            return None
        for key in variant_keys(primary, index.names, headers, coding):
            entry = self.get(key)
            if entry is not None:
                return entry
        return None

    def find(
        self, primary: str, headers: Headers, coding: Optional[bytes] = None
    ) -> Optional[Entry]:
        """The entry matching a request with C{primary} key and C{headers}, if any."""
        entry = self.get(primary)
        if entry is not None:
            return entry
        return self.find_variant(primary, headers, coding)

    # -- changing --------------------------------------------------------

    def put(self, entry: Entry) -> None:
        """Store C{entry} under its key, evicting the least recently used as needed."""
        primary = entry.primary
        if entry.vary:
            index = self._vary.get(primary)
            if index is None or index.names != entry.vary:
                self.remove_primary(primary)
                index = self._vary[primary] = VaryIndex(entry.vary)
            index.keys.add(entry.key)
        elif primary in self._vary:
            self.remove_primary(primary)
        size = entry.size
        if size > self.max_bytes:
            return
        self._discard(entry.key)
        self._entries[entry.key] = entry
        self._sizes[entry.key] = size
        self.bytes += size
        self._evict()

    def resize(self, max_bytes: int) -> None:
        """Hold at most C{max_bytes} from now on."""
        self.max_bytes = max_bytes
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            self.remove(next(iter(self._entries)))

    def _discard(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= self._sizes.pop(key)
        return True

    def remove(self, key: str) -> bool:
        """Drop the entry under C{key}; whether there was one."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._discard(key)
        index = self._vary.get(entry.primary)
        if index is not None:
            index.keys.discard(key)
            if not index.keys:
                del self._vary[entry.primary]
        return True

    def remove_primary(self, primary: str) -> int:
        """Drop every entry of C{primary}, all variants; how many went."""
        count = int(self._discard(primary))
        index = self._vary.pop(primary, None)
        if index is not None:
            for key in index.keys:
                count += self._discard(key)
        return count

    def purge(self, prefix: Optional[str] = None, url: Optional[str] = None) -> int:
        """
        Drop the entries whose path lies under C{prefix}, or those of
        C{url} (absolute, or a path and query for every host); how many went.
        """
        if url is not None and not url.startswith("/"):
            primary = key_for_url(url)
            return 0 if primary is None else self.remove_primary(primary)
        if url is not None:
            doomed = {e.primary for e in self._entries.values() if _uri(e.primary) == url}
            return sum(self.remove_primary(primary) for primary in doomed)
        if prefix is None:
            return 0
        keys = [key for key, e in self._entries.items() if under_prefix(e.path, prefix)]
        return sum(self.remove(key) for key in keys)

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self._sizes.clear()
        self._vary.clear()
        self.bytes = 0
