"""
Tests for L{gatewaykit.admin.state}: the status document, masked config,
reload and purge delegation, counters carried across reloads and the
merging of several workers' answers.

L{AdminWorld} (also used by the server and metrics tests) is a real
L{Gateway} with L{Metrics} and real listener factories on a fake reactor,
behind the attributes of C{GatewayService} the admin state reads.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from attrs import frozen
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit import __version__
from gatewaykit.admin.masking import MASK, masked_config
from gatewaykit.admin.metrics import CarriedCounters, Metrics
from gatewaykit.admin.state import LocalState, SupervisorState, Unavailable, merge_status
from gatewaykit.config import parse_config
from gatewaykit.gateway import Gateway
from gatewaykit.listeners.http import HTTP11ServerFactory
from gatewaykit.testing import GatewayReactor, TCPStringTransport, parse_response
from gatewaykit.tunnel.tcp import TCPProxyFactory

ADMIN_TOKEN = "admin-token-0123456789abcdef"
JWT_SECRET = "jwt-secret-0123456789abcdef0123456789"
SESSION_SECRET = "session-secret-0123456789abcdef01234"
OLD_SESSION_SECRET = "old-session-secret-0123456789abcdef0"

CONFIG = f"""
gateway:
  node: test-node
  access_log: {{path: "off"}}
  admin: {{bind: "127.0.0.1:9901", token: {ADMIN_TOKEN}}}
  redis: {{url: "redis://:redis-password@127.0.0.1:6379/0"}}
listeners:
  web: {{protocol: http, bind: "127.0.0.1:8080"}}
  db: {{protocol: tcp, bind: "127.0.0.1:15432", upstream: pg}}
upstreams:
  app:
    targets: [10.0.0.1:80, {{address: "10.0.0.2:80", weight: 3}}]
    health: {{path: /healthz, interval: 1s, unhealthy_threshold: 1}}
    outlier: {{consecutive_failures: 1}}
  pg: {{targets: ["10.0.0.9:5432"]}}
policies:
  per-ip: {{type: rate_limit, key: [ip], limit: 1, window: 1m}}
  jwt: {{type: jwt, algorithms: [HS256], secret: "{JWT_SECRET}"}}
  session: {{type: session, secret: "{SESSION_SECRET}", previous_secrets: ["{OLD_SESSION_SECRET}"]}}
routes:
  - {{name: ping, match: {{path: /ping}}, respond: {{status: 200, body: pong}}}}
  - {{name: limited, match: {{path: /limited}}, policies: [per-ip], respond: {{status: 200}}}}
  - {{name: api, match: {{path_prefix: /api, methods: [GET]}}, upstream: app}}
"""


@frozen
class ReloadResult:
    """What C{GatewayService.reload()} fires with."""

    ok: bool
    problems: tuple[str, ...] = ()
    digest: str = ""


class AdminWorld:
    """
    The parts of a running C{GatewayService} the admin state reads, built
    from a real config, L{Gateway} and listener factories on a fake reactor
    (a memory store stands in for the Redis of the config).
    """

    def __init__(self, text: str = CONFIG, reactor: Any = None) -> None:
        from gatewaykit.state.memory import MemoryStore

        self.reactor = reactor if reactor is not None else GatewayReactor()
        self.config = parse_config(text)
        self.metrics = Metrics(self.reactor)
        self.store = MemoryStore(self.reactor)
        self.gateway: Optional[Gateway] = self._gateway()
        self.factories: dict[str, Any] = {}
        for name, listener in self.config.listeners.items():
            kind = TCPProxyFactory if listener.protocol == "tcp" else HTTP11ServerFactory
            self.factories[name] = kind(listener, self.gateway, self.reactor)
        self.ports: dict[str, Any] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.next_reload: Any = ReloadResult(ok=True, digest=self.config.digest)

    def _gateway(self) -> Gateway:
        return Gateway(self.config, self.reactor, store=self.store, metrics=self.metrics)

    def rebuild(self) -> None:
        """What a reload does: a new Gateway (new policies) swapped in."""
        self.gateway = self._gateway()
        for factory in self.factories.values():
            factory.gateway = self.gateway

    def reload(self) -> Deferred[Any]:
        result = self.next_reload
        if isinstance(result, Deferred):
            return result
        self.reloads["ok" if result.ok else "failed"] += 1
        return succeed(result)

    def connect(self, listener: str = "web", client: str = "192.0.2.1") -> tuple[Any, Any]:
        """A client connection to C{listener}: its protocol and transport."""
        protocol = self.factories[listener].buildProtocol(IPv4Address("TCP", client, 40000))
        transport = TCPStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", client, 40000),
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def get(self, path: str, client: str = "192.0.2.1") -> Any:
        """The response to C{GET path} on a new connection to C{web}."""
        protocol, transport = self.connect(client=client)
        protocol.dataReceived(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        return parse_response(transport.value())

    def proxy(self, path: str, status: int = 200, seconds: float = 0.0) -> Any:
        """C{GET path} answered by the target the gateway connects to."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        factory = self.reactor.tcpClients[-1][2]
        upstream = factory.buildProtocol(None)
        upstream.makeConnection(TCPStringTransport())
        self.reactor.advance(seconds)
        upstream.dataReceived(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % status)
        return parse_response(transport.value())

    def state(self, **kwargs: Any) -> LocalState:
        return LocalState(self, self.metrics, **kwargs)


