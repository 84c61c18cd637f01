"""
One upstream target and the live state balancers and operators look at.
"""

from __future__ import annotations

from zope.interface import implementer

from gatewaykit.config.model import TargetConfig
from gatewaykit.interfaces import ITarget

# Weight of the newest sample in the latency moving average.
EWMA_ALPHA = 0.2


@implementer(ITarget)
class Target:
    """A target address with its health, load and latency."""

    __slots__ = (
        "host",
        "port",
        "weight",
        "address",
        "healthy",
        "ejected",
        "in_flight",
        "ewma_latency",
        "requests",
        "failures",
        "consecutive_failures",
        "ejections",
    )

    def __init__(self, config: TargetConfig) -> None:
        self.host = config.host
        self.port = config.port
        self.weight = config.weight
        self.address = config.address
        self.healthy = True
        self.ejected = False
        self.in_flight = 0
        self.ewma_latency = 0.0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ejections = 0

    @property
    def available(self) -> bool:
        return self.healthy and not self.ejected

    def adopt(self, previous: Target) -> None:
        """Take over what C{previous} (the same address, an older config) knew."""
        self.healthy = previous.healthy
        self.ewma_latency = previous.ewma_latency
        self.requests = previous.requests
        self.failures = previous.failures

    def record_latency(self, seconds: float) -> None:
        """Fold one response time into the moving average."""
        if self.ewma_latency == 0.0:
            self.ewma_latency = seconds
        else:
            self.ewma_latency += EWMA_ALPHA * (seconds - self.ewma_latency)

    def status(self) -> dict:
        """The target's live state, for the admin API and metrics."""
        return {
            "address": self.address,
            "weight": self.weight,
            "healthy": self.healthy,
            "ejected": self.ejected,
            "in_flight": self.in_flight,
            "ewma_ms": round(self.ewma_latency * 1000, 3),
            "requests": self.requests,
            "failures": self.failures,
        }

    def __repr__(self) -> str:
        return f"<Target {self.address}>"
