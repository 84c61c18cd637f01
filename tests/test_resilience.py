"""
Tests for the circuit breaker, retries, outlier ejection and active health
checks (L{gatewaykit.upstream.proxy}, L{gatewaykit.upstream.cluster},
L{gatewaykit.upstream.outlier}, L{gatewaykit.upstream.health}).
"""

import json

from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.model import (
    CircuitBreakerConfig,
    HealthCheckConfig,
    OutlierConfig,
    RetryConfig,
    TargetConfig,
)
from gatewaykit.testing import (
    GatewayHarness,
    TCPStringTransport,
    make_config,
    parse_response,
    route,
    upstream,
)
from gatewaykit.upstream.cluster import RetryBudget
from gatewaykit.upstream.health import HealthChecker
from gatewaykit.upstream.outlier import OutlierDetector
from gatewaykit.upstream.target import Target

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def harness(*addresses: str, **upstream_kwargs) -> GatewayHarness:
    addresses = addresses or ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
    return GatewayHarness(
        make_config(
            routes=[route("app", path_prefix="/", upstream="app")],
            upstreams=[upstream("app", *addresses, **upstream_kwargs)],
        )
    )


def problem(data: bytes) -> tuple[int, str]:
    response = parse_response(data)
    return response.status, json.loads(response.body)["type"].rpartition(":")[2]


def hosts(gateway: GatewayHarness) -> list[str]:
    return [client[0] for client in gateway.reactor.tcpClients]


class CircuitBreakerTests(SynchronousTestCase):
    """circuit_breaker: refuse at once beyond the limits."""

    def test_max_requests(self):
        """With max_requests requests in flight, the next gets 503 circuit_open at once."""
        gateway = harness(circuit_breaker=CircuitBreakerConfig(max_requests=1))
        first, _ = gateway.connect()
        first.dataReceived(GET)
        second, transport = gateway.connect()
        second.dataReceived(GET)
        self.assertEqual(problem(transport.value()), (503, "circuit_open"))
        self.assertEqual(len(gateway.reactor.tcpClients), 1)

    def test_capacity_returns(self):
        """Once the request in flight is answered, a new one goes through."""
        gateway = harness("10.0.0.1:80", circuit_breaker=CircuitBreakerConfig(max_requests=1))
        first, _ = gateway.connect()
        first.dataReceived(GET)
        connection, _ = gateway.accept_upstream()
        connection.dataReceived(OK)
        second, transport = gateway.connect()
        second.dataReceived(GET)
        connection.dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_max_pending(self):
        """With max_pending requests waiting for a connection, the next is refused."""
        gateway = harness(circuit_breaker=CircuitBreakerConfig(max_pending=1))
        gateway.connect()[0].dataReceived(GET)
        second, transport = gateway.connect()
        second.dataReceived(GET)
        self.assertEqual(problem(transport.value()), (503, "circuit_open"))

    def test_counters_return_to_zero(self):
        """After requests end, the upstream counts nothing in flight or pending."""
        gateway = harness()
        client, _ = gateway.connect()
        client.dataReceived(GET)
        gateway.accept_upstream()[0].dataReceived(OK)
        cluster = gateway.gateway.upstreams["app"]
        self.assertEqual((cluster.in_flight, cluster.pending), (0, 0))
        self.assertEqual([t.in_flight for t in cluster.targets], [0, 0, 0])