def result_of(case: SynchronousTestCase, d: Deferred[Any]) -> Any:
    return case.successResultOf(d)


class StatusTests(SynchronousTestCase):
    """L{LocalState.status}."""

    def setUp(self) -> None:
        self.world = AdminWorld()
        self.state = self.world.state()

    def status(self) -> dict[str, Any]:
        return result_of(self, self.state.status())

    def test_identity(self) -> None:
        """Node, version, config digest and uptime are given."""
        self.world.reactor.advance(12.5)
        status = self.status()
        self.assertEqual(status["node"], "test-node")
        self.assertEqual(status["version"], __version__)
        self.assertEqual(status["config_digest"], self.world.config.digest)
        self.assertEqual(status["uptime_seconds"], 12.5)

    def test_listeners(self) -> None:
        """Each listener with its protocol, bind and open connections."""
        self.world.connect()
        listeners = {entry["name"]: entry for entry in self.status()["listeners"]}
        self.assertEqual(listeners["web"]["protocol"], "http")
        self.assertEqual(listeners["web"]["bind"], "127.0.0.1:8080")
        self.assertEqual(listeners["web"]["connections"], 1)
        self.assertEqual(listeners["db"]["protocol"], "tcp")
        self.assertEqual(listeners["db"]["bytes_in"], 0)

    def test_bound_port(self) -> None:
        """A listener's bind shows the port the OS gave it."""
        self.world.ports["web"] = BoundPort(IPv4Address("TCP", "127.0.0.1", 43210))
        self.assertEqual(self.status()["listeners"][0]["bind"], "127.0.0.1:43210")

    def test_targets(self) -> None:
        """Targets show health, ejection, in-flight count and latency."""
        target = self.world.gateway.upstreams["app"].targets[1]
        target.healthy = False
        target.in_flight = 2
        target.record_latency(0.015)
        upstreams = {entry["name"]: entry for entry in self.status()["upstreams"]}
        shown = upstreams["app"]["targets"][1]
        self.assertEqual(
            (shown["address"], shown["weight"], shown["healthy"], shown["ejected"]),
            ("10.0.0.2:80", 3, False, False),
        )
        self.assertEqual((shown["in_flight"], shown["ewma_ms"]), (2, 15.0))

    def test_routes(self) -> None:
        """Routes with their match and action, and requests by status code."""
        self.world.get("/ping")
        self.world.get("/ping")
        self.world.get("/nowhere")
        routes = {route["name"]: route for route in self.status()["routes"]}
        self.assertEqual(routes["ping"]["requests"], {"200": 2.0})
        self.assertEqual(routes["ping"]["match"], "/ping")
        self.assertEqual(routes["api"]["match"], "/api/* GET")
        self.assertEqual((routes["api"]["action"], routes["api"]["upstream"]), ("upstream", "app"))
        self.assertEqual(routes[""]["requests"], {"404": 1.0})

    def test_rate_limits(self) -> None:
        """Rate-limit policies show allowed, limited and degraded counts."""
        self.world.get("/limited")
        self.world.get("/limited")
        self.assertEqual(
            self.status()["rate_limits"],
            [{"policy": "per-ip", "allowed": 1, "limited": 1, "degraded": 0}],
        )

    def test_rate_limits_across_reload(self) -> None:
        """Counts carry on when a reload replaces the policy objects."""
        self.world.get("/limited")
        self.status()
        self.world.get("/limited")  # counted by the old policy after the last read
        self.world.rebuild()
        self.world.get("/limited", client="192.0.2.2")
        [counts] = self.status()["rate_limits"]
        self.assertEqual((counts["allowed"], counts["limited"]), (2, 1))

    def test_no_cache(self) -> None:
        """Without a cache policy the cache section is empty."""
        self.assertEqual(self.status()["cache"], {"lookups": {}, "bytes": 0})

    def test_cache_policy(self) -> None:
        """A policy with C{lookups} and C{bytes} is read as a cache."""
        self.world.gateway.policies["cache"] = FakeCache(hit=3, miss=1, held=2048)
        self.assertEqual(
            self.status()["cache"], {"lookups": {"hit": 3.0, "miss": 1.0}, "bytes": 2048}
        )

    def test_reloads(self) -> None:
        """The service's reload counts are shown."""
        self.world.reloads = {"ok": 2, "failed": 1}
        self.assertEqual(self.status()["reloads"], {"ok": 2, "failed": 1})

    def test_workers(self) -> None:
        """One worker, this process."""
        [worker] = self.status()["workers"]
        self.assertEqual((worker["id"], worker["pid"]), (0, os.getpid()))

    def test_no_gateway(self) -> None:
        """Before the service started there is no gateway: empty sections."""
        self.world.gateway = None
        status = self.status()
        self.assertEqual((status["upstreams"], status["routes"]), ([], []))


