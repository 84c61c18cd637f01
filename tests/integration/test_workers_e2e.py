"""
End-to-end tests of C{--workers N}: worker processes sharing the listening
sockets under a supervising parent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import yaml
from twisted.internet import defer
from twisted.python import log

from tests.integration import support


def worker_pids(gateway: support.GatewayProcess) -> list[int]:
    """The pids of the gateway's live worker processes (its children)."""
    children = f"/proc/{gateway.pid}/task/{gateway.pid}/children"
    with open(children) as f:
        return [int(pid) for pid in f.read().split()]


def connection_owners(port: int) -> list[int]:
    """The pid owning each established connection accepted on C{port}."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(pid) for pid in re.findall(r"pid=(\d+)", out)]


class WorkersTests(support.GatewayTestCase):
    """A supervisor and two workers."""

    timeout = 120

    @defer.inlineCallbacks
    def start_workers(self, **config) -> support.Steps:
        upstream = self.start_upstream()
        gateway = yield self.start_gateway(
            support.proxy_config(upstream.port, **config), arguments=["--workers", "2"]
        )
        yield support.wait_for(
            lambda: gateway.output.count(" serving") >= 2, what="two workers serving"
        )
        return gateway, upstream

    @defer.inlineCallbacks
    def test_workers_share_connections(self) -> support.Steps:
        """New connections are spread over both workers (SO_REUSEPORT)."""
        gateway, _ = yield self.start_workers()
        for _ in range(20):
            yield support.connect_raw(self, gateway.port())
        yield support.wait_for(
            lambda: len(connection_owners(gateway.port())) == 20, what="20 connections accepted"
        )
        owners = connection_owners(gateway.port())
        counts = {pid: owners.count(pid) for pid in set(owners)}
        log.msg(f"workers: 20 connections spread as {counts}")
        self.assertEqual(set(owners), set(worker_pids(gateway)))
        # The workers run on gatewaykit's reactor, as a single process does.
        self.assertEqual(gateway.output.count("serving (reactor GatewayReactor)"), 2)
        # The kernel hashes each connection to a worker: 20 land 3:17 or
        # more even with probability above 99.9%.
        self.assertTrue(all(count >= 3 for count in counts.values()), counts)

    @defer.inlineCallbacks
    def test_workers_follow_twistd_reactor(self) -> support.Steps:
        """With twistd --reactor epoll, the supervisor and the workers run on Twisted's epoll."""
        upstream = self.start_upstream()
        gateway = yield self.start_gateway(
            support.proxy_config(upstream.port),
            arguments=["--workers", "2"],
            twistd_arguments=["--reactor", "epoll"],
        )
        yield support.wait_for(
            lambda: gateway.output.count(" serving") >= 2, what="two workers serving"
        )
        self.assertIn("reactor class: twisted.internet.epollreactor.EPollReactor", gateway.output)
        self.assertEqual(gateway.output.count("serving (reactor EPollReactor)"), 2)
        response = yield support.curl(self, gateway.url("/headers"))
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_dead_worker_restarted(self) -> support.Steps:
        """A worker killed is replaced, and requests keep being served meanwhile."""
        gateway, _ = yield self.start_workers()
        victim = worker_pids(gateway)[0]
        os.kill(victim, signal.SIGKILL)
        statuses = []
        for _ in range(20):
            response = yield support.curl(self, gateway.url("/headers"))
            statuses.append(response.status)
        yield support.wait_for(
            lambda: len(worker_pids(gateway)) == 2 and victim not in worker_pids(gateway),
            what="the worker restarted",
        )
        self.assertEqual(statuses, [200] * 20)
        self.assertIn("restarting", gateway.output)

    @defer.inlineCallbacks
    def test_reload_reaches_every_worker(self) -> support.Steps:
        """SIGHUP reloads every worker: a new route answers on every connection."""
        gateway, upstream = yield self.start_workers()
        config = support.proxy_config(upstream.port)
        config["routes"].insert(0, {"name": "new", "match": {"path": "/new"}, "respond": {"body": "new"}})
        with open(gateway.config_path, "w") as f:
            yaml.safe_dump(config, f)
        gateway.signal("HUP")
        yield support.wait_for(
            lambda: "configuration reloaded by 2 workers" in gateway.output, what="the reload"
        )
        bodies = set()
        for _ in range(10):
            response = yield support.curl(self, gateway.url("/new"))
            bodies.add(response.body)
        self.assertEqual(bodies, {b"new"})

    @defer.inlineCallbacks
    def test_sigterm_drains_workers(self) -> support.Steps:
        """SIGTERM: workers finish the request in flight and everything exits 0."""
        gateway, upstream = yield self.start_workers()
        slow = support.curl(self, gateway.url("/slow?ms=1000"))
        yield support.wait_for(lambda: upstream.requests == 1, what="the request upstream")
        code = yield gateway.stop()
        response = yield slow
        self.assertEqual((response.status, code), (200, 0))
