"""
Settings of a serving process's Python runtime.
"""

from __future__ import annotations

import gc

# Allocations (less deallocations) of container objects between two
# collections of the youngest generation; CPython's default is 700 (2,000
# from 3.13). A request allocates a few hundred short-lived objects, nearly
# all freed by reference counting, so the default collected every few
# requests and, every hundred such collections, scanned the whole heap.
YOUNG_THRESHOLD = 20_000


def tune_garbage_collection() -> None:
    """
    Collect rarely, and never scan what start-up made: C{gc.freeze()} moves
    the modules, configuration and plugins loaded so far out of every
    collection's reach. Called once the gateway serves. Measured with the
    policies bench (JWT + rate limit with Redis, docs/performance.md): time
    in collections 2.1% -> 0.14% of the CPU, p99 of the guarded route
    20.8 -> 8.3 ms (the full collections were the slow requests).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
