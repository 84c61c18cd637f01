"""
End-to-end tests of traffic splitting, mirroring and the request filter: a
real C{twistd gatewaykit} process between test clients and upstream
servers, all on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any, Sequence

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gatewaykit.demo import DemoApp
from tests.integration import support
from tests.test_request_filter import BROWSER, BROWSING

FILTERS = os.path.join(support.ROOT, "conf", "filters.yaml")
_ADMIN_LINE = re.compile(r"gatewaykit admin API on \S+:(\d+)")


def base_config(upstreams: dict[str, Sequence[int]], routes: list[dict]) -> dict:
    """A config with listener C{web}, the admin API, and C{upstreams} by name -> ports."""
    return {
        "gateway": {
            "node": support.NODE,
            "access_log": {"path": "off"},
            "admin": {"bind": "127.0.0.1:0"},
        },
        "listeners": {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
        "upstreams": {
            name: {
                "targets": [f"127.0.0.1:{port}" for port in ports],
                "timeouts": {"connect": "1s", "response": "10s"},
            }
            for name, ports in upstreams.items()
        },
        "routes": routes,
    }


@defer.inlineCallbacks
def metric_samples(test_case: Any, gateway: Any, name: str) -> Any:
    """The samples of metric C{name} from the gateway's C{/metrics}, by labels."""
    yield support.wait_for(lambda: _ADMIN_LINE.search(gateway.output), what="the admin API")
    port = _ADMIN_LINE.search(gateway.output).group(1)  # type: ignore[union-attr]
    response = yield support.curl(test_case, f"http://127.0.0.1:{port}/metrics")
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
        if sample.name == name
    }


@defer.inlineCallbacks
def reload(gateway: Any, config: dict) -> Any:
    """Write C{config} over the gateway's file and SIGHUP it; fires once it reloaded."""
    done = gateway.output.count("configuration reloaded")
    with open(gateway.config_path, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(config))
    gateway.signal("HUP")
    yield support.wait_for(
        lambda: gateway.output.count("configuration reloaded") > done, what="the reload"
    )


class SplitTests(support.GatewayTestCase):
    """split between two named upstreams."""

    def config(self, ports: tuple[int, int], weights: tuple[int, int], split_by: str = "") -> dict:
        users: dict[str, Any] = {
            "name": "users",
            "match": {"path_prefix": "/"},
            "split": [
                {"upstream": "users-v1", "weight": weights[0]},
                {"upstream": "users-v2", "weight": weights[1]},
            ],
        }
        if split_by:
            users["split_by"] = split_by
        return base_config({"users-v1": [ports[0]], "users-v2": [ports[1]]}, [users])

    @defer.inlineCallbacks
    def test_weights_metrics_and_reload(self) -> support.Steps:
        """90/10 over 2,000 requests, each side counted in metrics; a reload moves all to v2."""
        v1, v2 = support.start_named(self, "users-v1"), support.start_named(self, "users-v2")
        ports = (v1.port, v2.port)
        gateway = yield self.start_gateway(self.config(ports, (90, 10)))
        replies = yield support.send_requests(self, gateway.port(), [("/users", ())] * 2000)
        self.assertEqual({reply.status for reply in replies}, {200})
        served = Counter(reply.upstream for reply in replies)
        share = served["users-v2"] / 2000
        print(f"\nsplit 90/10 over 2000 requests: {dict(served)}")
        self.assertLessEqual(abs(share - 0.10), 0.025, served)
        counted = yield metric_samples(self, gateway, "gatewaykit_requests_total")
        by_upstream = {dict(labels)["upstream"]: value for labels, value in counted.items()}
        self.assertEqual(by_upstream, {name: float(n) for name, n in served.items()})
        yield reload(gateway, self.config(ports, (0, 100)))
        replies = yield support.send_requests(self, gateway.port(), [("/users", ())] * 200)
        self.assertEqual(Counter(reply.upstream for reply in replies), {"users-v2": 200})

    @defer.inlineCallbacks
    def test_cookie_keeps_clients(self) -> support.Steps:
        """split_by cookie:uid: 200 clients each stay on one side over 10 requests."""
        v1, v2 = support.start_named(self, "users-v1"), support.start_named(self, "users-v2")
        gateway = yield self.start_gateway(
            self.config((v1.port, v2.port), (50, 50), "cookie:uid")
        )
        clients = [f"user-{n}" for n in range(200)]
        requests = [("/users", [("Cookie", f"uid={uid}")]) for _ in range(10) for uid in clients]
        replies = yield support.send_requests(self, gateway.port(), requests)
        sides: dict[str, set[str]] = {}
        for (_, fields), reply in zip(requests, replies, strict=True):
            sides.setdefault(fields[0][1], set()).add(reply.upstream)
        self.assertEqual([uid for uid, seen in sides.items() if len(seen) != 1], [])
        on_v2 = sum(1 for seen in sides.values() if seen == {"users-v2"})
        self.assertTrue(60 <= on_v2 <= 140, on_v2)


