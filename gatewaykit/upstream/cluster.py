"""
An upstream: its targets, the balancer choosing between them, the pool of
connections to them, and what keeps bad targets out of the choice (active
health checks, passive outlier ejection) and bounds the load on them
(circuit breaker, retry budget).
"""

from __future__ import annotations

from typing import Any, Collection, Optional

from twisted.logger import Logger

from gatewaykit.config.model import UpstreamConfig
from gatewaykit.interfaces import IBalancer, IBalancerFactory, IStateStore, ITarget
from gatewaykit.timer import TimerPool
from gatewaykit.upstream.pool import ConnectionPool
from gatewaykit.upstream.target import Target

log = Logger()



class RetryBudget:
    """
    Retries may add at most C{percent} of the requests of the last
    C{WINDOW} seconds (plus C{MIN_PER_SECOND} a second, so a quiet upstream
    can still retry). Counted in one-second buckets, so a burst of failures
    is measured against the traffic that came before it.
    """

    WINDOW = 10
    MIN_PER_SECOND = 3

    def __init__(self, percent: float, clock: Any) -> None:
        self._share = percent / 100.0
        self._clock = clock
        self._second = 0
        self._requests = [0] * self.WINDOW
        self._retries = [0] * self.WINDOW

    def _bucket(self) -> int:
        second = int(self._clock.seconds())
        if second != self._second:
            # Empty the buckets of the seconds that passed (all, after a gap).
            for skipped in range(max(self._second + 1, second - self.WINDOW + 1), second + 1):
                index = skipped % self.WINDOW
                self._requests[index] = self._retries[index] = 0
            self._second = second
        return second % self.WINDOW

    def request(self) -> None:
        """Count one new request."""
        self._requests[self._bucket()] += 1

    def allow_retry(self) -> bool:
        """Whether one more retry fits; counts it if so."""
        index = self._bucket()
        allowed = self.MIN_PER_SECOND * self.WINDOW + self._share * sum(self._requests)
        if sum(self._retries) >= allowed:
            return False
        self._retries[index] += 1
        return True


class Upstream:
    """
    A named cluster of targets (one C{upstreams} entry made live).

    The proxy and the TCP tunnel use L{pick} to choose a target, L{record}
    to report how a request or connection went (feeding outlier ejection),
    and the counters below for the circuit breaker and the retry budget.

    @ivar in_flight: requests (or tunnels) in progress.
    @ivar pending: requests waiting for a new connection to a target.
    @ivar retry_budget: the L{RetryBudget} retries (but connect failures) spend.
    @ivar timers: the L{TimerPool} of the requests proxied here.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        reactor: Any,
        balancer_factory: IBalancerFactory,
        store: Optional[IStateStore] = None,
    ) -> None:
        from gatewaykit.upstream.health import HealthChecker
        from gatewaykit.upstream.outlier import OutlierDetector

        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.targets = [Target(target) for target in config.targets]
        self.balancer: IBalancer = balancer_factory.build(config, self.targets)
        self.pool = ConnectionPool(reactor, config)
        self.health = (
            HealthChecker(
                config.health,
                self.targets,
                reactor,
                self._health_changed,
                wrap=self.pool.tls.wrap if self.pool.tls is not None else None,
            )
            if config.health is not None
            else None
        )
        self.outlier = (
            OutlierDetector(config.outlier, self.targets, reactor, self._ejection_changed)
            if config.outlier is not None
            else None
        )
        self.store = store
        self._by_address = {target.address: target for target in self.targets}
        self.in_flight = 0
        self.pending = 0
        self.retry_budget = RetryBudget(config.retries.budget_percent, reactor)
        self.timers = TimerPool(reactor)

    def start(self) -> None:
        """Start active health checks (when configured)."""
        if self.health is not None:
            self.health.start()

    def stop_checks(self) -> None:
        """Stop active health checks (a newer config version does them now)."""
        if self.health is not None:
            self.health.stop()

    def close(self) -> None:
        """Stop checks and close idle connections (shutdown, or dropped by a reload)."""
        self.stop_checks()
        if self.outlier is not None:
            self.outlier.stop()
        self.pool.close()
        self.timers.close()

    def pick(self, request: Any, exclude: Collection[ITarget] = ()) -> Optional[ITarget]:
        """An available target for C{request}, not in C{exclude} when possible."""
        return self.balancer.pick(request, exclude)

    def target_at(self, address: str) -> Optional[Target]:
        """The target with C{address}, if this upstream has one."""
        return self._by_address.get(address)

    def record(self, target: Target, failure: Optional[str]) -> None:
        """
        How one request or connection to C{target} went: C{None} for a
        success, else the kind of failure (C{connect_failure}, C{reset},
        C{timeout}, or a 5xx status as text).
        """
        if failure is not None:
            target.failures += 1
        if self.outlier is not None:
            self.outlier.record(target, failure is None)

    # -- circuit breaker -------------------------------------------------------

    def overloaded(self) -> Optional[str]:
        """Why a new request must be refused at once, or C{None}."""
        breaker = self.config.circuit_breaker
        if self.in_flight >= breaker.max_requests:
            return f"{self.in_flight} requests in flight (max_requests {breaker.max_requests})"
        if self.pending >= breaker.max_pending:
            return (
                f"{self.pending} requests waiting for a connection"
                f" (max_pending {breaker.max_pending})"
            )
        return None


    # -- state changes --------------------------------------------------------

    def _health_changed(self, target: Target, healthy: bool) -> None:
        log.info(
            "upstream {upstream}: target {target} is now {state}",
            upstream=self.name,
            target=target.address,
            state="healthy" if healthy else "unhealthy",
        )
        if not healthy:
            self.pool.close_idle(target)

    def _ejection_changed(self, target: Target, ejected: bool, seconds: float) -> None:
        if ejected:
            log.warn(
                "upstream {upstream}: ejecting {target} for {seconds:g}s after"
                " {failures} consecutive failures",
                upstream=self.name,
                target=target.address,
                seconds=seconds,
                failures=target.consecutive_failures,
            )
            self.pool.close_idle(target)
        else:
            log.info(
                "upstream {upstream}: {target} is back from ejection",
                upstream=self.name,
                target=target.address,
            )

    def status(self) -> dict[str, Any]:
        """The live state of this upstream, for the admin API and metrics."""
        return {
            "name": self.name,
            "balancer": self.config.balancer,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "targets": [target.status() for target in self.targets],
        }
