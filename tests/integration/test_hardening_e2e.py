"""
End-to-end hardening tests (issue 9): slow and idle clients, overload past
the circuit breaker, upstreams that fail in every way mid-exchange, and an
access log on a full disk. Each runs through a real C{twistd gatewaykit},
and each checks that the process and unrelated connections carry on.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import time
from typing import Any, Optional

import httptools
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from tests.integration import support
from tests.integration.support import MiB, Steps

# Slack for scheduling on a busy two-core machine.
MARGIN = 0.5


def percentile(values: list[float], share: float) -> float:
    """The C{share} percentile of C{values} (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Relayed:
    """
    A response as a raw client received it, parsed with httptools: whether
    it was complete by its own framing, and its head and body.
    """

    def __init__(self, data: bytes) -> None:
        self.status = 0
        self.fields: dict[str, str] = {}
        self.body = b""
        self.complete = False
        self.error: Optional[str] = None
        parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = str(exc)
        if self.fields or self.complete:
            self.status = parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def __repr__(self) -> str:
        return (
            f"<Relayed {self.status} {self.fields} body={len(self.body)}"
            f" complete={self.complete} error={self.error}>"
        )


def ensure_open_files(test_case: Any, count: int) -> None:
    """
    Raise this process's soft open files limit to C{count} for the test if
    it is lower (the gateway, spawned later, inherits it); skip the test if
    the hard limit does not allow it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        raise SkipTest(f"needs {count} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
    test_case.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))


def request_bytes(path: str, method: str = "GET", fields: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def reset(transport: Any) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer's kernel would."""
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abortConnection()


# -- an upstream that misbehaves on request ------------------------------------------

# What the faulty upstream does for each path: a list of steps, each bytes to
# write, or "close" (FIN), "reset" (RST), "stall" (nothing, ever); a number
# is a pause in seconds before the next step.
_HEAD_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
_HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
_HEAD_UNFRAMED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
_PART = b"a" * 100
BEHAVIOURS: dict[str, list[Any]] = {
    "/cut-length": [_HEAD_LENGTH + _PART, 0.1, "close"],
    "/cut-chunked": [_HEAD_CHUNKED + b"64\r\n" + _PART + b"\r\n", 0.1, "close"],
    "/reset-unframed": [_HEAD_UNFRAMED + _PART, 0.1, "reset"],
    "/garbage": [b"SPAM SPAM SPAM\r\n\r\n", "close"],
    "/bad-chunk": [_HEAD_CHUNKED + b"64\r\n" + _PART + b"\r\nzz\r\n", "stall"],
    "/stall-before-head": ["stall"],
    "/stall-after-head": [_HEAD_LENGTH + _PART, "stall"],
    "/reset-before-head": ["reset"],
    "/reset-after-head": [_HEAD_LENGTH + _PART, 0.1, "reset"],
}


class _FaultyChannel(Protocol):
    factory: FaultyServer

    def connectionMade(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._calls: list[Any] = []
        self.factory.channels.add(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        path = self._url.decode("ascii")
        self._url = b""
        self.factory.requests.append(path)
        self._run(list(BEHAVIOURS[path]))

    def _run(self, steps: list[Any]) -> None:
        transport: Any = self.transport
        while steps:
            step = steps.pop(0)
            if isinstance(step, bytes):
                transport.write(step)
            elif isinstance(step, float):
                self._calls.append(reactor.callLater(step, self._run, steps))
                return
            elif step == "close":
                transport.loseConnection()
            elif step == "reset":
                reset(transport)
            elif step == "stall":
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self.factory.channels.discard(self)


class FaultyServer(support.LoopbackServer, ServerFactory):
    """
    An HTTP/1.1 upstream on 127.0.0.1 answering each path of L{BEHAVIOURS}
    the broken way it names.

    @ivar requests: the paths requested, in order.
    """

    protocol = _FaultyChannel

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.channels: set[_FaultyChannel] = set()


# -- the test cases ------------------------------------------------------------------


class HardeningTestCase(support.GatewayTestCase):
    """A gateway with a healthy upstream on C{/ok} and a load client on it."""

    @defer.inlineCallbacks
    def start_with_bystander(
        self,
        upstream_port: Optional[int] = None,
        limits: Optional[dict] = None,
        app: Optional[dict] = None,
        gateway: Optional[dict] = None,
        load_clients: int = 2,
    ) -> Steps:
        """
        A gateway whose route C{/ok} goes to a healthy upstream of its own
        and everything else to upstream C{app} on C{upstream_port} (a
        twisted.web L{support.UpstreamServer} when not given), with a
        L{support.Load} on C{/ok} already running. Sets C{self.gateway},
        C{self.load} and, when it made one, C{self.upstream}.
        """
        if upstream_port is None:
            self.upstream = self.start_upstream()
            upstream_port = self.upstream.port
        self.good = support.start_named(self, "good")
        config = support.proxy_config(
            upstream_port,
            limits=limits,
            timeouts={"response": "1s", "idle": "1s"},
            routes=(
                support.PING_ROUTE,
                {"name": "ok", "match": {"path_prefix": "/ok"}, "upstream": "good"},
            ),
        )
        config["upstreams"]["good"] = {"targets": [f"127.0.0.1:{self.good.port}"]}
        config["upstreams"]["app"].update(app or {})
        config["gateway"].update(gateway or {})
        self.gateway = yield self.start_gateway(config)
        self.load = support.Load(
            self, self.gateway.port(), "/ok", clients=load_clients, pause=0.01
        ).start()
        self.load_started = time.monotonic()
        return self.gateway

    @defer.inlineCallbacks
    def assert_bystander_unharmed(self, stall: float = 0.5) -> Steps:
        """
        The load on C{/ok} saw only 200s, none slower than C{stall} seconds,
        and the gateway process is still running.
        """
        # Long enough to have seen the bystander served before, during, after.
        yield support.sleep(max(0.0, self.load_started + 1.0 - time.monotonic()))
        yield self.load.stop()
        answers = self.load.all()
        self.assertGreater(len(answers), 10)
        self.assertEqual({a.status for a in answers}, {200}, "a bystander request failed")
        slowest = max(a.latency for a in answers)
        self.assertLess(slowest, stall, "a bystander request stalled")
        self.assertTrue(self.gateway.running)
        return answers


class SlowClientTests(HardeningTestCase):
    """Clients that send their request slowly, or not at all, are cut at the limits."""

    @defer.inlineCallbacks
    def test_slowloris(self) -> Steps:
        """
        100 connections each dribbling its head a byte every 200 ms all get 408
        request_timeout at header_timeout (1 s after their first byte), while
        other clients are served without delay.
        """
        yield self.start_with_bystander(limits={"header_timeout": "1s"})
        head = request_bytes("/headers")
        clients = yield defer.gatherResults(
            [support.connect_raw(self, self.gateway.port()) for _ in range(100)]
        )
        first_byte: dict[support.RawClient, float] = {}
        closed_at: dict[support.RawClient, float] = {}
        sent = [0] * len(clients)

        def dribble() -> None:
            now = time.monotonic()
            for index, client in enumerate(clients):
                if client.lost:
                    closed_at.setdefault(client, now)
                elif sent[index] < len(head):
                    client.send(head[sent[index] : sent[index] + 1])
                    first_byte.setdefault(client, now)
                    sent[index] += 1

        dribbler = task.LoopingCall(dribble)
        self.addCleanup(lambda: dribbler.stop() if dribbler.running else None)
        dribbler.start(0.2)
        yield support.wait_for(
            lambda: all(c.lost for c in clients), timeout=5, what="every slow client cut"
        )
        dribbler.stop()
        dribble()
        yield self.assert_bystander_unharmed()
        cut_after = [closed_at[c] - first_byte[c] for c in clients]
        for client in clients:
            response = client.response()
            self.assertEqual(response.status, 408)
            self.assertEqual(response.json()["type"], "urn:gatewaykit:error:request_timeout")
        log.msg(
            f"slowloris: 100 clients cut {min(cut_after):.3f}-{max(cut_after):.3f}s"
            f" after their first byte, having sent at most {max(sent)} bytes"
        )
        self.assertGreater(min(cut_after), 1.0 - 0.2)
        self.assertLess(max(cut_after), 1.0 + 0.2 + MARGIN)
        self.assertLess(max(sent), len(head))
        self.assertEqual(self.upstream.requests, 0)

    @defer.inlineCallbacks
    def test_silent_connection(self) -> Steps:
        """A connection that never sends a byte is closed at idle_timeout, without an answer."""
        yield self.start_with_bystander(limits={"idle_timeout": "1s"})
        client = yield support.connect_raw(self, self.gateway.port())
        opened = time.monotonic()
        yield support.wait_for(lambda: client.lost, timeout=3, what="the silent client cut")
        self.assertLess(time.monotonic() - opened, 1.0 + MARGIN)
        self.assertEqual(client.received, 0)
        yield self.assert_bystander_unharmed()

    @defer.inlineCallbacks
    def stalled_body(self, path: str) -> Steps:
        """
        Send C{path} a POST announcing 1000 bytes of body, send 100, then
        nothing; fire with C{(client, seconds until the gateway closed)}.
        """
        yield self.start_with_bystander(
            limits={"idle_timeout": "1s", "body_timeout": "1s"},
            app={"timeouts": {"response": "30s", "idle": "30s"}},
        )
        client = yield support.connect_raw(self, self.gateway.port())
        client.send(request_bytes(path, "POST", ("Content-Length: 1000",)) + b"b" * 100)
        sent = time.monotonic()
        try:
            yield support.wait_for(lambda: client.lost, timeout=4, what="the stalled client cut")
        except support.WaitTimeout:
            self.fail(
                f"a request body stalled for 4 s (body_timeout 1 s) is still open;"
                f" received {client.data[:200]!r}"
            )
        return client, time.monotonic() - sent

    @defer.inlineCallbacks
    def test_stalled_body_proxied(self) -> Steps:
        """
        A proxied request whose body stops arriving gets 408 request_timeout
        at body_timeout (as nginx's client_body_timeout), not 504 at the
        upstream's idle timeout, and the upstream is not blamed for it.
        """
        client, seconds = yield self.stalled_body("/echo")
        response = client.response()
        self.assertEqual(
            (response.status, response.json()["type"]),
            (408, "urn:gatewaykit:error:request_timeout"),
        )
        self.assertLess(seconds, 1.0 + MARGIN)
        again = yield support.curl(self, self.gateway.url("/echo"), "--data-binary", "x")
        self.assertEqual((again.status, again.body), (200, b"x"))
        yield self.assert_bystander_unharmed()

    @defer.inlineCallbacks
    def test_stalled_body_answered_locally(self) -> Steps:
        """
        A request answered by the gateway itself whose body then stops
        arriving: the connection is closed at body_timeout rather than held
        open for ever.
        """
        client, seconds = yield self.stalled_body("/ping")
        self.assertEqual((client.response().status, client.response().body), (200, b"pong\n"))
        self.assertLess(seconds, 1.0 + MARGIN)
        yield self.assert_bystander_unharmed()

    @defer.inlineCallbacks
    def test_idle_keepalive_connections(self) -> Steps:
        """
        1,000 keep-alive connections, each idle after one request, are held
        while other clients are served (p99 under 50 ms); every one of them
        still works afterwards.
        """
        # 1,000 clients, and as many connections from the gateway to the
        # upstream (in this process) when they all ask at once.
        ensure_open_files(self, 4096)
        yield self.start_with_bystander(load_clients=0)
        port = self.gateway.port()
        request = request_bytes("/ok")
        before = self.gateway.rss_bytes()
        idle: list[support.RawClient] = []
        for _ in range(10):
            batch = yield defer.gatherResults([support.connect_raw(self, port) for _ in range(100)])
            for client in batch:
                client.send(request)
            idle.extend(batch)

        def answered(count: int) -> bool:
            return all(c.data.count(b"HTTP/1.1 200 ") == count for c in idle)

        yield support.wait_for(lambda: answered(1), timeout=10, what="1000 first answers")
        held = self.gateway.rss_bytes()
        load = support.Load(self, port, "/ok", clients=4, pause=0.005).start()
        yield support.sleep(3.0)
        yield load.stop()
        latencies = [a.latency for a in load.all()]
        self.assertEqual({a.status for a in load.all()}, {200})
        self.assertFalse([c for c in idle if c.lost], "an idle connection was closed")
        for client in idle:
            client.send(request)
        yield support.wait_for(lambda: answered(2), timeout=10, what="1000 second answers")
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        log.msg(
            f"idle: 1000 idle connections held; {len(latencies)} other requests,"
            f" p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms; gateway RSS"
            f" {before / MiB:.1f} -> {held / MiB:.1f} MiB,"
            f" {(held - before) / 1000 / 1024:.1f} KiB per idle connection"
        )
        self.assertLess(p99, 0.050)
        # Generous: measured at about 6 KiB.
        self.assertLess((held - before) / 1000, 64 * 1024)


class OverloadTests(HardeningTestCase):
    """Past the circuit breaker's limits, the gateway refuses at once and recovers."""

    @defer.inlineCallbacks
    def test_circuit_breaker(self) -> Steps:
        """
        50 clients against a 0.5 s upstream limited to 10 requests in flight:
        the rest get 503 circuit_open within 100 ms (p99), the upstream never
        has more than 10, memory stays flat, and once the load stops every
        request is served again.
        """
        slow = support.start_named(self, "slow", delay=0.5)
        yield self.start_with_bystander(
            slow.port,
            app={
                "circuit_breaker": {"max_requests": 10, "max_pending": 10},
                "timeouts": {"response": "5s", "idle": "5s"},
            },
        )
        before = self.gateway.rss_bytes()
        sampler = support.RssSampler(self.gateway, interval=0.2)
        sampler.start(self)
        seconds = 6.0
        flood = support.Load(self, self.gateway.port(), "/slow", clients=50, pause=0.05)
        flood.start()
        yield support.sleep(seconds)
        yield flood.stop()
        sampler.stop()
        answers = flood.all()
        refused = [a for a in answers if a.status == 503]
        served = [a for a in answers if a.status == 200]
        self.assertEqual(len(refused) + len(served), len(answers), {a.status for a in answers})
        self.assertEqual(
            {a.fields.get("content-type") for a in refused}, {"application/problem+json"}
        )
        p99_refused = percentile([a.latency for a in refused], 0.99)
        grew = max(sampler.samples) - before
        numbers = (
            f"{len(answers)} requests in {seconds:g}s: {len(served)} served,"
            f" {len(refused)} refused (p50 {percentile([a.latency for a in refused], 0.5) * 1000:.1f}"
            f" ms, p99 {p99_refused * 1000:.1f} ms); upstream got {slow.requests};"
            f" RSS {before / MiB:.1f} MiB, at most +{grew / MiB:.1f} MiB"
        )
        log.msg(f"overload: {numbers}")
        self.assertLess(p99_refused, 0.100, numbers)
        # 10 at a time, 0.5 s each: at most 10 * (seconds / 0.5 + 1).
        self.assertLessEqual(slow.requests, 10 * (seconds / 0.5 + 1), numbers)
        self.assertGreaterEqual(len(served), 10 * (seconds / 0.5) * 0.7, numbers)
        self.assertLess(grew, 20 * MiB, numbers)
        # Recovery: the breaker's counts went back to zero.
        replies = yield support.send_requests(
            self, self.gateway.port(), [("/slow", ())] * 10, concurrency=10
        )
        self.assertEqual([r.status for r in replies], [200] * 10)
        yield self.assert_bystander_unharmed()


class UpstreamFaultTests(HardeningTestCase):
    """An upstream failing mid-exchange costs that one request, nothing else."""

    @defer.inlineCallbacks
    def fetch(self, path: str, timeout: float = 5.0) -> Steps:
        """
        GET C{path} (one of L{BEHAVIOURS}) through a new gateway on a raw
        connection; fire with C{(Relayed, seconds until the connection
        closed or the response was complete, client)}.
        """
        self.faulty = FaultyServer().listen(self)
        yield self.start_with_bystander(self.faulty.port, app={"retries": {"attempts": 0}})
        client = yield support.connect_raw(self, self.gateway.port())
        client.send(request_bytes(path))
        started = time.monotonic()
        yield support.wait_for(
            lambda: client.lost or Relayed(client.data).complete,
            timeout=timeout,
            what=f"the answer to {path}",
        )
        seconds = time.monotonic() - started
        return Relayed(client.data), seconds, client

    @defer.inlineCallbacks
    def assert_cut(self, path: str, framing: str) -> Steps:
        """C{path}'s response started (200) and then the connection closed, short."""
        relayed, seconds, client = yield self.fetch(path)
        self.assertTrue(client.lost, relayed)
        self.assertEqual(relayed.status, 200, relayed)
        self.assertFalse(relayed.complete, relayed)
        self.assertIn(framing, relayed.fields)
        self.assertLess(len(relayed.body), 1000)
        yield self.assert_bystander_unharmed()
        return relayed, seconds

    @defer.inlineCallbacks
    def assert_problem(self, path: str, status: int, code: str) -> Steps:
        """C{path} was answered with a complete problem response."""
        relayed, seconds, _ = yield self.fetch(path)
        self.assertTrue(relayed.complete, relayed)
        self.assertEqual(relayed.status, status, relayed)
        self.assertEqual(relayed.fields["content-type"], "application/problem+json")
        self.assertIn(f'"urn:gatewaykit:error:{code}"', relayed.body.decode())
        yield self.assert_bystander_unharmed()
        return relayed, seconds

    def test_closed_mid_content_length(self) -> Steps:
        """Upstream closes after 100 of 1000 bytes: the client gets the 100 and a closed connection."""
        return self.assert_cut("/cut-length", "content-length")

    @defer.inlineCallbacks
    def test_closed_mid_chunked(self) -> Steps:
        """Upstream closes a chunked body before its last chunk: the client's has none either."""
        relayed, _ = yield self.assert_cut("/cut-chunked", "transfer-encoding")
        self.assertEqual(relayed.body, _PART)

    @defer.inlineCallbacks
    def test_reset_mid_unframed(self) -> Steps:
        """A body delimited by the upstream's close, ended by a reset instead: not completed."""
        relayed, _ = yield self.assert_cut("/reset-unframed", "transfer-encoding")
        self.assertEqual(relayed.body, _PART)

    def test_reset_after_head(self) -> Steps:
        """A reset after the head and part of the body: the client's response is cut short."""
        return self.assert_cut("/reset-after-head", "content-length")

    def test_invalid_chunk_after_head(self) -> Steps:
        """A malformed chunk after the head cuts the client's response rather than corrupting it."""
        return self.assert_cut("/bad-chunk", "transfer-encoding")

    @defer.inlineCallbacks
    def test_stall_after_head(self) -> Steps:
        """An upstream silent after the head: cut at the upstream idle timeout (1 s)."""
        _, seconds = yield self.assert_cut("/stall-after-head", "content-length")
        self.assertTrue(1.0 - 0.1 < seconds < 1.0 + MARGIN, seconds)

    def test_garbage(self) -> Steps:
        """An answer that is not HTTP: 502 bad_gateway."""
        return self.assert_problem("/garbage", 502, "bad_gateway")

    def test_reset_before_head(self) -> Steps:
        """A reset instead of an answer: 502 bad_gateway."""
        return self.assert_problem("/reset-before-head", 502, "bad_gateway")

    @defer.inlineCallbacks
    def test_stall_before_head(self) -> Steps:
        """No answer at all: 504 upstream_timeout at the response timeout (1 s)."""
        _, seconds = yield self.assert_problem("/stall-before-head", 504, "upstream_timeout")
        self.assertTrue(1.0 - 0.1 < seconds < 1.0 + MARGIN, seconds)


class FullDiskTests(HardeningTestCase):
    """An access log that cannot be written."""

    @defer.inlineCallbacks
    def test_access_log_on_full_disk(self) -> Steps:
        """
        With the access log on /dev/full (every write fails with ENOSPC),
        every request is still answered and the error is logged once per
        10 s, not once per request.
        """
        if not os.path.exists("/dev/full"):
            raise self.skipTest("needs Linux's /dev/full")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "access.log")
        os.symlink("/dev/full", path)
        yield self.start_with_bystander(
            gateway={"access_log": {"path": path, "format": "json"}}, load_clients=4
        )
        # Enough lines to overflow the 64 KiB buffer, over several flushes.
        yield support.sleep(3.5)
        answers = yield self.assert_bystander_unharmed()
        failures = self.gateway.output.count("access log " + path + " write failed")
        log.msg(f"full disk: {len(answers)} requests answered, {failures} error lines")
        self.assertEqual(failures, 1, self.gateway.output[-2000:])
        self.assertIn("No space left on device", self.gateway.output)
        exit_code = yield self.gateway.stop()
        self.assertEqual(exit_code, 0)
        # On stop, what was dropped since is reported: still a bounded count.
        self.assertLessEqual(self.gateway.output.count("access log " + path + " write failed"), 2)
