"""
The in-process state store: the default without C{gateway.redis}, and the
local fallback of rate limits when Redis is away. Its rate-limit arithmetic
is the reference the Redis scripts (C{state/lua/*.lua}) follow.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from gatewaykit.interfaces import IStateStore
from gatewaykit.state import Decision
from gatewaykit.timer import Timer

# Expired entries are swept at most this often.
SWEEP_SECONDS = 10.0


def gcra(
    tat: Optional[float], now: float, limit: int, window: float, burst: int
) -> tuple[Decision, float]:
    """
    The generic cell rate algorithm: C{limit} per C{window}, refilled evenly,
    a quiet key able to spend C{limit + burst} at once. C{tat} is the key's
    theoretical arrival time (C{None}: never seen). Returns the decision
    and the new C{tat}.
    """
    capacity = limit + burst
    interval = window / limit
    tolerance = interval * (capacity - 1)
    tat = now if tat is None or tat < now else tat
    if tat - now > tolerance:
        retry_after = tat - now - tolerance
        remaining = 0
        return Decision(False, capacity, remaining, tat - now, retry_after), tat
    tat += interval
    # Whole intervals of tolerance left, plus the one this request used.
    remaining = int(math.floor((tolerance - (tat - now)) / interval + 1e-9)) + 1
    remaining = max(0, min(capacity - 1, remaining))
    return Decision(True, capacity, remaining, tat - now), tat


def fixed_window(
    count: int, now: float, limit: int, window: float, burst: int
) -> tuple[Decision, int]:
    """
    At most C{limit + burst} per window aligned on multiples of C{window}.
    C{count} is the requests already counted in the current window.
    """
    capacity = limit + burst
    reset_after = window - (now % window)
    if count >= capacity:
        return Decision(False, capacity, 0, reset_after, reset_after), count
    count += 1
    return Decision(True, capacity, capacity - count, reset_after), count


def sliding_window(
    previous: int, current: int, now: float, limit: int, window: float, burst: int
) -> tuple[Decision, int]:
    """
    The two-window approximation (as Cloudflare and NGINX Plus use): the
    previous aligned window's count weighted by how much of it still
    overlaps the last C{window} seconds, plus the current window's count.
    Returns the decision and the new current count.
    """
    capacity = limit + burst
    elapsed = now % window
    weight = 1.0 - elapsed / window
    estimate = previous * weight + current
    if estimate + 1 > capacity:
        # The estimate drops as the previous window slides out; when no
        # previous weight is left, only the window's end frees room.
        excess = estimate + 1 - capacity
        if previous and excess <= previous * weight:
            retry_after = excess / previous * window
        else:
            retry_after = window - elapsed
        return Decision(False, capacity, 0, window - elapsed, retry_after), current
    current += 1
    remaining = max(0, int(math.floor(capacity - (estimate + 1))))
    return Decision(True, capacity, remaining, window - elapsed), current


@implementer(IStateStore)
class MemoryStore:
    """
    State in this process only: right for one process, and for the local
    share of a limit when Redis is away. Answers at once.
    """

    shared = False

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._values: dict[str, tuple[Any, float]] = {}  # key -> (value, expires at)
        self._sweeper = Timer(clock, self._sweep)

    # -- key/value --------------------------------------------------------

    def _live(self, key: str) -> Any:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= self._clock.seconds():
            del self._values[key]
            return None
        return value

    def _store(self, key: str, value: Any, ttl: float) -> None:
        self._values[key] = (value, self._clock.seconds() + ttl)
        if not self._sweeper.armed:
            self._sweeper.set(SWEEP_SECONDS)

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        value = self._live(key)
        return succeed(value if isinstance(value, bytes) else None)

    def set(self, key: str, value: bytes, ttl: float) -> Deferred[None]:
        self._store(key, value, ttl)
        return succeed(None)

    def delete(self, key: str) -> Deferred[None]:
        self._values.pop(key, None)
        return succeed(None)

    # -- rate limits ------------------------------------------------------

    def rate_limit(
        self, key: str, limit: int, window: float, burst: int, algorithm: str
    ) -> Deferred[Decision]:
        return succeed(self.decide(key, limit, window, burst, algorithm))

    def decide(self, key: str, limit: int, window: float, burst: int, algorithm: str) -> Decision:
        """The decision, synchronously (the local fallback needs no Deferred)."""
        now = self._clock.seconds()
        if algorithm == "gcra":
            decision, tat = gcra(self._live(key), now, limit, window, burst)
            self._store(key, tat, max(tat - now, 0.0) + 1.0)
            return decision
        slot = int(now // window)
        if algorithm == "fixed_window":
            counter = f"{key}:{slot}"
            decision, count = fixed_window(self._live(counter) or 0, now, limit, window, burst)
            self._store(counter, count, window + 1.0)
            return decision
        if algorithm == "sliding_window":
            current_key, previous_key = f"{key}:{slot}", f"{key}:{slot - 1}"
            decision, count = sliding_window(
                self._live(previous_key) or 0,
                self._live(current_key) or 0,
                now,
                limit,
                window,
                burst,
            )
            self._store(current_key, count, 2 * window + 1.0)
            return decision
        raise ValueError(f"unknown rate-limit algorithm {algorithm!r}")

    # -- housekeeping -----------------------------------------------------

    def _sweep(self) -> None:
        now = self._clock.seconds()
        expired = [key for key, (_, expires) in self._values.items() if expires <= now]
        for key in expired:
            del self._values[key]
        if self._values:
            self._sweeper.set(SWEEP_SECONDS)

    def close(self) -> Deferred[None]:
        self._sweeper.cancel()
        self._values.clear()
        return succeed(None)

