"""
End-to-end tests of the admin API: a L{GatewayService} in this process on
real loopback sockets, real upstream servers, and curl talking to the
gateway and to the admin API.

Until C{tap.py} starts the admin API itself (see "Wiring" in
C{docs/admin-api.md}), L{AdminGateway} does what that wiring will do: one
L{Metrics} given to the service (and so to every L{Gateway} it builds), a
L{LocalState} over the service and an L{AdminService} on
C{gateway.admin.bind}.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor

from gatewaykit.admin.metrics import FAMILIES, Metrics
from gatewaykit.admin.server import AdminService
from gatewaykit.admin.state import LocalState
from gatewaykit.config import load_config
from gatewaykit.service import GatewayService
from tests.integration import support

TOKEN = "e2e-admin-token-0123456789abcdef"


def admin_config(ports: list[int], **upstream: Any) -> dict:
    """L{support.cluster_config} over C{ports}, with a ping route and the admin API."""
    config = support.cluster_config(ports, **upstream)
    config["gateway"]["admin"] = {"bind": "127.0.0.1:0", "token": TOKEN}
    config["routes"].insert(0, support.PING_ROUTE)
    return config


class AdminGateway:
    """A gateway service and its admin API, running in the test process."""

    def __init__(self, test_case: Any, config: dict) -> None:
        self.test_case = test_case
        directory = os.path.abspath(test_case.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "gateway.yaml")
        self.write(yaml.safe_dump(config))
        self.config = load_config(self.path)
        self.metrics = Metrics(reactor)
        self.service = GatewayService(
            self.config, reactor, metrics=self.metrics, handle_signals=False
        )
        self.state = LocalState(self.service, self.metrics)
        admin = self.config.gateway.admin
        assert admin is not None
        self.admin = AdminService(self.state, admin, reactor)

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def start(self) -> AdminGateway:
        self.service.startService()
        self.test_case.addCleanup(self.service.stopService)
        self.admin.startService()
        self.test_case.addCleanup(self.admin.stopService)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.service.port_of('web')}{path}"

    def admin_url(self, path: str) -> str:
        assert self.admin.port is not None
        return f"http://127.0.0.1:{self.admin.port.getHost().port}{path}"  # type: ignore[attr-defined]

    def call(self, path: str, *options: str, token: Optional[str] = TOKEN) -> defer.Deferred:
        """curl an admin call (with the token unless C{token} is C{None})."""
        auth = ("-H", f"Authorization: Bearer {token}") if token is not None else ()
        return support.curl(self.test_case, self.admin_url(path), *auth, *options)

    @defer.inlineCallbacks
    def status(self) -> support.Steps:
        response = yield self.call("/status")
        self.test_case.assertEqual(response.status, 200)
        return response.json()

    @defer.inlineCallbacks
    def target_health(self) -> support.Steps:
        """Target address -> (healthy, ejected), from C{GET /status}."""
        status = yield self.status()
        return {
            target["address"]: (target["healthy"], target["ejected"])
            for upstream in status["upstreams"]
            for target in upstream["targets"]
        }


def scrape(text: bytes) -> dict[str, dict[tuple, float]]:
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


class AdminAPITests(support.GatewayTestCase):
    """The admin API over real sockets, next to a real gateway."""

    @defer.inlineCallbacks
    def start(self, upstreams: int = 2, **upstream: Any) -> support.Steps:
        self.upstreams = [self.start_upstream() for _ in range(upstreams)]
        config = admin_config([server.port for server in self.upstreams], **upstream)
        gateway = AdminGateway(self, config).start()
        yield support.sleep(0)  # let the first health checks go out
        return gateway

    @defer.inlineCallbacks
    def test_status(self) -> support.Steps:
        """/status shows the bound listener, both targets and the traffic per route."""
        gateway = yield self.start()
        for _ in range(3):
            response = yield support.curl(self, gateway.url("/headers"))
            self.assertEqual(response.status, 200)
        yield support.curl(self, gateway.url("/ping"))
        status = yield gateway.status()
        self.assertEqual(status["node"], support.NODE)
        self.assertEqual(status["config_digest"], gateway.config.digest)
        [web] = status["listeners"]
        self.assertEqual(web["bind"], f"127.0.0.1:{gateway.service.port_of('web')}")
        [app] = status["upstreams"]
        self.assertEqual(
            sorted(target["address"] for target in app["targets"]),
            sorted(f"127.0.0.1:{server.port}" for server in self.upstreams),
        )
        self.assertEqual(sum(target["requests"] for target in app["targets"]), 3)
        routes = {route["name"]: route for route in status["routes"]}
        self.assertEqual(routes["all"]["requests"], {"200": 3})
        self.assertEqual(routes["ping"]["requests"], {"200": 1})

    @defer.inlineCallbacks
    def test_metrics(self) -> support.Steps:
        """/metrics has every family, counting the requests just made."""
        gateway = yield self.start()
        for _ in range(2):
            yield support.curl(self, gateway.url("/headers"))
        yield support.curl(self, gateway.url("/ping"))
        response = yield gateway.call("/metrics")
        self.assertEqual(
            response.header("content-type"), "text/plain; version=0.0.4; charset=utf-8"
        )
        families = {
            family.name + ("_total" if family.type == "counter" else "")
            for family in text_string_to_metric_families(response.body.decode())
        }
        self.assertEqual(set(FAMILIES) - families, set())
        samples = scrape(response.body)
        requests = samples["gatewaykit_requests_total"]
        proxied = (("code", "200"), ("listener", "web"), ("route", "all"), ("upstream", "app"))
        local = (("code", "200"), ("listener", "web"), ("route", "ping"), ("upstream", ""))
        self.assertEqual((requests[proxied], requests[local]), (2.0, 1.0))
        self.assertEqual(
            samples["gatewaykit_upstream_request_duration_seconds_count"][(("upstream", "app"),)],
            2.0,
        )

    @defer.inlineCallbacks
    def test_token(self) -> support.Steps:
        """Without the token, or with a wrong one, calls are refused."""
        gateway = yield self.start()
        missing = yield gateway.call("/status", token=None)
        wrong = yield gateway.call("/status", token="not-" + TOKEN)
        self.assertEqual((missing.status, wrong.status), (401, 401))
        self.assertEqual(missing.header("www-authenticate"), 'Bearer realm="gatewaykit-admin"')

    @defer.inlineCallbacks
    def test_config_masked(self) -> support.Steps:
        """/config shows the file's settings, the token as ***."""
        gateway = yield self.start()
        response = yield gateway.call("/config")
        config = response.json()
        self.assertEqual(config["gateway"]["admin"]["token"], "***")
        self.assertNotIn(TOKEN.encode(), response.body)
        self.assertEqual(config["upstreams"]["app"]["name"], "app")

    @defer.inlineCallbacks
    def test_target_down(self) -> support.Steps:
        """A target that stops answering health checks shows unhealthy, in /status and /metrics."""
        gateway = yield self.start(
            health={
                "path": "/headers",
                "interval": "200ms",
                "timeout": "500ms",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
            }
        )
        down = f"127.0.0.1:{self.upstreams[1].port}"
        health = yield gateway.target_health()
        self.assertEqual(health[down], (True, False))
        yield self.upstreams[1].stop()
        yield support.wait_for(
            lambda: not gateway.service.gateway.upstreams["app"].targets[1].healthy,
            what="the health check to notice",
        )
        health = yield gateway.target_health()
        self.assertEqual(health[down], (False, False))
        response = yield gateway.call("/metrics")
        healthy = scrape(response.body)["gatewaykit_upstream_target_healthy"]
        self.assertEqual(healthy[(("target", down), ("upstream", "app"))], 0.0)

    @defer.inlineCallbacks
    def test_purge_without_cache(self) -> support.Steps:
        """/cache/purge answers 0 without a cache, 400 for a bad body."""
        gateway = yield self.start()
        purged = yield gateway.call("/cache/purge", "-X", "POST", "-d", '{"prefix": "/users"}')
        bad = yield gateway.call("/cache/purge", "-X", "POST", "-d", '{"prefix": 1}')
        self.assertEqual((purged.status, purged.json()), (200, {"purged": 0}))
        self.assertEqual(bad.status, 400)

    @defer.inlineCallbacks
    def test_reload(self) -> support.Steps:
        """/reload: 422 with PATH:LINE:COL problems for a broken file, 200 for a good one."""
        gateway = yield self.start()
        good = open(gateway.path, encoding="utf-8").read()
        gateway.write(good.replace("upstreams:", "upstreams:\n  broken: {targets: []}"))
        refused = yield gateway.call("/reload", "-X", "POST")
        self.assertEqual(refused.status, 422)
        self.assertIn(gateway.path + ":", refused.json()["problems"][0])
        gateway.write(good + "\n# changed\n")
        accepted = yield gateway.call("/reload", "-X", "POST")
        digest = hashlib.sha256((good + "\n# changed\n").encode()).hexdigest()
        self.assertEqual((accepted.status, accepted.json()), (200, {"ok": True, "digest": digest}))