class BoundPort:
    """A listening port as far as the status reads it."""

    def __init__(self, address: Any) -> None:
        self._address = address

    def getHost(self) -> Any:
        return self._address


class FakeCache:
    """A cache policy as the admin state expects one: C{lookups}, C{bytes}, C{purge}."""

    def __init__(self, hit: int = 0, miss: int = 0, held: int = 0, purges: int = 0) -> None:
        self.lookups = {"hit": hit, "miss": miss}
        self.bytes = held
        self.purges = purges
        self.purged: list[tuple[Optional[str], Optional[str]]] = []

    def purge(self, prefix: Optional[str], url: Optional[str]) -> int:
        self.purged.append((prefix, url))
        return self.purges


class ConfigTests(SynchronousTestCase):
    """L{LocalState.config} and L{masked_config}."""

    def setUp(self) -> None:
        self.world = AdminWorld()
        self.shown = self.world.state().config()

    def test_secrets_masked(self) -> None:
        """Secrets of policies, the admin token and URL passwords show as ***."""
        policies = self.shown["policies"]
        self.assertEqual(policies["jwt"]["options"]["secret"], MASK)
        self.assertEqual(policies["session"]["options"]["secret"], MASK)
        self.assertEqual(policies["session"]["options"]["previous_secrets"], [MASK])
        self.assertEqual(self.shown["gateway"]["admin"]["token"], MASK)
        self.assertEqual(
            self.shown["gateway"]["redis"]["url"], "redis://:***@127.0.0.1:6379/0"
        )

    def test_no_secret_anywhere(self) -> None:
        """No secret of the config appears anywhere in the answer."""
        text = repr(self.shown)
        for secret in (ADMIN_TOKEN, JWT_SECRET, SESSION_SECRET, OLD_SESSION_SECRET, "redis-password"):
            self.assertNotIn(secret, text)

    def test_rest_shown(self) -> None:
        """Everything else is shown as plain data."""
        self.assertEqual(self.shown["gateway"]["admin"]["port"], 9901)
        self.assertEqual(self.shown["upstreams"]["app"]["targets"][1]["weight"], 3)
        self.assertEqual(self.shown["routes"][2]["match"]["methods"], ["GET"])
        self.assertEqual(self.shown["policies"]["per-ip"]["options"]["limit"], 1)

    def test_empty_token(self) -> None:
        """An empty token (no authentication) is shown as it is."""
        config = parse_config("gateway: {node: n, admin: {token: ''}}\n")
        self.assertEqual(masked_config(config)["gateway"]["admin"]["token"], "")

    def test_metadata_secret(self) -> None:
        """A plugin's option field marked C{metadata={"secret": True}} is masked."""
        from attrs import field

        @frozen
        class PluginOptions:
            signing: str = field(metadata={"secret": True})
            header: str = "X-Signature"

        self.assertEqual(
            masked_config(PluginOptions("hunter2")), {"signing": MASK, "header": "X-Signature"}
        )

    def test_plain_options(self) -> None:
        """Options kept as a plain mapping are masked by key name."""
        shown = masked_config({"options": {"password": "pw", "user": "u"}})
        self.assertEqual(shown["options"], {"password": MASK, "user": "u"})


