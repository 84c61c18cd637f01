"""
The built-in balancers, each registered as a plugin in
C{twisted/plugins/gatewaykit_plugins.py} exactly as a third party's would be.

Every balancer is built as C{Balancer(upstream, targets)} and provides
L{IBalancer}: C{pick(request, exclude)} returns an available target not in
C{exclude}, or C{None}. Availability is read at every pick, since health
checks and outlier ejection flip it at any time; nothing here is told when
it changes. C{pick} runs once per request, so each keeps its common case
(every target available, nothing excluded) to a few attribute reads.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from hashlib import blake2b
from itertools import accumulate
from math import gcd
from operator import attrgetter
from typing import TYPE_CHECKING, Callable, Collection, Optional, Sequence

from zope.interface import implementer

from gatewaykit.config.model import HashKey, UpstreamConfig
from gatewaykit.interfaces import IBalancer, ITarget

if TYPE_CHECKING:
    from gatewaykit.http.message import Request

# weighted_round_robin precomputes its cycle when the weights add up to at
# most this (else it runs nginx's loop on every pick), and repeats a short
# cycle up to at least SCHEDULE_MIN picks so that the availability check
# made once per cycle stays rare.
SCHEDULE_MAX = 4096
SCHEDULE_MIN = 64

# hash: ring points per unit of weight (ketama's and nginx's 160), and a
# bound on the ring's size for very large weights.
POINTS_PER_WEIGHT = 160
RING_POINTS_MAX = 1 << 20


def _eligible(target: ITarget, exclude: Collection[ITarget]) -> bool:
    return bool(target.available) and target not in exclude


@implementer(IBalancer)
class RoundRobin:
    """Each available target in turn; weights are ignored."""

    def __init__(self, upstream: Optional[UpstreamConfig], targets: Sequence[ITarget]) -> None:
        self._targets = tuple(targets)
        self._next = 0

    def pick(
        self, request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        targets = self._targets
        count = len(targets)
        start = self._next
        for offset in range(count):
            index = start + offset
            if index >= count:
                index -= count
            target = targets[index]
            if target.available and target not in exclude:
                self._next = index + 1 if index + 1 < count else 0
                return target
        return None


def _smooth_step(
    targets: Sequence[ITarget], current: list[int], exclude: Collection[ITarget]
) -> int:
    """
    One step of nginx's smooth weighted round robin
    (C{ngx_http_upstream_get_peer}): every eligible target gains its weight,
    the one with the most (the first on a tie) is chosen and loses the
    total. Returns its index, or -1.
    """
    best = -1
    total = 0
    for index, target in enumerate(targets):
        if not target.available or target in exclude:
            continue
        weight = target.weight
        current[index] += weight
        total += weight
        if best < 0 or current[index] > current[best]:
            best = index
    if best >= 0:
        current[best] -= total
    return best


@implementer(IBalancer)
class WeightedRoundRobin:
    """
    nginx's smooth weighted round robin: weights 5:1:1 give C{a a b a c a a},
    never a burst to the heavy target.

    The cycle over the available targets is computed once and replayed; the
    targets' availability is compared with the cycle's once per cycle, and a
    change rebuilds it. Turns whose target went unavailable mid-cycle, and
    picks whose scheduled target is excluded (retries), are taken by nginx's
    loop run live over the eligible targets, which keeps the proportions.
    """

    def __init__(self, upstream: Optional[UpstreamConfig], targets: Sequence[ITarget]) -> None:
        self._targets = tuple(targets)
        self._current = [0] * len(self._targets)
        self._position = 0
        self._members: tuple[bool, ...] = ()
        self._schedule: Optional[list[ITarget]] = None
        if sum(target.weight for target in self._targets) <= SCHEDULE_MAX:
            self._build()

    def _build(self) -> None:
        targets = self._targets
        self._members = tuple(bool(target.available) for target in targets)
        weights = [target.weight for target in targets if target.available]
        period = sum(weights) // gcd(*weights) if weights else 0
        current = [0] * len(targets)
        cycle = [targets[_smooth_step(targets, current, ())] for _ in range(period)]
        self._schedule = cycle * max(1, SCHEDULE_MIN // period) if cycle else []
        self._position = 0

    def _restart(self) -> None:
        if tuple(bool(target.available) for target in self._targets) != self._members:
            self._build()
        self._position = 0

    def pick(
        self, request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        if self._schedule is not None:
            if self._position >= len(self._schedule):
                self._restart()
            schedule = self._schedule
            if schedule:
                position = self._position
                target = schedule[position]
                if target not in exclude:
                    self._position = position + 1
                    if target.available:
                        return target
        index = _smooth_step(self._targets, self._current, exclude)
        return self._targets[index] if index >= 0 else None


@implementer(IBalancer)
class LeastRequest:
    """
    The target with the fewest requests in flight relative to its weight
    (C{in_flight / weight}); on a tie the heavier target, then the next in
    round-robin order, so idle equal targets still take turns.

    This scans the targets on each pick (in-flight counts change without
    telling the balancer), stopping early at an idle target of the largest
    weight, which nothing can beat.
    """

    def __init__(self, upstream: Optional[UpstreamConfig], targets: Sequence[ITarget]) -> None:
        self._targets = tuple(targets)
        self._heaviest = max((target.weight for target in self._targets), default=0)
        self._next = 0

    def pick(
        self, request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        targets = self._targets
        count = len(targets)
        heaviest = self._heaviest
        start = self._next
        best: Optional[ITarget] = None
        best_index = 0
        for offset in range(count):
            index = start + offset
            if index >= count:
                index -= count
            target = targets[index]
            if not target.available or target in exclude:
                continue
            if best is not None:
                # in_flight / weight compared without division.
                mine = target.in_flight * best.weight
                theirs = best.in_flight * target.weight
                if mine > theirs or (mine == theirs and target.weight <= best.weight):
                    continue
            best = target
            best_index = index
            if target.in_flight == 0 and target.weight == heaviest:
                break
        if best is None:
            return None
        self._next = best_index + 1 if best_index + 1 < count else 0
        return best


@implementer(IBalancer)
class PowerOfTwoChoices:
    """
    Two distinct targets chosen at random; the one with the lower
    C{ewma_latency * (in_flight + 1)} wins (the first drawn on a tie).

    A target without a latency sample yet is scored with its rival's
    latency, so the two compare on in-flight requests alone: a new or
    recovered target is neither flooded (as a latency of 0 would do) nor
    starved (as a pessimistic default would).
    """

    def __init__(
        self,
        upstream: Optional[UpstreamConfig],
        targets: Sequence[ITarget],
        rng: Optional[random.Random] = None,
    ) -> None:
        self._targets = tuple(targets)
        self._random = (rng if rng is not None else random.Random()).random

    def pick(
        self, request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        targets = self._targets
        count = len(targets)
        if count < 2:
            return targets[0] if count and _eligible(targets[0], exclude) else None
        first, second = self._two(targets)
        if not (
            first.available and second.available and first not in exclude and second not in exclude
        ):
            eligible = [target for target in targets if _eligible(target, exclude)]
            if len(eligible) < 2:
                return eligible[0] if eligible else None
            first, second = self._two(eligible)
        first_latency = first.ewma_latency or second.ewma_latency or 1.0
        second_latency = second.ewma_latency or first_latency
        if second_latency * (second.in_flight + 1) < first_latency * (first.in_flight + 1):
            return second
        return first

    def _two(self, targets: Sequence[ITarget]) -> tuple[ITarget, ITarget]:
        """Two distinct targets drawn uniformly from C{targets} (at least two)."""
        count = len(targets)
        first = int(self._random() * count)
        second = int(self._random() * (count - 1))
        if second >= first:
            second += 1
        return targets[first], targets[second]


@implementer(IBalancer)
class WeightedRandom:
    """A target drawn at random in proportion to its weight."""

    def __init__(
        self,
        upstream: Optional[UpstreamConfig],
        targets: Sequence[ITarget],
        rng: Optional[random.Random] = None,
    ) -> None:
        self._targets = tuple(targets)
        self._bounds = tuple(accumulate(target.weight for target in self._targets))
        self._total = self._bounds[-1] if self._bounds else 0
        self._random = (rng if rng is not None else random.Random()).random

    def pick(
        self, request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        if not self._targets:
            return None
        bounds = self._bounds
        # hi guards against random() * total rounding up to total.
        index = bisect_right(bounds, self._random() * self._total, 0, len(bounds) - 1)
        target = self._targets[index]
        if target.available and target not in exclude:
            return target
        # Draw again among the eligible only, so their proportions hold.
        eligible = [target for target in self._targets if _eligible(target, exclude)]
        if not eligible:
            return None
        point = self._random() * sum(target.weight for target in eligible)
        for target in eligible:
            point -= target.weight
            if point < 0:
                return target
        return eligible[-1]


def hash64(text: str) -> int:
    """
    A 64-bit hash of C{text} that every process and every node computes
    alike (unlike the salted built-in C{hash()}).
    """
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def key_reader(key: HashKey) -> Callable[[Request], Optional[str]]:
    """The function reading C{key}'s value from a request (C{None} when absent)."""
    name = key.name or ""
    readers: dict[str, Callable[[Request], Optional[str]]] = {
        "ip": attrgetter("client_ip"),
        "path": attrgetter("path"),
        "header": lambda request: request.headers.get_str(name),
        "cookie": lambda request: request.cookies.get(name),
        "query": lambda request: request.query_param(name),
    }
    return readers[key.kind]


