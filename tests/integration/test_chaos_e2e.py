"""
The chaos test: under steady load, one of three targets (each its own
process) is killed with SIGKILL and later started again on the same port,
while health checks, retries and the balancer keep every client request
answered.
"""

from __future__ import annotations

import time
from collections import Counter

from twisted.internet import defer
from twisted.python import log

from tests.integration import support

INTERVAL = 0.5
UNHEALTHY_THRESHOLD = 2
HEALTHY_THRESHOLD = 2
# Slack for scheduling on a busy 2-core machine.
MARGIN = 0.5
# The upstream's connect timeout: a connection begun while the target was
# still healthy may complete or fail until then.
CONNECT_TIMEOUT = 0.5


def _until(stop: support.Event) -> support.Steps:
    """GET / requests until C{stop} happened."""
    while not stop.happened:
        yield ("/", ())


class TargetCrashTests(support.GatewayTestCase):
    """A target that crashes and comes back, under load."""

    @defer.inlineCallbacks
    def test_crash_and_rejoin(self) -> support.Steps:
        """A SIGKILLed target costs no client error, is excluded after 2 checks and rejoins after 2 passes."""
        targets = [support.UpstreamProcess(self, name) for name in "abc"]
        yield defer.gatherResults([target.start() for target in targets], consumeErrors=True)
        config = support.cluster_config(
            [target.port for target in targets],
            retries={"attempts": 2, "on": ["connect_failure", "reset", 502, 503, 504]},
            timeouts={"connect": f"{CONNECT_TIMEOUT * 1000:g}ms"},
            health={
                "path": "/healthz",
                "interval": f"{INTERVAL * 1000:g}ms",
                "timeout": "300ms",
                "unhealthy_threshold": UNHEALTHY_THRESHOLD,
                "healthy_threshold": HEALTHY_THRESHOLD,
            },
        )
        gateway = yield self.start_gateway(config)
        stop = support.Event()
        load = support.send_requests(self, gateway.port(), _until(stop), concurrency=20)
        yield support.sleep(1.0)

        victim = targets[2]
        address = f"127.0.0.1:{victim.port}"
        killed_at = time.monotonic()
        yield victim.kill()
        yield support.wait_for(
            lambda: f"target {address} is now unhealthy" in gateway.output,
            timeout=5,
            what=f"{address} marked unhealthy",
        )
        excluded_at = time.monotonic()
        # Connections begun before the exclusion (a SYN the dying target's
        # kernel dropped is sent again a second later) end within the
        # connect timeout; from then on the port only counts who still
        # comes: health checks should, real requests must not.
        yield support.sleep(CONNECT_TIMEOUT + 0.1)
        counter = support.ConnectionCounter().listen(self, victim.port)
        yield support.sleep(4 * INTERVAL)
        yield counter.stop()

        back = support.UpstreamProcess(self, "c")
        yield back.start(victim.port)
        restarted_at = time.monotonic()
        yield support.wait_for(lambda: back.first("request"), timeout=5, what="c to serve again")
        rejoined_at = back.first("request")
        checks = [when for kind, when in back.events if kind == "check" and when < rejoined_at]
        yield support.sleep(1.0)
        stop.fire()
        replies = yield load

        statuses = Counter(reply.status for reply in replies)
        served_by_c = Counter(
            "before kill"
            if reply.sent < killed_at
            else "after restart"
            if reply.sent > restarted_at
            else "while down"
            for reply in replies
            if reply.upstream == "c"
        )
        errors_at = [reply.sent - killed_at for reply in replies if reply.status != 200]
        first_check = checks[0] if checks else float("nan")
        numbers = (
            f"{len(replies)} requests, statuses {dict(statuses)},"
            f" per target {dict(Counter(reply.upstream for reply in replies))},"
            f" c served {dict(served_by_c)};"
            f" errors sent {min(errors_at, default=0):.3f}s to {max(errors_at, default=0):.3f}s"
            f" after the kill;"
            f" excluded {excluded_at - killed_at:.3f}s after the kill;"
            f" while excluded the port saw {counter.requests} requests and"
            f" {counter.health_checks} health checks;"
            f" after restart, {len(checks)} checks, then the first request"
            f" {rejoined_at - restarted_at:.3f}s after it listened"
            f" ({rejoined_at - first_check:.3f}s after the first check)"
        )
        log.msg(f"chaos: {numbers}")
        self.assertLessEqual(
            excluded_at - killed_at, INTERVAL * UNHEALTHY_THRESHOLD + MARGIN, numbers
        )
        self.assertEqual(counter.requests, 0, numbers)
        self.assertGreater(counter.health_checks, 0, numbers)
        self.assertGreaterEqual(len(checks), HEALTHY_THRESHOLD, numbers)
        # Passes come one interval apart, so the last needed one cannot
        # come sooner than this after the first.
        self.assertGreaterEqual(
            rejoined_at - first_check, (HEALTHY_THRESHOLD - 1) * INTERVAL * 0.9, numbers
        )
        self.assertLessEqual(
            rejoined_at - restarted_at, INTERVAL * HEALTHY_THRESHOLD + MARGIN, numbers
        )
        self.assertEqual(served_by_c["while down"], 0, numbers)
        self.assertGreater(served_by_c["after restart"], 0, numbers)
        # Between the kill and the exclusion a third of the requests meet the
        # dead target; retries hide them all (connect failures spend no
        # retry budget: they add no load).
        self.assertEqual(statuses, {200: len(replies)}, numbers)
