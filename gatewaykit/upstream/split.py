"""
The C{split} route action: a weighted choice between upstreams per request,
for canary and blue-green releases.

Each request draws a point in C{[0, total weight)} and goes to the side
whose share of the cumulative weights holds it. With C{split_by} the point
comes from a stable hash of the client's key (address, header or cookie),
so one client stays on one side while the weights stay put; a request
without the key draws at random. The chosen side's L{ProxyAction} does the
rest, and the request records the upstream it went to (C{request.upstream})
for the metrics.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from typing import Any, Callable, Optional, Sequence

from zope.interface import implementer

from gatewaykit.config.model import HashKey
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IRouteAction
from gatewaykit.upstream.balancers import hash64, key_reader
from gatewaykit.upstream.proxy import ProxyAction

# Keeps split points independent of the hash balancer's ring, which hashes
# the same client keys: otherwise the clients of the smaller side would all
# land on one arc of its ring.
_SALT = "split:"


@implementer(IRouteAction)
class SplitAction:
    """
    Sends each request to one of C{sides} (C{(action, weight)} pairs, in
    config order), keyed by C{split_by} (C{None}: at random).
    """

    def __init__(
        self,
        sides: Sequence[tuple[ProxyAction, int]],
        split_by: Optional[HashKey] = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        weighted = [(action, weight) for action, weight in sides if weight > 0]
        if not weighted:
            raise ValueError("a split needs at least one weight above 0")
        self.actions = tuple(action for action, _ in weighted)
        self._bounds: list[int] = []
        total = 0
        for _, weight in weighted:
            total += weight
            self._bounds.append(total)
        self.total = total
        self._key = key_reader(split_by) if split_by is not None else None
        self._draw = draw

    def point(self, request: Request) -> int:
        """Where C{request} falls in C{[0, total)}: by its key's hash, else at random."""
        if self._key is not None:
            value = self._key(request)
            if value:
                return (hash64(_SALT + value) * self.total) >> 64
        return int(self._draw() * self.total)

    def choose(self, request: Request) -> ProxyAction:
        """The side C{request} goes to."""
        return self.actions[bisect_right(self._bounds, self.point(request))]

    def handle(self, request: Request, stream: Any) -> None:
        action = self.choose(request)
        request.upstream = action.upstream.name
        action.handle(request, stream)