class Recorder(Resource):
    """
    An upstream that records each request (method, URI, header fields,
    body) and answers C{200 NAME} after C{delay} seconds.
    """

    isLeaf = True

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__()
        self.name = name.encode("ascii")
        self.delay = delay
        self.seen: list[dict[str, Any]] = []

    def render(self, request: Any) -> Any:
        self.seen.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": sorted(
                    (name.lower(), value)
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ),
                "body": request.content.read(),
            }
        )
        if not self.delay:
            return self.name
        call = reactor.callLater(self.delay, self._answer, request)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET

    def _answer(self, request: Any) -> None:
        request.write(self.name)
        request.finish()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class MirrorTests(support.GatewayTestCase):
    """mirror to a shadow that is slow or down."""

    def config(self, app: int, shadow: int) -> dict:
        return base_config(
            {"app": [app], "shadow": [shadow]},
            [
                {"name": "plain", "match": {"path_prefix": "/plain"}, "upstream": "app"},
                {
                    "name": "mirrored",
                    "match": {"path_prefix": "/mirrored"},
                    "upstream": "app",
                    "mirror": {"upstream": "shadow"},
                },
            ],
        )

    @defer.inlineCallbacks
    def latency(self, gateway: Any, count: int = 3000) -> Any:
        """p50 and p99 (ms) of /plain and /mirrored, sent interleaved; every answer a 200."""
        paths = ["/plain/x", "/mirrored/x"] * (count // 2)
        replies = yield support.send_requests(
            self, gateway.port(), [(path, ()) for path in paths], concurrency=10
        )
        self.assertEqual({reply.status for reply in replies}, {200})
        times: dict[str, list[float]] = {"/plain/x": [], "/mirrored/x": []}
        for path, reply in zip(paths, replies, strict=True):
            times[path].append((reply.received - reply.sent) * 1000)
        return {
            path: (percentile(values, 0.5), percentile(values, 0.99))
            for path, values in times.items()
        }

    def assert_no_delay(self, measured: dict[str, tuple[float, float]]) -> None:
        (plain_p50, plain_p99), (mirrored_p50, mirrored_p99) = (
            measured["/plain/x"],
            measured["/mirrored/x"],
        )
        # Beyond noise: a slow shadow would add its 2 s to every mirrored request.
        self.assertLess(mirrored_p99, plain_p99 * 1.5 + 5, measured)
        self.assertLess(mirrored_p50, plain_p50 * 1.5 + 2, measured)

    @defer.inlineCallbacks
    def test_same_request(self) -> support.Steps:
        """The shadow gets the method, path, header fields and body the upstream got."""
        app, shadow = Recorder("app"), Recorder("shadow", delay=2.0)
        gateway = yield self.start_gateway(
            self.config(support.serve_resource(self, app), support.serve_resource(self, shadow))
        )
        body = json.dumps({"order": 7, "items": ["a", "b"]})
        response = yield support.curl(
            self,
            gateway.url("/mirrored/orders?src=e2e"),
            "-X", "POST",
            "-H", "Content-Type: application/json",
            "-H", "X-Custom: 1",
            "-H", "X-Custom: 2",
            "--data-binary", body,
        )  # fmt: skip
        self.assertEqual((response.status, response.body), (200, b"app"))
        yield support.wait_for(lambda: shadow.seen, what="the copy")
        self.assertEqual(shadow.seen, app.seen)
        self.assertEqual(app.seen[0]["method"], b"POST")
        self.assertEqual(app.seen[0]["uri"], b"/mirrored/orders?src=e2e")
        self.assertEqual(app.seen[0]["body"], body.encode())

    @defer.inlineCallbacks
    def test_slow_shadow(self) -> support.Steps:
        """A shadow taking 2 s adds no latency and no error."""
        app, shadow = Recorder("app"), Recorder("shadow", delay=2.0)
        gateway = yield self.start_gateway(
            self.config(support.serve_resource(self, app), support.serve_resource(self, shadow))
        )
        measured = yield self.latency(gateway)
        self.assert_no_delay(measured)
        results = yield metric_samples(self, gateway, "gatewaykit_mirror_requests_total")
        by_result = {dict(labels)["result"]: value for labels, value in results.items()}
        # 100 copies at most wait on the shadow at once; the rest are dropped.
        self.assertGreater(by_result.get("dropped", 0), 0, by_result)
        # At most 100 copies were ever waiting: all the shadow saw were
        # answered (on a slow machine, the run outlasts the 2 s) or wait.
        seen = len(shadow.seen)
        self.assertGreaterEqual(seen, 100)
        self.assertLessEqual(seen, by_result.get("ok", 0) + 100, by_result)
        # The copies' late answers are read and dropped.
        while by_result.get("ok", 0) < seen:
            yield support.sleep(0.2)
            results = yield metric_samples(self, gateway, "gatewaykit_mirror_requests_total")
            by_result = {dict(labels)["result"]: value for labels, value in results.items()}
        self.addCleanup(
            self._report, "slow shadow", measured, by_result, len(shadow.seen)
        )

    @defer.inlineCallbacks
    def test_shadow_down(self) -> support.Steps:
        """A shadow refusing connections adds no latency and no error."""
        app = Recorder("app")
        down = yield support.closed_port()
        gateway = yield self.start_gateway(self.config(support.serve_resource(self, app), down))
        measured = yield self.latency(gateway)
        self.assert_no_delay(measured)
        results = yield metric_samples(self, gateway, "gatewaykit_mirror_requests_total")
        by_result = {dict(labels)["result"]: value for labels, value in results.items()}
        self.assertEqual(by_result.get("ok", 0), 0)
        self.assertGreater(by_result.get("error", 0), 0, by_result)
        self.addCleanup(self._report, "shadow down", measured, by_result, 0)

    def _report(self, what: str, measured: Any, results: Any, received: int) -> None:
        line = ", ".join(
            f"{path} p50 {p50:.2f} ms p99 {p99:.2f} ms" for path, (p50, p99) in measured.items()
        )
        print(f"\nmirror, {what}: {line}; copies {results}; shadow received {received}")


class FilterTests(support.GatewayTestCase):
    """request_filter in front of a real upstream."""

    @defer.inlineCallbacks
    def test_each_rule_kind(self) -> support.Steps:
        """Each kind of condition refuses with its rule; refused requests never reach the upstream."""
        upstream = self.start_upstream()
        config = support.with_policies(
            support.proxy_config(upstream.port),
            {
                "waf": {
                    "type": "request_filter",
                    "rules": [
                        {"name": "path", "path_regex": r"(?i)/\.git(/|$)"},
                        {"name": "method", "methods": ["TRACE", "DELETE"]},
                        {"name": "agent", "headers": {"User-Agent": "~(?i)sqlmap|nikto"}},
                        {"name": "debug", "query": {"debug": "*"}, "status": 404},
                        {"name": "sqli", "query_regex": r"(?i)union\s+select"},
                        {"name": "local-admin", "path_regex": "^/admin", "client_ip": ["127.0.0.0/8"]},
                    ],
                }
            },
            all=["waf"],
        )
        gateway = yield self.start_gateway(config)
        cases = [
            ("path", 403, ["/%2e%67it/config"]),
            ("method", 403, ["-X", "DELETE", "/headers"]),
            ("agent", 403, ["-A", "sqlmap/1.7", "/headers"]),
            ("debug", 404, ["/headers?debug"]),
            ("sqli", 403, ["/headers?id=1%20UNION%20SELECT%20password"]),
            ("local-admin", 403, ["/admin/users"]),
        ]
        for rule, status, arguments in cases:
            *options, path = arguments
            response = yield support.curl(self, gateway.url(path), "--path-as-is", *options)
            self.assertEqual(response.status, status, rule)
            self.assertEqual(response.header("Content-Type"), "application/problem+json")
            problem = response.json()
            self.assertEqual(problem["type"], "urn:gatewaykit:error:filtered")
            self.assertEqual(problem["rule"], rule)
        self.assertEqual(upstream.requests, 0)
        allowed = yield support.curl(self, gateway.url("/headers?q=union+station"))
        self.assertEqual((allowed.status, upstream.requests), (200, 1))

    @defer.inlineCallbacks
    def test_demo_browsing(self) -> support.Steps:
        """The starter rules on the demo: a browsing session passes, probes do not."""
        app = CountingDemoApp("demo-a")
        port = support.serve_resource(self, app)
        with open(os.path.join(support.ROOT, "conf", "demo.yaml"), encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["gateway"].pop("admin")
        config["gateway"]["access_log"] = {"path": "off"}
        config["listeners"]["web"]["bind"] = "127.0.0.1:0"
        config["upstreams"]["demo"]["targets"] = [f"127.0.0.1:{port}"]
        for route in config["routes"]:
            if "static" in route:
                route["static"]["root"] = os.path.join(support.ROOT, "conf", "public")
            route["policies"] = ["waf"]
        config["policies"] = {"waf": {"type": "request_filter", "rules_file": FILTERS}}
        gateway = yield self.start_gateway(config)
        fields = [tuple(field.split(": ", 1)) for field in BROWSER]
        session = [(path, fields) for path in BROWSING]
        replies = yield support.send_requests(self, gateway.port(), session, concurrency=4)
        statuses = {path: reply.status for (path, _), reply in zip(session, replies, strict=True)}
        self.assertEqual([path for path, status in statuses.items() if status == 403], [])
        self.assertEqual(statuses["/"], 200)
        self.assertEqual(statuses["/old/page"], 301)
        api = [path for path in BROWSING if path.startswith("/api/")]
        self.assertEqual({statuses[path] for path in api}, {200})
        self.assertEqual(app.requests, len(api))
        posted = yield support.curl(
            self,
            gateway.url("/api/orders"),
            "-H", "Content-Type: application/json",
            "--data-binary", '{"name": "O\'Reilly", "note": "select the union"}',
        )  # fmt: skip
        self.assertEqual(posted.status, 200)
        for probe in ("/.env", "/wp-login.php", "/api/items?id=1%27%20or%201=1--"):
            refused = yield support.curl(self, gateway.url(probe))
            self.assertEqual(refused.status, 403, probe)
        self.assertEqual(app.requests, len(api) + 1)


class CountingDemoApp(DemoApp):
    """The demo upstream, counting what it answers."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.requests = 0

    def render(self, request: Any) -> bytes:
        self.requests += 1
        return super().render(request)
