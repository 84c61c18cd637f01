"""
Passive outlier ejection: targets that keep failing real requests are taken
out of the balancer's choice for a while, for longer each time they do it
again.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from gatewaykit.config.model import OutlierConfig
from gatewaykit.upstream.target import Target

# An ejection lasts at most this many times base_ejection.
MAX_EJECTION_FACTOR = 10


class OutlierDetector:
    """
    Ejects a target after C{consecutive_failures} failures in a row, for
    C{base_ejection} × 2^(n-1) on its n-th ejection (capped at 10 ×
    C{base_ejection}), while no more than C{max_ejected_percent} of the
    targets are ejected (one may always be, unless the percentage is 0). A
    target that stays out of trouble for the longest ejection time starts
    again from C{base_ejection}.

    @param on_change: called with C{(target, ejected, seconds)}.
    """

    def __init__(
        self,
        config: OutlierConfig,
        targets: Sequence[Target],
        reactor: Any,
        on_change: Callable[[Target, bool, float], None],
    ) -> None:
        self.config = config
        self._targets = list(targets)
        self._reactor = reactor
        self._on_change = on_change
        self._returns: dict[Target, Any] = {}  # pending un-ejections
        self._returned_at: dict[Target, float] = {}

    def record(self, target: Target, ok: bool) -> None:
        """One request's outcome on C{target}."""
        if ok:
            target.consecutive_failures = 0
            return
        target.consecutive_failures += 1
        if (
            not target.ejected
            and target.consecutive_failures >= self.config.consecutive_failures
            and self._may_eject()
        ):
            self._eject(target)

    def _may_eject(self) -> bool:
        percent = self.config.max_ejected_percent
        ejected = sum(1 for target in self._targets if target.ejected)
        if ejected == 0:
            return percent > 0
        return (ejected + 1) * 100 <= percent * len(self._targets)

    def _eject(self, target: Target) -> None:
        base = self.config.base_ejection
        longest = base * MAX_EJECTION_FACTOR
        now = self._reactor.seconds()
        if now - self._returned_at.get(target, now - longest - 1) > longest:
            target.ejections = 0
        target.ejections += 1
        seconds = min(base * 2 ** (target.ejections - 1), longest)
        target.ejected = True
        self._returns[target] = self._reactor.callLater(seconds, self._return, target)
        self._on_change(target, True, seconds)

    def _return(self, target: Target) -> None:
        self._returns.pop(target, None)
        target.ejected = False
        target.consecutive_failures = 0
        self._returned_at[target] = self._reactor.seconds()
        self._on_change(target, False, 0.0)

    def stop(self) -> None:
        """Cancel pending returns (on shutdown; the targets go with the upstream)."""
        for call in self._returns.values():
            if call.active():
                call.cancel()
        self._returns.clear()
