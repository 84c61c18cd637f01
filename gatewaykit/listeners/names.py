"""
Choosing by server name (SNI): an https listener's certificate, a
tls_passthrough listener's upstream.
"""

from __future__ import annotations

from typing import Generic, Iterable, Optional, TypeVar

T = TypeVar("T")


class NameTable(Generic[T]):
    """
    Values by server name: an exact name first, then a C{*.suffix}
    wildcard, then the default.

    With C{any_depth} a wildcard matches names any number of labels under
    its suffix, the longest suffix winning (as route hosts do); without it
    a wildcard stands for exactly one label, as in a certificate (RFC 6125).
    The first entry given for a name wins.
    """

    def __init__(
        self,
        entries: Iterable[tuple[str, T]],
        default: Optional[T] = None,
        any_depth: bool = True,
    ) -> None:
        self._exact: dict[str, T] = {}
        self._wildcards: dict[str, T] = {}  # keyed by the suffix with its dot: ".example.com"
        for name, value in entries:
            name = name.lower()
            if name.startswith("*."):
                self._wildcards.setdefault(name[1:], value)
            else:
                self._exact.setdefault(name, value)
        self.default = default
        self._any_depth = any_depth

    def lookup(self, name: Optional[str]) -> Optional[T]:
        """The value for server name C{name} (C{None}: the client sent none)."""
        if not name:
            return self.default
        name = name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is not None:
            return found
        if self._wildcards:
            # The first label is never part of a suffix, so "*.example.com"
            # does not match "example.com".
            dot = name.find(".", 1)
            while dot != -1:
                found = self._wildcards.get(name[dot:])
                if found is not None:
                    return found
                if not self._any_depth:
                    break
                dot = name.find(".", dot + 1)
        return self.default