class RetryTests(SynchronousTestCase):
    """retries: another target for failures that are safe to retry."""

    retries = RetryConfig(attempts=2, on=("connect_failure", "reset", "timeout", 503))

    def test_connect_failure_next_target(self):
        """A refused connection is retried on another target."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        gateway.refuse_upstream(ConnectionRefusedError())
        self.assertEqual(hosts(gateway), ["10.0.0.1", "10.0.0.2"])
        gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_connect_failure_any_method(self):
        """A POST with a body is retried after a connect failure: nothing was sent."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        gateway.refuse_upstream(ConnectionRefusedError())
        _, upstream_transport = gateway.accept_upstream()
        self.assertTrue(upstream_transport.value().endswith(b"\r\n\r\nabc"))

    def test_reset_retried_for_get(self):
        """A GET whose connection is reset before any answer is retried elsewhere."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        connection, _ = gateway.accept_upstream()
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(hosts(gateway), ["10.0.0.1", "10.0.0.2"])
        gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_reset_not_retried_for_post(self):
        """A POST whose body went upstream is not retried after a reset."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        connection, _ = gateway.accept_upstream()
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(problem(transport.value()), (502, "bad_gateway"))
        self.assertEqual(len(gateway.reactor.tcpClients), 1)

    def test_status_retried(self):
        """A 503 listed in retries.on is dropped and the request tried elsewhere."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        connection, upstream_transport = gateway.accept_upstream()
        connection.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        self.assertTrue(upstream_transport.disconnecting)
        gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).body, b"ok")

    def test_last_status_relayed(self):
        """When attempts run out, the upstream's own 503 reaches the client."""
        gateway = harness(retries=RetryConfig(attempts=1, on=(503,)))
        client, transport = gateway.connect()
        client.dataReceived(GET)
        for _ in range(2):
            gateway.accept_upstream()[0].dataReceived(
                b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"
            )
        response = parse_response(transport.value())
        self.assertEqual((response.status, response.body), (503, b"busy"))
        self.assertEqual(len(gateway.reactor.tcpClients), 2)

    def test_status_not_listed(self):
        """A 502 not in retries.on is relayed at once."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        gateway.accept_upstream()[0].dataReceived(b"HTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).status, 502)
        self.assertEqual(len(gateway.reactor.tcpClients), 1)

    def test_per_try_timeout(self):
        """A try without an answer within per_try_timeout is retried, then 504."""
        retries = RetryConfig(attempts=1, on=("timeout",), per_try_timeout=0.5)
        gateway = harness(retries=retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        gateway.accept_upstream()
        gateway.reactor.advance(0.6)
        self.assertEqual(hosts(gateway), ["10.0.0.1", "10.0.0.2"])
        gateway.accept_upstream()
        gateway.reactor.advance(0.6)
        self.assertEqual(problem(transport.value()), (504, "upstream_timeout"))

    def test_per_try_timeout_while_connecting(self):
        """A try that times out while still connecting counts once and retries once."""
        retries = RetryConfig(attempts=1, on=("timeout", "connect_failure"), per_try_timeout=0.5)
        gateway = harness(retries=retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        gateway.reactor.advance(0.6)
        self.assertEqual(hosts(gateway), ["10.0.0.1", "10.0.0.2"])
        cluster = gateway.gateway.upstreams["app"]
        self.assertEqual(cluster.targets[0].failures, 1)
        self.assertEqual(cluster.pending, 1)
        gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertEqual((cluster.in_flight, cluster.pending), (0, 0))

    def test_attempts_bounded(self):
        """No more than retries.attempts extra tries are made."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        for _ in range(3):
            gateway.refuse_upstream(ConnectionRefusedError())
        self.assertEqual(len(gateway.reactor.tcpClients), 3)
        self.assertEqual(problem(transport.value()), (502, "bad_gateway"))

    def test_single_target_retries_itself(self):
        """With one target, the retry goes to it again."""
        gateway = harness("10.0.0.9:80", retries=self.retries)
        gateway.connect()[0].dataReceived(GET)
        gateway.refuse_upstream(ConnectionRefusedError())
        self.assertEqual(hosts(gateway), ["10.0.0.9", "10.0.0.9"])

    def exhaust_budget(self, gateway: GatewayHarness) -> None:
        budget = gateway.gateway.upstreams["app"].retry_budget
        while budget.allow_retry():
            pass

    def test_budget(self):
        """Beyond the retry budget, a reset is answered instead of retried."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        self.exhaust_budget(gateway)
        gateway.accept_upstream()[0].connectionLost(Failure(ConnectionLost()))
        self.assertEqual(problem(transport.value()), (502, "bad_gateway"))
        self.assertEqual(len(gateway.reactor.tcpClients), 1)

    def test_connect_failure_spends_no_budget(self):
        """A connect failure is retried even with the budget spent: nothing was sent."""
        gateway = harness(retries=self.retries)
        client, transport = gateway.connect()
        client.dataReceived(GET)
        self.exhaust_budget(gateway)
        gateway.refuse_upstream(ConnectionRefusedError())
        gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_no_retries(self):
        """attempts: 0 turns retries off, even for connect failures."""
        gateway = harness(retries=RetryConfig(attempts=0))
        client, transport = gateway.connect()
        client.dataReceived(GET)
        gateway.refuse_upstream(ConnectionRefusedError())
        self.assertEqual(problem(transport.value()), (502, "bad_gateway"))


class RetryBudgetTests(SynchronousTestCase):
    """The share of load retries may add."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.budget = RetryBudget(20, self.clock)

    def spend(self) -> int:
        count = 0
        while self.budget.allow_retry():
            count += 1
        return count

    def test_floor(self):
        """With no traffic, a few retries a second are still allowed."""
        self.assertEqual(self.spend(), RetryBudget.MIN_PER_SECOND * RetryBudget.WINDOW)

    def test_share_of_requests(self):
        """Retries may add the configured share of the window's requests."""
        for _ in range(1000):
            self.budget.request()
        self.assertEqual(self.spend(), 200 + RetryBudget.MIN_PER_SECOND * RetryBudget.WINDOW)

    def test_window_moves(self):
        """Requests and retries older than the window no longer count."""
        for _ in range(1000):
            self.budget.request()
        self.spend()
        self.clock.advance(RetryBudget.WINDOW)
        self.assertEqual(self.spend(), RetryBudget.MIN_PER_SECOND * RetryBudget.WINDOW)


