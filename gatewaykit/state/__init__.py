"""
The state store: rate limits, sessions and sticky affinity shared by every
worker process and gateway node (L{gatewaykit.interfaces.IStateStore}).
"""

from __future__ import annotations

from typing import Any

from attrs import define


class StoreUnavailable(Exception):
    """The store could not answer in time (Redis down, slow or restarting)."""


@define
class Decision:
    """
    A rate-limit decision; a value, not to be changed. (Not an attrs
    frozen class: one is made per rate-limited request, and a frozen
    class's construction costs five times as much.)

    @ivar allowed: whether this request may go on.
    @ivar limit: the quota (C{limit} + C{burst}).
    @ivar remaining: requests left now (never negative).
    @ivar reset_after: seconds until the quota is whole again.
    @ivar retry_after: seconds until one request would be allowed (0 when allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0


def open_store(config: Any, reactor: Any) -> Any:
    """
    The store for C{gateway.redis} (a L{gatewaykit.config.model.RedisConfig},
    or C{None} for the in-process store).
    """
    if config is None:
        from gatewaykit.state.memory import MemoryStore

        return MemoryStore(reactor)
    from gatewaykit.state.redis import RedisStore

    return RedisStore(config, reactor)
