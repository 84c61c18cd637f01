"""
Tests for L{gatewaykit.upstream.mirror}: copies of a route's requests sent
to a shadow upstream, never delaying or failing the client's request.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.admin.metrics import Metrics
from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import MirrorConfig, UpstreamTimeouts
from gatewaykit.gateway import Gateway
from gatewaykit.interfaces import IRouteAction
from gatewaykit.listeners.http import HTTP11ServerFactory
from gatewaykit.testing import (
    GatewayHarness,
    TCPStringTransport,
    make_config,
    parse_response,
    route,
    upstream,
)
from gatewaykit.upstream.mirror import MirrorAction

APP = "10.0.0.1"
SHADOW = "10.0.0.9"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
SHADOW_OK = b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nshadow"
TRACE = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"


class MirrorWorld:
    """A gateway whose one route proxies to C{app} and mirrors to C{shadow}."""

    def __init__(self, **mirror: Any) -> None:
        config = make_config(
            routes=[route("r", path_prefix="/", upstream="app", mirror=MirrorConfig("shadow", **mirror))],
            upstreams=[
                upstream("app", f"{APP}:80"),
                upstream("shadow", f"{SHADOW}:80", timeouts=UpstreamTimeouts(response=5.0)),
            ],
        )
        self.harness = harness = GatewayHarness(config)
        self.reactor = harness.reactor
        self.metrics = Metrics(harness.reactor)
        harness.gateway = Gateway(config, harness.reactor, metrics=self.metrics)
        harness.factory = HTTP11ServerFactory(
            config.listeners["web"], harness.gateway, harness.reactor
        )
        self.mirror = self._mirror_action(harness.gateway)

    @staticmethod
    def _mirror_action(gateway: Gateway) -> MirrorAction:
        from gatewaykit.http.message import Request

        action = gateway.routers["web"].match(Request("GET", b"/", "/")).action
        assert isinstance(action, MirrorAction)
        return action

    def send(self, data: bytes) -> tuple[Any, TCPStringTransport]:
        """A new client connection that sent C{data}."""
        client, transport = self.harness.connect()
        client.dataReceived(data)
        return client, transport

    def attempts(self, host: str) -> list[int]:
        """Indexes of the connection attempts to C{host}."""
        return [i for i, (h, *_) in enumerate(self.reactor.tcpClients) if h == host]

    def accept(self, host: str) -> tuple[Any, TCPStringTransport]:
        """Complete the latest connection attempt to C{host}."""
        return self.harness.accept_upstream(self.attempts(host)[-1])

    def refuse(self, host: str) -> None:
        self.harness.refuse_upstream(ConnectionRefusedError(), self.attempts(host)[-1])

    def mirrored(self) -> dict[str, float]:
        """gatewaykit_mirror_requests_total by result."""
        counted: dict[str, float] = {}
        for family in text_string_to_metric_families(self.metrics.text().decode()):
            for sample in family.samples:
                if sample.name == "gatewaykit_mirror_requests_total":
                    labels = sample.labels
                    assert (labels["route"], labels["upstream"]) == ("r", "shadow")
                    counted[labels["result"]] = sample.value
        return counted


class MirrorConfigTests(SynchronousTestCase):
    """The C{mirror} key."""

    def parse(self, mirror: str) -> Any:
        text = textwrap.dedent(
            f"""
            listeners:
              web: {{protocol: http, bind: ":8080"}}
            upstreams:
              app: {{targets: ["127.0.0.1:9001"]}}
              shadow: {{targets: ["127.0.0.1:9002"]}}
            routes:
              - {{name: r, upstream: app, mirror: {mirror}}}
            """
        )
        return parse_config(text, "gw.yaml", base_dir=os.getcwd())

    def test_defaults(self) -> None:
        """Every copy, 100 in flight at most, bodies up to 256 KiB."""
        mirror = self.parse("{upstream: shadow}").routes[0].mirror
        self.assertEqual(mirror, MirrorConfig("shadow", 100.0, 100, 256 * 1024))

    def test_keys(self) -> None:
        """percent, max_in_flight and max_body_bytes."""
        mirror = self.parse(
            "{upstream: shadow, percent: 12.5, max_in_flight: 10, max_body_bytes: 1MiB}"
        ).routes[0].mirror
        self.assertEqual(mirror, MirrorConfig("shadow", 12.5, 10, 1024 * 1024))

    def test_mistakes(self) -> None:
        """An unknown upstream, a percent over 100."""
        error = self.assertRaises(
            ConfigError, self.parse, "{upstream: shadw, percent: 150}"
        )
        self.assertEqual(
            [str(p).partition(": ")[2] for p in error.problems],
            [
                "no upstream named 'shadw'; did you mean 'shadow'?",
                "expected a number from 0 to 100, got 150",
            ],
        )


class MirrorTests(SynchronousTestCase):
    """What the shadow gets, and what the client does not notice."""

    def test_provides(self) -> None:
        """MirrorAction provides IRouteAction."""
        verifyObject(IRouteAction, MirrorWorld().mirror)

    def test_same_request(self) -> None:
        """The shadow gets the head the real upstream gets, byte for byte."""
        world = MirrorWorld()
        world.send(b"GET /users/1?x=1 HTTP/1.1\r\nHost: api\r\nX-Token: t\r\n" + TRACE + b"\r\n")
        _, app = world.accept(APP)
        _, shadow = world.accept(SHADOW)
        self.assertTrue(app.value().startswith(b"GET /users/1?x=1 HTTP/1.1\r\n"))
        self.assertIn(TRACE, app.value())
        self.assertEqual(shadow.value(), app.value())

    def test_one_trace(self) -> None:
        """Without a client traceparent, the request and its copy share a new one."""
        world = MirrorWorld()
        world.send(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        _, app = world.accept(APP)
        _, shadow = world.accept(SHADOW)
        self.assertIn(b"\r\ntraceparent: 00-", app.value())
        self.assertEqual(shadow.value(), app.value())

    def test_body(self) -> None:
        """A body is teed: the real upstream gets it unchanged, the shadow a copy."""
        world = MirrorWorld()
        client, _ = world.send(
            b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n" + TRACE + b"\r\nhello"
        )
        _, shadow = world.accept(SHADOW)
        _, app = world.accept(APP)
        client.dataReceived(b"world")
        self.assertTrue(app.value().endswith(b"\r\n\r\nhelloworld"))
        self.assertEqual(shadow.value(), app.value())
        self.assertEqual(world.mirror.in_flight, 1)

    def test_chunked_body(self) -> None:
        """A chunked body goes to the shadow chunked, as to the real upstream."""
        world = MirrorWorld()
        client, _ = world.send(
            b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" + TRACE + b"\r\n"
            b"5\r\nhello\r\n"
        )
        _, app = world.accept(APP)
        _, shadow = world.accept(SHADOW)
        client.dataReceived(b"3\r\nabc\r\n0\r\n\r\n")
        self.assertTrue(app.value().endswith(b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"))
        self.assertEqual(shadow.value(), app.value())

    def test_answer_discarded(self) -> None:
        """The client gets the real answer; the shadow's is read and dropped."""
        world = MirrorWorld()
        _, transport = world.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        shadow, _ = world.accept(SHADOW)
        app, _ = world.accept(APP)
        shadow.dataReceived(SHADOW_OK)
        app.dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).body, b"real")
        self.assertEqual((world.mirror.counts["ok"], world.mirror.in_flight), (1, 0))
        self.assertEqual(world.mirrored(), {"ok": 1.0})
        # The shadow's connection went back to its pool.
        self.assertEqual(world.mirror.shadow.pool.idle_count(world.mirror.shadow.targets[0]), 1)

    def test_client_never_waits(self) -> None:
        """With the shadow not even connected, the client's answer goes out."""
        world = MirrorWorld()
        _, transport = world.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        app, _ = world.accept(APP)
        app.dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertEqual(world.mirror.in_flight, 1)

    def test_shadow_down(self) -> None:
        """A shadow refusing connections costs the client nothing; the copy counts as an error."""
        world = MirrorWorld()
        _, transport = world.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        world.refuse(SHADOW)
        app, _ = world.accept(APP)
        app.dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertEqual(world.mirrored(), {"error": 1.0})

    def test_shadow_slow(self) -> None:
        """A copy without an answer is given up after the shadow's response timeout."""
        world = MirrorWorld()
        world.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        _, shadow = world.accept(SHADOW)
        world.reactor.advance(4.9)
        self.assertFalse(shadow.disconnecting)
        world.reactor.advance(0.2)
        self.assertEqual((world.mirror.counts["error"], world.mirror.in_flight), (1, 0))

    def test_max_in_flight(self) -> None:
        """Beyond max_in_flight copies, new ones are dropped and counted."""
        world = MirrorWorld(max_in_flight=3)
        for _ in range(5):
            world.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(world.attempts(SHADOW)), 3)
        self.assertEqual(len(world.attempts(APP)), 5)
        self.assertEqual(world.mirrored(), {"dropped": 2.0})

    def test_percent(self) -> None:
        """percent: 10 copies about a tenth of requests, the same ids every time."""
        world = MirrorWorld(percent=10)
        ids = [f"request-{n}" for n in range(10_000)]
        chosen = {
            rid for rid in ids if world.mirror.selects(_request_with_id(rid))
        }
        self.assertLessEqual(abs(len(chosen) / 10_000 - 0.10), 0.01, len(chosen))
        again = {rid for rid in ids if world.mirror.selects(_request_with_id(rid))}
        self.assertEqual(again, chosen)

    def test_percent_by_request_id(self) -> None:
        """Whether a request is copied follows its X-Request-ID."""
        world = MirrorWorld(percent=50)
        for n in range(20):
            request_id = b"id-%d" % n
            before = len(world.attempts(SHADOW))
            world.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: %s\r\n\r\n" % request_id)
            copied = len(world.attempts(SHADOW)) > before
            self.assertEqual(copied, world.mirror.selects(_request_with_id(request_id.decode())))
        self.assertNotIn(len(world.attempts(SHADOW)), (0, 20))

    def test_body_too_large(self) -> None:
        """A body declared larger than max_body_bytes is not copied."""
        world = MirrorWorld(max_body_bytes=4)
        world.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(world.attempts(SHADOW), [])
        _, app = world.accept(APP)
        self.assertTrue(app.value().endswith(b"hello"))
        self.assertEqual(world.mirrored(), {"too_large": 1.0})

    def test_streamed_body_too_large(self) -> None:
        """A chunked body growing past max_body_bytes drops the copy, not the request."""
        world = MirrorWorld(max_body_bytes=8)
        client, _ = world.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        _, shadow = world.accept(SHADOW)
        _, app = world.accept(APP)
        client.dataReceived(b"5\r\nworld\r\n0\r\n\r\n")
        self.assertTrue(shadow.disconnecting)
        self.assertTrue(app.value().endswith(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"))
        self.assertEqual((world.mirror.counts["too_large"], world.mirror.in_flight), (1, 0))

    def test_client_leaves(self) -> None:
        """A client gone before its body ended takes the copy with it."""
        world = MirrorWorld()
        client, _ = world.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        _, shadow = world.accept(SHADOW)
        world.accept(APP)
        client.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(shadow.disconnecting)
        self.assertEqual((world.mirror.counts["error"], world.mirror.in_flight), (1, 0))

    def stale(self, request: bytes) -> tuple[MirrorWorld, Any]:
        """A world whose idle shadow connection is found closed by C{request}'s copy."""
        world = MirrorWorld()
        world.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        shadow, first = world.accept(SHADOW)
        shadow.dataReceived(SHADOW_OK)
        world.send(request)
        world.accept(APP)
        self.assertEqual(len(world.attempts(SHADOW)), 1)  # the idle connection is reused
        self.assertIn(request.split(b" ")[1], first.value())
        # The shadow had closed it: nothing was answered.
        shadow.connectionLost(Failure(ConnectionLost()))
        return world, first

    def test_stale_connection_replayed(self) -> None:
        """A copy of a GET on a stale kept-alive connection is sent again, once."""
        world, first = self.stale(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        _, second = world.accept(SHADOW)
        self.assertEqual(second.value(), first.value().partition(b"\r\n\r\n")[2])
        self.assertTrue(second.value().startswith(b"GET /b HTTP/1.1\r\n"))

    def test_stale_connection_not_replayed_with_body(self) -> None:
        """A copy with a body is not sent twice: it counts as an error."""
        world, _ = self.stale(b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(len(world.attempts(SHADOW)), 1)
        self.assertEqual(world.mirror.counts["error"], 1)

    def test_upgrade_not_copied(self) -> None:
        """An Upgrade request (a future tunnel) is not copied."""
        world = MirrorWorld()
        world.send(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        self.assertEqual(world.attempts(SHADOW), [])


def _request_with_id(request_id: str) -> Any:
    from gatewaykit.http.message import Request

    return Request("GET", b"/", "/", request_id=request_id)


class MirrorExplainTests(SynchronousTestCase):
    """gatewaykit explain on a mirrored route."""

    def test_target_is_not_the_shadow(self) -> None:
        """The target shown is the live upstream's; the mirror is a note."""
        from gatewaykit.explain import explain, render_text

        world = MirrorWorld()
        result = explain(world.harness.config, "GET", "http://a:80/x")
        self.assertEqual(result["action"]["target"], f"{APP}:80")
        self.assertIn("mirror: 100% of requests copied to shadow", render_text(result))
