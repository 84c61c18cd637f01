"""
Sticky sessions across two gateway processes sharing one Redis: one
session stays on one target whichever gateway serves it, and moves (once,
for good) when that target dies.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet import defer
from twisted.python import log

from tests.integration import support

SESSION_COOKIE = "sid"


class StickySessionTests(support.GatewayTestCase):
    """upstreams.app.sticky with gateway.redis."""

    timeout = 120

    @defer.inlineCallbacks
    def start_pair(self) -> support.Steps:
        """Three named targets, a Redis, and two gateways in front of them."""
        redis = yield support.RedisServer(self).start()
        self.targets = {
            name: support.start_named(self, name) for name in ("a", "b", "c")
        }
        config = support.cluster_config(
            [server.port for server in self.targets.values()],
            sticky={"cookie": SESSION_COOKIE, "ttl": "1h"},
        )
        config["gateway"]["redis"] = {"url": f"redis://127.0.0.1:{redis.port}/0"}
        first = yield self.start_gateway(config)
        second = yield self.start_gateway(config)
        return first, second

    def session_requests(self, session: str, count: int) -> list:
        return [("/", [("Cookie", f"{SESSION_COOKIE}={session}")])] * count

    @defer.inlineCallbacks
    def served(self, gateways: tuple, session: str, count: int) -> support.Steps:
        """Send C{count} requests of C{session} through each gateway; the replies."""
        replies = yield defer.gatherResults(
            [
                support.send_requests(
                    self, gateway.port(), self.session_requests(session, count), concurrency=5
                )
                for gateway in gateways
            ]
        )
        return [reply for each in replies for reply in each]

    @defer.inlineCallbacks
    def test_one_session_one_target(self) -> support.Steps:
        """1000 requests of one session through two gateways land on one target."""
        gateways = yield self.start_pair()
        first = yield support.curl(self, gateways[0].url("/"))
        cookie = first.header("Set-Cookie")
        self.assertIsNotNone(cookie)
        session = cookie.split(";")[0].split("=", 1)[1]
        replies = yield self.served(gateways, session, 500)
        targets = Counter(reply.upstream for reply in replies)
        log.msg(f"sticky: first answer from {first.header('X-Upstream')}, then {dict(targets)}")
        self.assertEqual(Counter(reply.status for reply in replies), {200: 1000})
        self.assertEqual(targets, {first.header("X-Upstream"): 1000})

    @defer.inlineCallbacks
    def test_session_moves_when_target_dies(self) -> support.Steps:
        """When the session's target dies, the session moves to a healthy one and stays."""
        gateways = yield self.start_pair()
        first = yield support.curl(self, gateways[0].url("/"))
        session = first.header("Set-Cookie").split(";")[0].split("=", 1)[1]
        owner = first.header("X-Upstream")
        yield self.targets[owner].stop()
        # One at a time through the first gateway: the first request finds
        # the target dead, is retried elsewhere, and the session follows.
        moved = yield support.send_requests(
            self, gateways[0].port(), self.session_requests(session, 1), concurrency=1
        )
        replies = yield self.served(gateways, session, 200)
        targets = Counter(reply.upstream for reply in replies)
        log.msg(f"sticky after {owner} died: moved to {moved[0].upstream}, then {dict(targets)}")
        self.assertEqual(moved[0].status, 200)
        self.assertNotEqual(moved[0].upstream, owner)
        self.assertEqual(Counter(reply.status for reply in replies), {200: 400})
        self.assertEqual(targets, {moved[0].upstream: 400})