def targets(count: int) -> list[Target]:
    return [Target(TargetConfig(f"10.0.0.{i}", 80)) for i in range(count)]


class OutlierTests(SynchronousTestCase):
    """Passive ejection from real traffic."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.changes = []
        self.targets = targets(4)
        self.detector = OutlierDetector(
            OutlierConfig(consecutive_failures=3, base_ejection=10.0, max_ejected_percent=50),
            self.targets,
            self.clock,
            lambda target, ejected, seconds: self.changes.append((target, ejected, seconds)),
        )

    def fail_times(self, target: Target, times: int) -> None:
        for _ in range(times):
            self.detector.record(target, False)

    def test_ejected_after_consecutive_failures(self):
        """The configured number of failures in a row ejects the target."""
        target = self.targets[0]
        self.fail_times(target, 2)
        self.assertFalse(target.ejected)
        self.fail_times(target, 1)
        self.assertTrue(target.ejected)
        self.assertFalse(target.available)

    def test_success_resets(self):
        """A success in between starts the count again."""
        target = self.targets[0]
        self.fail_times(target, 2)
        self.detector.record(target, True)
        self.fail_times(target, 2)
        self.assertFalse(target.ejected)

    def test_returns_after_base_ejection(self):
        """An ejected target comes back after base_ejection."""
        target = self.targets[0]
        self.fail_times(target, 3)
        self.clock.advance(9.9)
        self.assertTrue(target.ejected)
        self.clock.advance(0.2)
        self.assertFalse(target.ejected)

    def test_ejection_time_doubles(self):
        """A repeat ejection lasts twice as long."""
        target = self.targets[0]
        self.fail_times(target, 3)
        self.clock.advance(10)
        self.fail_times(target, 3)
        self.assertEqual(self.changes[-1][2], 20.0)

    def test_ejection_time_capped(self):
        """Ejections never last more than ten times base_ejection."""
        target = self.targets[0]
        for _ in range(6):
            self.fail_times(target, 3)
            self.clock.advance(self.changes[-1][2])
        self.assertEqual(max(c[2] for c in self.changes), 100.0)

    def test_max_ejected_percent(self):
        """No more than max_ejected_percent of the targets are ejected at once."""
        for target in self.targets:
            self.fail_times(target, 3)
        self.assertEqual(sum(t.ejected for t in self.targets), 2)

    def test_one_may_always_be_ejected(self):
        """Even a small percentage lets one target be ejected."""
        detector = OutlierDetector(
            OutlierConfig(consecutive_failures=1, max_ejected_percent=10),
            self.targets,
            self.clock,
            lambda *args: None,
        )
        detector.record(self.targets[0], False)
        detector.record(self.targets[1], False)
        self.assertEqual([t.ejected for t in self.targets], [True, False, False, False])

    def test_proxy_feeds_detector(self):
        """Failed requests through the gateway eject their target."""
        gateway = harness(
            "10.0.0.1:80",
            "10.0.0.2:80",
            retries=RetryConfig(attempts=0),
            outlier=OutlierConfig(consecutive_failures=2),
        )
        bad = gateway.gateway.upstreams["app"].targets[0]
        while not bad.ejected:
            client, _ = gateway.connect()
            client.dataReceived(GET)
            if gateway.reactor.tcpClients[-1][0] == "10.0.0.1":
                gateway.refuse_upstream(ConnectionRefusedError())
            else:
                gateway.accept_upstream()[0].dataReceived(OK)
        self.assertEqual(hosts(gateway).count("10.0.0.1"), 2)
        before = len(hosts(gateway))
        for _ in range(3):
            gateway.connect()[0].dataReceived(GET)
        # One request reuses the idle connection to .2; the others open new ones.
        self.assertEqual(hosts(gateway)[before:], ["10.0.0.2"] * 2)


class HealthCheckTests(SynchronousTestCase):
    """Active checks."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.targets = targets(1)
        self.changes = []

    def checker(self, **config) -> HealthChecker:
        defaults = dict(path="/healthz", interval=5.0, timeout=1.0)
        defaults.update(config)
        checker = HealthChecker(
            HealthCheckConfig(**defaults),
            self.targets,
            self.clock,
            lambda target, healthy: self.changes.append((target.address, healthy)),
        )
        self.addCleanup(checker.stop)
        return checker

    def answer(self, index: int, response: bytes) -> TCPStringTransport:
        """Complete probe connection C{index} and have the target send C{response}."""
        factory = self.clock.tcpClients[index][2]
        protocol = factory.buildProtocol(None)
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(response)
        return transport

    def refuse(self, index: int) -> None:
        factory = self.clock.tcpClients[index][2]
        factory.clientConnectionFailed(self.clock.connectors[index], Failure(ConnectionRefusedError()))

    def test_http_probe_request(self):
        """An HTTP check sends GET path with the target as Host."""
        self.checker().start()
        transport = self.answer(0, b"")
        self.assertEqual(
            transport.value(),
            b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.0:80\r\n"
            b"User-Agent: gatewaykit-health-check\r\nConnection: close\r\n\r\n",
        )

    def test_checks_every_interval(self):
        """After a check, the next one starts an interval later."""
        self.checker().start()
        self.assertEqual(len(self.clock.tcpClients), 1)
        self.answer(0, b"HTTP/1.1 200 OK\r\n\r\n")
        self.clock.advance(4.9)
        self.assertEqual(len(self.clock.tcpClients), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(self.clock.tcpClients), 2)

    def test_unhealthy_after_threshold(self):
        """Failures in a row up to unhealthy_threshold mark the target unhealthy."""
        self.checker(unhealthy_threshold=2).start()
        target = self.targets[0]
        self.answer(0, b"HTTP/1.1 500 Oops\r\n\r\n")
        self.assertTrue(target.healthy)
        self.clock.advance(5)
        self.refuse(1)
        self.assertFalse(target.healthy)
        self.assertEqual(self.changes, [("10.0.0.0:80", False)])

    def test_healthy_again_after_threshold(self):
        """Passes in a row up to healthy_threshold bring an unhealthy target back."""
        self.checker(unhealthy_threshold=1, healthy_threshold=2).start()
        target = self.targets[0]
        self.refuse(0)
        self.assertFalse(target.healthy)
        self.clock.advance(5)
        self.answer(1, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertFalse(target.healthy)
        self.clock.advance(5)
        self.answer(2, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(target.healthy)

    def test_expect_status(self):
        """Only statuses in expect_status pass."""
        self.checker(unhealthy_threshold=1, expect_status=((200, 200),)).start()
        self.answer(0, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertFalse(self.targets[0].healthy)

    def test_timeout_fails(self):
        """A check with no answer within the timeout fails."""
        self.checker(unhealthy_threshold=1).start()
        self.answer(0, b"")
        self.clock.advance(1.1)
        self.assertFalse(self.targets[0].healthy)

    def test_tcp_check(self):
        """A TCP check passes when the connection opens."""
        self.checker(path=None, tcp=True, unhealthy_threshold=1, healthy_threshold=1).start()
        self.refuse(0)
        self.assertFalse(self.targets[0].healthy)
        self.clock.advance(5)
        transport = self.answer(1, b"")
        self.assertTrue(self.targets[0].healthy)
        self.assertTrue(transport.disconnecting)

    def test_stop_cancels(self):
        """Stopping leaves no scheduled check behind."""
        checker = self.checker()
        checker.start()
        self.answer(0, b"HTTP/1.1 200 OK\r\n\r\n")
        checker.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unhealthy_target_avoided(self):
        """The gateway does not send requests to a target its checks marked unhealthy."""
        gateway = harness(
            "10.0.0.1:80", "10.0.0.2:80", health=HealthCheckConfig(path="/h", unhealthy_threshold=1)
        )
        gateway.gateway.start()
        self.addCleanup(gateway.gateway.close)
        factory = gateway.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(gateway.reactor.connectors[0], Failure(ConnectionRefusedError()))
        for _ in range(3):
            gateway.connect()[0].dataReceived(GET)
        self.assertEqual(hosts(gateway)[2:], ["10.0.0.2"] * 3)