class ReloadTests(SynchronousTestCase):
    """L{LocalState.reload}."""

    def test_delegates(self) -> None:
        """The service's reload result is passed on."""
        world = AdminWorld()
        world.next_reload = ReloadResult(ok=False, problems=("gw.yaml:3:1: oops",))
        result = result_of(self, world.state().reload())
        self.assertEqual((result.ok, result.problems), (False, ("gw.yaml:3:1: oops",)))

    def test_unavailable(self) -> None:
        """A service without C{reload} fails with L{Unavailable}."""
        world = AdminWorld()
        state = LocalState(_WithoutReload(world), world.metrics, clock=world.reactor)
        self.failureResultOf(state.reload(), Unavailable)


class _WithoutReload:
    """A service of the time before reloads existed."""

    def __init__(self, world: AdminWorld) -> None:
        self.config = world.config
        self.gateway = world.gateway


class PurgeTests(SynchronousTestCase):
    """L{LocalState.purge_cache}."""

    def test_no_cache(self) -> None:
        """Without a cache nothing is purged."""
        self.assertEqual(result_of(self, AdminWorld().state().purge_cache(prefix="/users")), 0)

    def test_caches(self) -> None:
        """Every policy with a C{purge} method purges; the counts add up."""
        world = AdminWorld()
        first, second = FakeCache(purges=2), FakeCache(purges=5)
        world.gateway.policies.update({"c1": first, "c2": second})
        self.assertEqual(result_of(self, world.state().purge_cache(url="http://a/x")), 7)
        self.assertEqual(first.purged, [(None, "http://a/x")])


class CarriedCountersTests(SynchronousTestCase):
    """L{CarriedCounters}."""

    def test_swap(self) -> None:
        """A new owner's counts add to the old one's final counts."""
        counters = CarriedCounters()
        old, new = {"n": 1}, {"n": 0}
        self.assertEqual(counters.read("k", old, dict), {"n": 1})
        old["n"] = 4
        new["n"] = 2
        self.assertEqual(counters.read("k", new, dict), {"n": 6})
        new["n"] = 3
        self.assertEqual(counters.read("k", new, dict), {"n": 7})


