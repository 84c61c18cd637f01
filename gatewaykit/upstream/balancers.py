"""
The built-in balancers (registered as plugins in
C{twisted/plugins/gatewaykit_plugins.py}).
"""

from __future__ import annotations

from typing import Any, Collection, Optional, Sequence

from zope.interface import implementer

from gatewaykit.interfaces import IBalancer, ITarget


@implementer(IBalancer)
class RoundRobin:
    """Each available target in turn."""

    def __init__(self, upstream: Any, targets: Sequence[ITarget]) -> None:
        self._targets = list(targets)
        self._next = 0

    def pick(
        self, request: Any, exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        targets = self._targets
        count = len(targets)
        start = self._next
        for offset in range(count):
            target = targets[(start + offset) % count]
            if target.available and target not in exclude:
                self._next = (start + offset + 1) % count
                return target
        return None
