"""
The per-request Python cost of the proxy path, without sockets.

Drives the real downstream codec, gateway, router, proxy exchange, pool,
upstream codec and metrics over in-memory transports: each request is the
one wrk sends in the `proxy` scenario, each upstream answer the one the
bench's nginx gives for `/1k`. Reports microseconds of CPU per request
(best of several repetitions), which does not move with the load of other
processes the way requests/s does; use it to compare one change against
another, and `run.py` for the real figure (it adds the reactor and system
calls, roughly as much again).

    python3 bench/hotpath.py                 # 20,000 requests x 5 repetitions
    python3 bench/hotpath.py --profile       # the same under cProfile, top functions
    python3 bench/hotpath.py --cache         # cache hits (--miss: misses, each stored)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address  # noqa: E402

from gatewaykit.admin.metrics import Metrics  # noqa: E402
from gatewaykit.config.model import PolicyConfig  # noqa: E402
from gatewaykit.policies.cache import CacheOptions  # noqa: E402
from gatewaykit.runtime import tune_garbage_collection  # noqa: E402
from gatewaykit.testing import (  # noqa: E402
    GatewayHarness,
    TCPStringTransport,
    make_config,
    route,
    upstream,
)

REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BODY = b"x" * 1024
CACHEABLE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Fri, 27 Nov 2026 23:00:00 GMT\r\n"
    b"Cache-Control: max-age=3600\r\n"
    b"Content-Length: 1024\r\n"
    b"\r\n" + BODY
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Fri, 27 Nov 2026 23:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 1024\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)


class NullTransport(TCPStringTransport):
    """Counts what is written and keeps nothing (a socket's cost is not ours)."""

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.written = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))


def setup(cache: bool = False) -> tuple:
    # As run.py's cache scenario configures it (64 MiB: misses evict).
    options = CacheOptions(max_bytes=64 * 1024 * 1024)
    policies = [PolicyConfig("cache", "cache", options)] if cache else []
    config = make_config(
        routes=[
            route(
                "all",
                path_prefix="/",
                upstream="bench",
                policies=tuple(policy.name for policy in policies),
            )
        ],
        upstreams=[upstream("bench", "127.0.0.1:9000")],
        policies=policies,
    )
    harness = GatewayHarness(config)
    metrics = Metrics(harness.reactor)
    harness.gateway.metrics = metrics
    # The proxy action took the gateway's metrics when it was built.
    harness.gateway.routers["web"]._any_host[0].root[0].payload.action.metrics = metrics
    protocol = harness.factory.buildProtocol(None)
    client = NullTransport()
    protocol.makeConnection(client)
    # The first request opens the upstream connection; later ones reuse it.
    protocol.dataReceived(REQUEST)
    connection, upstream_transport = harness.accept_upstream()
    connection.transport = NullTransport()
    connection.dataReceived(CACHEABLE_RESPONSE if cache else RESPONSE)
    assert client.written > 1024, "no response"
    tune_garbage_collection()  # as a serving gateway does
    return protocol, connection, client


def run_proxied(protocol, connection, count: int) -> None:
    client_data = protocol.dataReceived
    upstream_data = connection.dataReceived
    for _ in range(count):
        client_data(REQUEST)
        upstream_data(RESPONSE)


def run_misses(protocol, connection, count: int) -> None:
    client_data = protocol.dataReceived
    upstream_data = connection.dataReceived
    for _ in range(count):
        client_data(MISS_REQUEST % next(_misses))
        upstream_data(CACHEABLE_RESPONSE)


# Each miss asks for a URL not asked for before.
MISS_REQUEST = b"GET /1k?miss=%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
_misses = itertools.count()


def run_hits(protocol, connection, count: int) -> None:
    client_data = protocol.dataReceived
    for _ in range(count):
        client_data(REQUEST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one repetition")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--warmup",
        type=int,
        help="requests before measuring (default: 1,000; with --miss 60,000, which fill the cache)",
    )
    parser.add_argument(
        "--cache", action="store_true", help="a cache policy on the route: every request a hit"
    )
    parser.add_argument(
        "--miss", action="store_true", help="a cache policy on the route: every request a miss"
    )
    args = parser.parse_args()
    protocol, connection, client = setup(args.cache or args.miss)
    run = run_misses if args.miss else run_hits if args.cache else run_proxied
    if args.warmup is None:
        # Misses until the cache is full, so that each one evicts.
        args.warmup = 60000 if args.miss else 1000
    run(protocol, connection, args.warmup)
    writes_before, written_before = client.writes, client.written
    run(protocol, connection, 1)
    per_request = (client.writes - writes_before, client.written - written_before)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(protocol, connection, args.requests)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.top)
        return
    best = float("inf")
    for _ in range(args.repeat):
        gc.collect()
        start = time.process_time()
        run(protocol, connection, args.requests)
        best = min(best, time.process_time() - start)
    print(
        f"{best / args.requests * 1e6:.2f} us/request (best of {args.repeat} x "
        f"{args.requests}); {per_request[0]} client writes, {per_request[1]} bytes per response"
    )


if __name__ == "__main__":
    main()
