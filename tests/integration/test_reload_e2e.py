"""
Reloading under load: 20 SIGHUP reloads that change routes and upstreams
while HTTP requests flow and 50 TCP tunnels stay open.
"""

from __future__ import annotations

import time

import yaml
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.python import log

from tests.integration import support

RELOADS = 20
TUNNELS = 50


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class TunnelClient(protocol.Protocol):
    """A tunnel kept open; it checks the echo still comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class ReloadUnderLoadTests(support.GatewayTestCase):
    """SPEC section 7 through a real twistd gateway."""

    timeout = 120

    def config(self, version: int, upstream_port: int, echo_port: int) -> dict:
        config = support.proxy_config(upstream_port)
        config["listeners"]["tunnel"] = {
            "protocol": "tcp",
            "bind": "127.0.0.1:0",
            "upstream": "echo",
        }
        config["upstreams"]["echo"] = {"targets": [f"127.0.0.1:{echo_port}"]}
        config["routes"].insert(
            0, {"name": f"v{version}", "match": {"path": f"/v{version}"}, "respond": {"body": f"v{version}"}}
        )
        return config

    def write(self, gateway: support.GatewayProcess, text: str) -> None:
        with open(gateway.config_path, "w") as f:
            f.write(text)

    @defer.inlineCallbacks
    def test_reloads_drop_nothing(self) -> support.Steps:
        """20 reloads under load: no failed request, no dropped tunnel, new routes live fast."""
        upstreams = [self.start_upstream(), self.start_upstream()]
        echo = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        self.addCleanup(echo.stopListening)
        echo_port = echo.getHost().port
        gateway = yield self.start_gateway(
            self.config(0, upstreams[0].port, echo_port), listeners=("web", "tunnel")
        )
        tunnels = []
        for _ in range(TUNNELS):
            client = TunnelClient()
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port("tunnel"))
            yield connectProtocol(endpoint, client)
            self.addCleanup(client.transport.loseConnection)
            tunnels.append(client)
        load = support.Load(self, gateway.port(), "/headers", clients=8).start()
        live_after = []
        for version in range(1, RELOADS + 1):
            config = self.config(version, upstreams[version % 2].port, echo_port)
            self.write(gateway, yaml.safe_dump(config))
            reloaded_at = time.monotonic()
            gateway.signal("HUP")
            while True:
                response = yield support.curl(self, gateway.url(f"/v{version}"))
                if response.status == 200 and response.body == f"v{version}".encode():
                    break
                yield support.sleep(0.02)
            live_after.append(time.monotonic() - reloaded_at)
            for client in tunnels:
                client.transport.write(b"%d\n" % version)
        # An invalid file: nothing changes, everything keeps serving.
        self.write(gateway, "routes: [this is not valid\n")
        gateway.signal("HUP")
        yield support.wait_for(
            lambda: "configuration not reloaded" in gateway.output, what="the refused reload"
        )
        still = yield support.curl(self, gateway.url(f"/v{RELOADS}"))
        yield support.sleep(0.5)
        yield load.stop()
        expected = b"".join(b"%d\n" % v for v in range(1, RELOADS + 1))
        yield support.wait_for(
            lambda: all(client.received == expected for client in tunnels),
            what="every tunnel's echo",
        )
        answers = load.all()
        statuses = {}
        for answer in answers:
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
        log.msg(
            f"reload under load: {len(answers)} requests {statuses}; new routes live after"
            f" max {max(live_after):.3f}s (median {sorted(live_after)[len(live_after) // 2]:.3f}s)"
        )
        self.assertEqual(statuses, {200: len(answers)})
        self.assertGreater(len(answers), 100)
        self.assertEqual([client.lost for client in tunnels], [False] * TUNNELS)
        self.assertLess(max(live_after), 1.0)
        self.assertEqual((still.status, still.body), (200, f"v{RELOADS}".encode()))
        self.assertEqual(gateway.output.count("configuration reloaded"), RELOADS)
        # Both upstreams served, as the reloads switched between them.
        self.assertTrue(all(upstream.requests > 0 for upstream in upstreams))
