"""
An upstream: its targets, the balancer choosing between them and the pool
of connections to them.
"""

from __future__ import annotations

from typing import Any

from gatewaykit.config.model import UpstreamConfig
from gatewaykit.interfaces import IBalancer, IBalancerFactory
from gatewaykit.upstream.pool import ConnectionPool
from gatewaykit.upstream.target import Target


class Upstream:
    """A named cluster of targets (one C{upstreams} entry made live)."""

    def __init__(
        self, config: UpstreamConfig, reactor: Any, balancer_factory: IBalancerFactory
    ) -> None:
        self.config = config
        self.name = config.name
        self.targets = [Target(target) for target in config.targets]
        self.balancer: IBalancer = balancer_factory.build(config, self.targets)
        self.pool = ConnectionPool(reactor, config)

    def close(self) -> None:
        """Close idle connections (on shutdown, or when a reload drops it)."""
        self.pool.close()
