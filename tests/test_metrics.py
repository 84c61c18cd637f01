"""
Tests for L{gatewaykit.admin.metrics}: the per-request families, the
families read at scrape time, and merging the expositions of workers.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.admin.metrics import FAMILIES, merge_metrics
from tests.test_admin_state import CONFIG, AdminWorld, FakeCache


def scrape(text: bytes) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted label pairs: value}, from an exposition."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def family_labels(text: bytes) -> dict[str, set[str]]:
    """Family name as scraped (counters with C{_total}) -> the label names used."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = found.setdefault(name, set())
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
    return found


def requests(world: AdminWorld) -> dict[tuple, float]:
    return scrape(world.metrics.text()).get("gatewaykit_requests_total", {})


def labels(listener: str, route: str, upstream: str, code: str) -> tuple:
    return tuple(
        sorted({"listener": listener, "route": route, "upstream": upstream, "code": code}.items())
    )


class RequestMetricsTests(SynchronousTestCase):
    """L{Metrics.request_finished} and L{Metrics.upstream_response}."""

    def setUp(self) -> None:
        self.world = AdminWorld()

    def test_local_answer(self) -> None:
        """A route answering itself counts with an empty upstream."""
        self.world.get("/ping")
        self.assertEqual(requests(self.world), {labels("web", "ping", "", "200"): 1.0})

    def test_no_route(self) -> None:
        """A request no route matches counts with an empty route."""
        self.world.get("/nowhere")
        self.assertEqual(requests(self.world), {labels("web", "", "", "404"): 1.0})

    def test_malformed(self) -> None:
        """A request refused before routing counts with an empty route."""
        protocol, _ = self.world.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        self.assertEqual(requests(self.world), {labels("web", "", "", "400"): 1.0})

    def test_proxied(self) -> None:
        """A proxied request counts with its upstream's name."""
        self.world.proxy("/api/x", status=201)
        self.assertEqual(requests(self.world), {labels("web", "api", "app", "201"): 1.0})

    def test_refused_before_upstream(self) -> None:
        """A proxy route answering without a target (503) has an empty upstream."""
        for target in self.world.gateway.upstreams["app"].targets:
            target.healthy = False
        self.world.get("/api/x")
        self.assertEqual(requests(self.world), {labels("web", "api", "", "503"): 1.0})

    def test_durations(self) -> None:
        """Request and upstream durations are observed in their histograms."""
        self.world.proxy("/api/x", seconds=0.3)
        samples = scrape(self.world.metrics.text())
        route = (("route", "api"),)
        self.assertEqual(samples["gatewaykit_request_duration_seconds_count"][route], 1.0)
        self.assertAlmostEqual(samples["gatewaykit_request_duration_seconds_sum"][route], 0.3)
        upstream = (("upstream", "app"),)
        self.assertEqual(
            samples["gatewaykit_upstream_request_duration_seconds_count"][upstream], 1.0
        )
        self.assertAlmostEqual(
            samples["gatewaykit_upstream_request_duration_seconds_sum"][upstream], 0.3
        )
        bucket = (("le", "0.5"), ("route", "api"))
        self.assertEqual(samples["gatewaykit_request_duration_seconds_bucket"][bucket], 1.0)

    def test_children_cached(self) -> None:
        """Labels are resolved once per label set, not per request."""
        calls: list[tuple] = []
        counter = self.world.metrics.requests
        original = counter.labels

        def counting(*values: Any) -> Any:
            calls.append(values)
            return original(*values)

        self.patch(counter, "labels", counting)
        for _ in range(3):
            self.world.get("/ping")
        self.assertEqual(calls, [("web", "ping", "", "200")])

    def test_route_moved_by_reload(self) -> None:
        """After a reload points a route elsewhere, its requests count there."""
        self.world.proxy("/api/x")
        moved = CONFIG.replace("upstream: app", "upstream: pg")
        self.world.config = AdminWorld(moved).config
        self.world.rebuild()
        self.world.proxy("/api/x")
        self.assertEqual(
            requests(self.world),
            {labels("web", "api", "app", "200"): 1.0, labels("web", "api", "pg", "200"): 1.0},
        )

    def test_by_route(self) -> None:
        """L{Metrics.requests_by_route} sums over listeners and upstreams."""
        self.world.get("/ping")
        self.world.get("/nowhere")
        self.assertEqual(
            self.world.metrics.requests_by_route(), {"ping": {"200": 1.0}, "": {"404": 1.0}}
        )