@implementer(IBalancer)
class ConsistentHash:
    """
    A consistent hash ring on the upstream's C{hash_key}: the same key goes to
    the same target, and adding or removing one of N targets moves about 1/N
    of the keys.

    Each target owns C{160 * weight} points of a 64-bit ring (fewer per unit
    of weight when the weights add up beyond 6553, keeping the ring under
    about a million points), placed by hashing its address, so a target's
    points do not depend on the others. A key belongs to the first point
    after its hash; when that target is unavailable or excluded, the walk
    goes on around the ring to the next eligible one, which is where the key
    would live if the target were removed. A request without the key (or
    with it empty) is balanced round robin.
    """

    def __init__(self, upstream: UpstreamConfig, targets: Sequence[ITarget]) -> None:
        self._targets = tuple(targets)
        self._read_key = key_reader(upstream.hash_key)
        self._fallback = RoundRobin(upstream, self._targets)
        total = sum(target.weight for target in self._targets)
        per_weight = min(POINTS_PER_WEIGHT, RING_POINTS_MAX / max(total, 1))
        ring = sorted(
            (hash64(f"{target.address}#{replica}"), index)
            for index, target in enumerate(self._targets)
            for replica in range(max(1, int(target.weight * per_weight)))
        )
        self._points = [point for point, _ in ring]
        self._owners = [self._targets[index] for _, index in ring]

    def pick(
        self, request: Optional[Request], exclude: Collection[ITarget] = ()
    ) -> Optional[ITarget]:
        key = self._read_key(request) if request is not None else None
        if not key or not self._points:
            return self._fallback.pick(request, exclude)
        index = bisect_right(self._points, hash64(key))
        if index == len(self._points):
            index = 0
        owner = self._owners[index]
        if owner.available and owner not in exclude:
            return owner
        return self._walk(index, exclude)

    def _walk(self, index: int, exclude: Collection[ITarget]) -> Optional[ITarget]:
        """The first eligible target after ring position C{index}."""
        owners = self._owners
        size = len(owners)
        seen = {owners[index]}
        for step in range(1, size):
            owner = owners[(index + step) % size]
            if owner in seen:
                continue
            if owner.available and owner not in exclude:
                return owner
            seen.add(owner)
            if len(seen) == len(self._targets):
                break
        return None