class MergeStatusTests(SynchronousTestCase):
    """L{merge_status}: one document from several workers."""

    def setUp(self) -> None:
        world = AdminWorld()
        world.get("/ping")
        world.connect()
        self.one = result_of(self, world.state(worker_id=1).status())
        target = world.gateway.upstreams["app"].targets[0]
        target.ejected = True
        target.requests = 3
        target.record_latency(0.010)
        world.get("/ping")
        self.two = result_of(self, world.state(worker_id=2).status())

    def test_sums(self) -> None:
        """Connections, route requests and rate-limit counts add up."""
        merged = merge_status([self.one, self.two])
        connections = [
            entry["connections"]
            for status in (merged, self.one, self.two)
            for entry in status["listeners"]
            if entry["name"] == "web"
        ]
        self.assertEqual(connections[0], connections[1] + connections[2])
        ping = {route["name"]: route for route in merged["routes"]}["ping"]
        self.assertEqual(ping["requests"], {"200": 1.0 + 2.0})

    def test_targets(self) -> None:
        """A target is ejected if any worker ejected it; latency is request-weighted."""
        merged = merge_status([self.one, self.two])
        target = merged["upstreams"][0]["targets"][0]
        self.assertTrue(target["ejected"])
        self.assertEqual(target["requests"], 3)
        self.assertEqual(target["ewma_ms"], 10.0)

    def test_workers(self) -> None:
        """Every worker is listed; the first one's identity is kept."""
        merged = merge_status([self.one, self.two])
        self.assertEqual([worker["id"] for worker in merged["workers"]], [1, 2])
        self.assertEqual(merged["uptime_seconds"], self.one["uptime_seconds"])

    def test_nothing(self) -> None:
        """Merging no status is a mistake."""
        self.assertRaises(ValueError, merge_status, [])


class FakeSupervisor:
    """A supervisor of workers, each a L{LocalState} over its own world."""

    def __init__(self, *worlds: AdminWorld) -> None:
        self.reactor = worlds[0].reactor
        self.config = worlds[0].config
        self.reloads = {"ok": 5, "failed": 0}
        self.started_at = 0.0
        self.states = [world.state(worker_id=index) for index, world in enumerate(worlds)]

    def ask_all(self, op: str) -> Deferred[list[Any]]:
        from twisted.internet.defer import gatherResults

        if op == "status":
            return gatherResults([state.status() for state in self.states])
        texts = [state.metrics_text() for state in self.states]
        return gatherResults(texts).addCallback(lambda found: [t.decode() for t in found])


class SupervisorStateTests(SynchronousTestCase):
    """L{SupervisorState}: the workers' answers, merged."""

    def setUp(self) -> None:
        self.one, self.two = AdminWorld(), AdminWorld()
        self.supervisor = FakeSupervisor(self.one, self.two)
        self.state = SupervisorState(self.supervisor)

    def test_status(self) -> None:
        """Every worker is listed; reloads and uptime are the supervisor's."""
        self.one.reactor.advance(30)
        status = result_of(self, self.state.status())
        self.assertEqual([worker["id"] for worker in status["workers"]], [0, 1])
        self.assertEqual(status["reloads"], {"ok": 5, "failed": 0})
        self.assertEqual(status["uptime_seconds"], 30.0)

    def test_no_worker(self) -> None:
        """No worker answering is L{Unavailable} (503)."""
        self.supervisor.states = []
        failure = self.failureResultOf(self.state.status(), Unavailable)
        self.assertEqual(failure.value.status, 503)

    def test_metrics(self) -> None:
        """Requests add up; reloads are the supervisor's counts."""
        from tests.test_metrics import scrape

        self.one.get("/ping")
        self.two.get("/ping")
        samples = scrape(result_of(self, self.state.metrics_text()))
        [count] = samples["gatewaykit_requests_total"].values()
        self.assertEqual(count, 2.0)
        self.assertEqual(
            samples["gatewaykit_config_reloads_total"][(("result", "ok"),)], 5.0
        )

    def test_purge_unavailable(self) -> None:
        """Until workers can purge, purging says it is not available."""
        self.failureResultOf(self.state.purge_cache(prefix="/"), Unavailable)


class PerCallStateTests(SynchronousTestCase):
    """A L{LocalState} made for each call (as a worker's control channel does)."""

    def test_service_metrics(self) -> None:
        """Without metrics given, the service's own are used and not duplicated."""
        from tests.test_metrics import scrape

        world = AdminWorld()
        world.get("/ping")
        for _ in range(3):
            text = result_of(self, LocalState(world).metrics_text())
        samples = scrape(text)
        self.assertEqual(list(samples["gatewaykit_requests_total"].values()), [1.0])
        self.assertEqual(len(samples["gatewaykit_upstream_target_healthy"]), 3)