class LiveFamiliesTests(SynchronousTestCase):
    """The families read from live state when scraped."""

    def setUp(self) -> None:
        self.world = AdminWorld()
        self.state = self.world.state()

    def scrape(self) -> dict[str, dict[tuple, float]]:
        return scrape(self.successResultOf(self.state.metrics_text()))

    def test_every_family(self) -> None:
        """Every family of SPEC section 10 is exposed, with its labels."""
        self.world.get("/ping")
        self.world.proxy("/api/x")
        self.world.gateway.policies["cache"] = FakeCache(hit=1)
        text = self.successResultOf(self.state.metrics_text())
        found = family_labels(text)
        for name, names in FAMILIES.items():
            self.assertIn(name, found)
            self.assertEqual(found[name], set(names), name)

    def test_health(self) -> None:
        """healthy follows active checks; ejection is its own family."""
        first, second = self.world.gateway.upstreams["app"].targets
        first.healthy = False
        second.ejected = True
        samples = self.scrape()
        healthy = samples["gatewaykit_upstream_target_healthy"]
        ejected = samples["gatewaykit_upstream_target_ejected"]
        one = (("target", "10.0.0.1:80"), ("upstream", "app"))
        two = (("target", "10.0.0.2:80"), ("upstream", "app"))
        self.assertEqual((healthy[one], healthy[two]), (0.0, 1.0))
        self.assertEqual((ejected[one], ejected[two]), (0.0, 1.0))

    def test_in_flight_and_connections(self) -> None:
        """In-flight requests per target and open connections per listener."""
        self.world.gateway.upstreams["app"].targets[0].in_flight = 4
        self.world.connect()
        samples = self.scrape()
        target = (("target", "10.0.0.1:80"), ("upstream", "app"))
        self.assertEqual(samples["gatewaykit_upstream_in_flight"][target], 4.0)
        self.assertEqual(
            samples["gatewaykit_connections_active"][(("listener", "web"),)], 1.0
        )

    def test_rate_limit_decisions(self) -> None:
        """Decisions per policy and result."""
        self.world.get("/limited")
        self.world.get("/limited")
        decisions = self.scrape()["gatewaykit_ratelimit_decisions_total"]
        self.assertEqual(
            decisions,
            {
                (("policy", "per-ip"), ("result", "allowed")): 1.0,
                (("policy", "per-ip"), ("result", "limited")): 1.0,
                (("policy", "per-ip"), ("result", "degraded")): 0.0,
            },
        )

    def test_tcp_bytes(self) -> None:
        """Bytes relayed by a tcp listener, each direction."""
        factory = self.world.factories["db"]
        factory.bytes_in, factory.bytes_out = 100, 2500
        tcp = self.scrape()["gatewaykit_tcp_bytes_total"]
        self.assertEqual(tcp[(("direction", "in"), ("listener", "db"))], 100.0)
        self.assertEqual(tcp[(("direction", "out"), ("listener", "db"))], 2500.0)

    def test_cache(self) -> None:
        """Cache lookups by result and bytes held, from cache policies."""
        self.world.gateway.policies["cache"] = FakeCache(hit=3, miss=1, held=4096)
        samples = self.scrape()
        self.assertEqual(
            samples["gatewaykit_cache_lookups_total"],
            {(("result", "hit"),): 3.0, (("result", "miss"),): 1.0},
        )
        self.assertEqual(samples["gatewaykit_cache_bytes"], {(): 4096.0})

    def test_reloads(self) -> None:
        """Reloads by result, from the service's counts."""
        self.world.reloads = {"ok": 3, "failed": 1}
        self.assertEqual(
            self.scrape()["gatewaykit_config_reloads_total"],
            {(("result", "failed"),): 1.0, (("result", "ok"),): 3.0},
        )

    def test_own_registry(self) -> None:
        """Nothing is registered in prometheus-client's global registry."""
        self.world.get("/ping")
        self.assertNotIn(b"gatewaykit_", generate_latest(REGISTRY))

    def test_no_created_series(self) -> None:
        """The C{_created} timestamps are left out of the exposition."""
        self.world.get("/ping")
        self.assertNotIn(b"_created", self.successResultOf(self.state.metrics_text()))


class MergeMetricsTests(SynchronousTestCase):
    """L{merge_metrics}: one exposition from several workers'."""

    def setUp(self) -> None:
        self.one, self.two = AdminWorld(), AdminWorld()
        self.one.state()
        self.two.state()

    def test_counters_and_histograms_add(self) -> None:
        """Counters, histogram buckets, sums and counts add up."""
        self.one.get("/ping")
        self.two.get("/ping")
        self.two.get("/ping")
        merged = scrape(merge_metrics([self.one.metrics.text(), self.two.metrics.text()]))
        self.assertEqual(
            merged["gatewaykit_requests_total"], {labels("web", "ping", "", "200"): 3.0}
        )
        self.assertEqual(
            merged["gatewaykit_request_duration_seconds_count"][(("route", "ping"),)], 3.0
        )

    def test_health_worst_view(self) -> None:
        """A target is unhealthy or ejected if any worker sees it so."""
        self.one.gateway.upstreams["app"].targets[0].healthy = False
        self.two.gateway.upstreams["app"].targets[0].ejected = True
        merged = scrape(merge_metrics([self.one.metrics.text(), self.two.metrics.text()]))
        target = (("target", "10.0.0.1:80"), ("upstream", "app"))
        self.assertEqual(merged["gatewaykit_upstream_target_healthy"][target], 0.0)
        self.assertEqual(merged["gatewaykit_upstream_target_ejected"][target], 1.0)

    def test_reloads_once(self) -> None:
        """Reload counts, which every worker reports alike, are not added."""
        self.one.reloads = self.two.reloads = {"ok": 2, "failed": 0}
        merged = scrape(merge_metrics([self.one.metrics.text(), self.two.metrics.text()]))
        self.assertEqual(
            merged["gatewaykit_config_reloads_total"][(("result", "ok"),)], 2.0
        )
