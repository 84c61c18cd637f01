"""
End-to-end tests of C{rate_limit} policies shared through Redis: two real
gateway processes, one real C{redis-server}, and Redis killed under load
for each C{gateway.redis.on_error} mode.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from tests.integration import support
from tests.integration.support import Answer, Load, RedisServer, Steps

TIMEOUT = 0.25
# What a request may take beyond the Redis timeout on a loaded two-core machine.
MARGIN = 0.25
# A request on a route without policies never waits for Redis: slower than
# this, the event loop was stalled.
STALL = 0.2
# Within this many seconds of Redis answering again, decisions are shared.
RECOVERY = 5.0

_REMAINING = re.compile(r";r=(\d+)")

log = Logger()


def config(redis_port: int, on_error: str = "closed", local_share: float = 1.0) -> dict:
    """
    A gateway sharing limits in the Redis on C{redis_port}: C{/limited} (gcra,
    50 per second per X-Key), C{/fixed} (fixed_window, 50 per second per
    X-Key), C{/counter} (fixed_window, 1000 an hour per X-Key: to see one
    counter from two processes) and C{/ping} without policies.
    """

    def limited(name: str, path: str, **policy: Any) -> tuple[dict, dict]:
        spec = {"type": "rate_limit", "key": ["header:X-Key"], **policy}
        return spec, {
            "name": name,
            "match": {"path": path},
            "respond": {"status": 200, "body": "ok\n"},
            "policies": [name],
        }

    policies, routes = zip(
        limited("limited", "/limited", limit=50, window="1s", algorithm="gcra"),
        limited("fixed", "/fixed", limit=50, window="1s", algorithm="fixed_window"),
        limited("counter", "/counter", limit=1000, window="1h", algorithm="fixed_window"),
        strict=True,
    )
    return {
        "gateway": {
            "node": support.NODE,
            "access_log": {"path": "off"},
            "drain_timeout": "1s",
            "redis": {
                "url": f"redis://127.0.0.1:{redis_port}/0",
                "timeout": f"{int(TIMEOUT * 1000)}ms",
                "on_error": on_error,
                "local_share": local_share,
            },
        },
        "listeners": {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
        "policies": {route["name"]: spec for spec, route in zip(policies, routes, strict=True)},
        "routes": [support.PING_ROUTE, *routes],
    }


def remaining(field: Optional[str]) -> Optional[int]:
    """The C{r} of a (one-member) RateLimit field, if there is one."""
    match = _REMAINING.search(field or "")
    return int(match.group(1)) if match else None


def from_redis(answer: Answer) -> bool:
    """Whether the answer was decided by Redis (not by on_error)."""
    return "ratelimit" in answer.fields and "x-gatewaykit-degraded" not in answer.fields


class RateLimitTests(support.GatewayTestCase):
    """Two gateway processes sharing limits through one redis-server."""

    timeout = 120

    @defer.inlineCallbacks
    def start_pair(self, **settings: Any) -> Steps:
        """Redis and two gateways using it; fires with C{(redis, [gateway, gateway])}."""
        redis = yield RedisServer(self).start()
        gateways = yield defer.gatherResults(
            [self.start_gateway(config(redis.port, **settings)) for _ in range(2)]
        )
        # One request each first: connections up and scripts loaded.
        for gateway in gateways:
            warm = yield support.curl(self, gateway.url("/counter"), "-H", "X-Key: warm-up")
            self.assertEqual(warm.status, 200, warm.body)
        return redis, gateways

    @defer.inlineCallbacks
    def hammer(self, gateways: list, path: str, key: str, seconds: float) -> Steps:
        """20 clients (10 per gateway) sending as fast as they can for C{seconds}."""
        loads = [
            Load(self, gateway.port(), path, [("X-Key", key)], clients=10).start()
            for gateway in gateways
        ]
        yield support.sleep(seconds)
        yield defer.gatherResults([load.stop() for load in loads])
        return [answers for load in loads for answers in load.answers]

    @defer.inlineCallbacks
    def test_accuracy_across_processes(self) -> Steps:
        """
        gcra, 50 per second, one key hammered through two processes for 10
        windows: what is admitted is within 1% of what the limit allows.
        """
        _, gateways = yield self.start_pair()
        clients = yield self.hammer(gateways, "/limited", "accuracy", 10.0)
        answers = sorted((a for client in clients for a in client), key=lambda a: a.sent)
        statuses = {a.status for a in answers}
        self.assertLessEqual(statuses, {200, 429}, "only decisions, no errors")
        admitted = sum(a.status == 200 for a in answers)
        # The key starts quiet, so it may spend its whole capacity at once:
        # limit + burst = 50 + 0. From then on gcra gives back one request
        # every window / limit = 20 ms, i.e. 50 a second. So from the first
        # decision at t0 to the last at t1, admitted = 50 + floor(50 (t1 - t0)):
        # for a 10 s run, 50 + 500 = 550. The first request was decided after
        # it was sent and the last before it was answered, so the span is
        # measured from the first send to the last answer.
        span = answers[-1].received - answers[0].sent
        expected = 50 + math.floor(50 * span)
        self.assertTrue(9.9 < span < 10.5, span)
        self.assertLessEqual(abs(admitted - expected), expected / 100, (admitted, expected))
        seen = [remaining(a.fields.get("ratelimit")) for a in answers]
        self.assertNotIn(None, seen)
        self.assertTrue(all(0 <= r <= 49 for r in seen if r is not None))
        log.info(
            "admitted {admitted} of {total} in {span:.3f}s; expected {expected}",
            admitted=admitted,
            total=len(answers),
            span=span,
            expected=expected,
        )

    @defer.inlineCallbacks
    def test_fixed_window_remaining(self) -> Steps:
        """
        fixed_window through two processes: r never goes below 0 nor up
        within a window for any client, and no window admits more than 50.
        """
        _, gateways = yield self.start_pair()
        clients = yield self.hammer(gateways, "/fixed", "fixed", 3.0)
        admitted: dict[int, int] = defaultdict(int)
        for answers in clients:
            last: Optional[tuple[int, int]] = None  # (window, r)
            for answer in answers:
                self.assertIn(answer.status, (200, 429))
                r = remaining(answer.fields.get("ratelimit"))
                assert r is not None
                self.assertTrue(0 <= r <= 49, r)
                # Redis's clock is this machine's: an answer sent and
                # received in the same second was decided in that window.
                window = math.floor(answer.sent)
                if window != math.floor(answer.received):
                    last = None
                    continue
                if answer.status == 200:
                    admitted[window] += 1
                if last is not None and last[0] == window:
                    self.assertLessEqual(r, last[1], f"r went up in window {window}")
                last = (window, r)
        self.assertTrue(admitted)
        self.assertLessEqual(max(admitted.values()), 50, dict(admitted))
        log.info("fixed_window: admitted per window {windows}", windows=dict(admitted))

    # -- Redis killed under load --------------------------------------------------

    @defer.inlineCallbacks
    def outage(self, on_error: str) -> Steps:
        """
        Load on both gateways and pings on the first; Redis killed after 1 s,
        started again on the same port 2 s later. Fires with a dict of what
        happened: the answers, when Redis died and came back, how long each
        gateway took to decide with Redis again.
        """
        redis, gateways = yield self.start_pair(on_error=on_error, local_share=0.5)
        loads = [
            Load(self, g.port(), "/limited", [("X-Key", on_error)], clients=3, pause=0.01).start()
            for g in gateways
        ]
        pings = Load(self, gateways[0].port(), "/ping", pause=0.02).start()
        yield support.sleep(1.0)
        killed = time.time()
        yield redis.kill()
        yield support.sleep(2.0)
        yield redis.start()
        back = time.time()

        def recovered(load: Load) -> Optional[float]:
            answers = [a for a in load.all() if a.sent > back and from_redis(a)]
            return answers[0].received - back if answers else None

        yield support.wait_for(
            lambda: all(recovered(load) is not None for load in loads),
            timeout=RECOVERY + 1,
            what="both gateways to decide with Redis again",
        )
        recovery = [recovered(load) for load in loads]
        yield defer.gatherResults([load.stop() for load in [*loads, pings]])
        # One counter again: the second process sees the first one's request.
        first = yield support.curl(self, gateways[0].url("/counter"), "-H", f"X-Key: {on_error}")
        second = yield support.curl(self, gateways[1].url("/counter"), "-H", f"X-Key: {on_error}")
        return {
            "gateways": gateways,
            "answers": [load.all() for load in loads],
            "during": [
                [a for a in load.all() if killed <= a.sent and a.received <= back] for load in loads
            ],
            "pings": [a for a in pings.all() if killed <= a.sent <= back + max(recovery)],
            "killed": killed,
            "back": back,
            "recovery": recovery,
            "counter": [remaining(r.header("RateLimit")) for r in (first, second)],
        }

    def check_common(self, outcome: dict) -> None:
        """What holds in every mode: no hang, no stall, recovery, one counter."""
        everything = [a for answers in outcome["answers"] for a in answers]
        self.assertNotIn(0, {a.status for a in everything}, "a request got no answer")
        slowest = max(a.latency for a in everything)
        self.assertLess(slowest, TIMEOUT + MARGIN, "a request waited beyond the Redis timeout")
        pings = outcome["pings"]
        self.assertTrue(pings)
        self.assertEqual({a.status for a in pings}, {200})
        self.assertLess(max(a.latency for a in pings), STALL, "the event loop stalled")
        self.assertLess(max(outcome["recovery"]), RECOVERY)
        first, second = outcome["counter"]
        self.assertEqual(second, first - 1, "two processes, two counters")
        for gateway in outcome["gateways"]:
            self.assertIn("Redis unavailable", gateway.output)
        log.info(
            "outage: slowest request {slowest:.3f}s, slowest ping {ping:.3f}s,"
            " back to Redis after {recovery}s",
            slowest=slowest,
            ping=max(a.latency for a in pings),
            recovery=[round(r, 3) for r in outcome["recovery"]],
        )

    @defer.inlineCallbacks
    def test_outage_open(self) -> Steps:
        """on_error: open: every request goes through while Redis is away, none fails."""
        outcome = yield self.outage("open")
        self.check_common(outcome)
        everything = [a for answers in outcome["answers"] for a in answers]
        self.assertLessEqual({a.status for a in everything}, {200, 429})
        for during in outcome["during"]:
            self.assertTrue(during)
            self.assertEqual({a.status for a in during}, {200})

    @defer.inlineCallbacks
    def test_outage_closed(self) -> Steps:
        """on_error: closed: 503 within the Redis timeout while it is away."""
        outcome = yield self.outage("closed")
        self.check_common(outcome)
        for during in outcome["during"]:
            refused = [a for a in during if a.status == 503]
            self.assertTrue(refused)
            self.assertLessEqual({a.status for a in during}, {200, 429, 503})
            first_refusal = refused[0].received - outcome["killed"]
            self.assertLess(first_refusal, TIMEOUT + MARGIN)
            self.assertLess(max(a.latency for a in refused), TIMEOUT + MARGIN)
            log.info(
                "closed: first 503 {first:.3f}s after the kill, {count} 503s, slowest {slowest:.3f}s",
                first=first_refusal,
                count=len(refused),
                slowest=max(a.latency for a in refused),
            )

    @defer.inlineCallbacks
    def test_outage_local(self) -> Steps:
        """
        on_error: local: limits go on in each process at local_share (here
        half of 50 a second), marked X-Gatewaykit-Degraded.
        """
        outcome = yield self.outage("local")
        self.check_common(outcome)
        for during in outcome["during"]:
            degraded = [a for a in during if a.fields.get("x-gatewaykit-degraded")]
            self.assertTrue(degraded)
            self.assertEqual(
                {a.fields["x-gatewaykit-degraded"] for a in degraded}, {"ratelimit-local"}
            )
            self.assertLessEqual({a.status for a in degraded}, {200, 429})
            # gcra at 25 a second: at most its capacity at once, then 25 a second.
            span = degraded[-1].received - degraded[0].sent
            admitted = sum(a.status == 200 for a in degraded)
            self.assertLessEqual(admitted, 25 + 25 * span + 1, (admitted, span))
            self.assertIn(429, {a.status for a in degraded})
            log.info(
                "local: {admitted} of {count} admitted in {span:.3f}s (at most {most:.0f})",
                admitted=admitted,
                count=len(degraded),
                span=span,
                most=25 + 25 * span,
            )
