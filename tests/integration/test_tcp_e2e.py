"""
End-to-end tests of C{tcp} listeners: a real gateway process tunnelling to
real C{redis-server}s and to small TCP servers in the test process.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.integration import support
from tests.integration.support import RedisServer, connect_resp

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
REPLY_TIMEOUT = 20.0


def tcp_config(ports: list[int], **upstream: Any) -> dict:
    """A gateway with tcp listener C{redis} in front of targets on C{ports}."""
    return {
        "gateway": {"node": support.NODE, "access_log": {"path": "off"}, "drain_timeout": "2s"},
        "listeners": {"redis": {"protocol": "tcp", "bind": "127.0.0.1:0", "upstream": "redis"}},
        "upstreams": {
            "redis": {
                "targets": [f"127.0.0.1:{port}" for port in ports],
                "timeouts": {"connect": "1s"},
                **upstream,
            }
        },
    }


# -- servers -----------------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class EchoAtEnd(Protocol):
    """Reads until the client's end of stream, then sends it all back and closes."""

    transport: Any

    def __init__(self) -> None:
        self._received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._received.append(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"".join(self._received))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class BannerThenListen(Protocol):
    """Sends a banner and shuts down writing at once, then reads to the end."""

    transport: Any

    def __init__(self, done: support.Event) -> None:
        self._done = done
        self._received: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(b"banner")
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self._received.append(data)

    def readConnectionLost(self) -> None:
        self._done.fire(b"".join(self._received))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class HalfCloseClient(Protocol):
    """Collects what arrives; C{eof} fires with it on the peer's end of stream."""

    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.eof = support.Event()
        self.lost = support.Event()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.eof.fire(self.data)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.fire()

    def close(self) -> defer.Deferred:
        if not self.lost.happened:
            self.transport.abortConnection()
        return self.lost.wait()


def listen(test_case: Any, build: Any) -> int:
    """A server in this process building protocols with C{build()}; its port."""
    factory: Any = Factory.forProtocol(build)
    port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test_case.addCleanup(port.stopListening)
    return port.getHost().port


# -- the tests -----------------------------------------------------------------------


class RedisTunnelTests(support.GatewayTestCase):
    """A tcp listener in front of two redis-servers."""

    timeout = 120

    @defer.inlineCallbacks
    def start_redis_gateway(self, **upstream: Any) -> support.Steps:
        """Two redis-servers and a gateway in front of them; fires with all three."""
        first = yield RedisServer(self).start()
        second = yield RedisServer(self).start()
        gateway = yield self.start_gateway(
            tcp_config([first.port, second.port], **upstream), listeners=("redis",)
        )
        return gateway, first, second

    @defer.inlineCallbacks
    def test_ping_set_get(self) -> support.Steps:
        """PING, SET and GET work through the tunnel."""
        gateway, _, _ = yield self.start_redis_gateway()
        client = yield connect_resp(self, gateway.port("redis"))
        replies = yield defer.gatherResults(
            [client.command("PING"), client.command("SET", "k", "v"), client.command("GET", "k")]
        )
        self.assertEqual(replies, ["PONG", "OK", b"v"])

    @defer.inlineCallbacks
    def test_large_value(self) -> support.Steps:
        """A 10 MiB value goes in and comes back identical."""
        gateway, _, _ = yield self.start_redis_gateway()
        client = yield connect_resp(self, gateway.port("redis"))
        value = os.urandom(10 * support.MiB)
        stored = yield client.command("SET", "big", value)
        fetched = yield client.command("GET", "big")
        self.assertEqual(stored, "OK")
        self.assertTrue(fetched == value, "the value came back different")

    @defer.inlineCallbacks
    def test_redis_cli(self) -> support.Steps:
        """redis-cli works through the tunnel (as in docs/tcp-proxying.md)."""
        gateway, _, _ = yield self.start_redis_gateway()
        out, err, code = yield getProcessOutputAndValue(
            REDIS_CLI, ["-h", "127.0.0.1", "-p", str(gateway.port("redis")), "PING"], env={}
        )
        self.assertEqual((out.strip(), code), (b"PONG", 0), err)

    @defer.inlineCallbacks
    def test_dead_backend_failover(self) -> support.Steps:
        """With one backend killed, every new connection still works."""
        gateway, first, _ = yield self.start_redis_gateway()
        yield first.kill()
        for _ in range(6):
            client = yield connect_resp(self, gateway.port("redis"))
            pong = yield client.command("PING")
            self.assertEqual(pong, "PONG")
            yield client.close()
        self.assertIn(f"could not connect to 127.0.0.1:{first.port}", gateway.output)

    @defer.inlineCallbacks
    def test_health_check_avoids_dead_backend(self) -> support.Steps:
        """Once the tcp health check marks a backend down, no tunnel tries it."""
        gateway, first, _ = yield self.start_redis_gateway(
            health={"tcp": True, "interval": "1s", "timeout": "500ms", "unhealthy_threshold": 1}
        )
        yield first.kill()
        dead = f"127.0.0.1:{first.port}"
        yield support.wait_for(
            lambda: f"target {dead} is now unhealthy" in gateway.output,
            timeout=15,
            what="the health check to mark the killed backend unhealthy",
        )
        seen = len(gateway.output)
        for _ in range(6):
            client = yield connect_resp(self, gateway.port("redis"))
            pong = yield client.command("PING")
            self.assertEqual(pong, "PONG")
            yield client.close()
        self.assertNotIn(f"could not connect to {dead}", gateway.output[seen:])

    @defer.inlineCallbacks
    def test_shutdown_drains_tunnel(self) -> support.Steps:
        """On SIGTERM an open tunnel keeps working until drain_timeout, then closes; exit 0."""
        gateway, _, _ = yield self.start_redis_gateway()
        client = yield connect_resp(self, gateway.port("redis"))
        # A round trip first: a connection still in the kernel's accept queue
        # is not yet the gateway's to drain.
        first = yield client.command("PING")
        self.assertEqual(first, "PONG")
        exited = gateway.stop()
        yield support.wait_for(
            lambda: "draining 1 connections" in gateway.output, what="the drain to start"
        )
        pong = yield client.command("PING")
        yield client.closed.wait().addTimeout(REPLY_TIMEOUT, reactor)
        code = yield exited
        self.assertEqual((pong, code), ("PONG", 0))


class HalfCloseTunnelTests(support.GatewayTestCase):
    """The end of one direction passes through; the other stays open."""

    timeout = 120

    @defer.inlineCallbacks
    def connect_client(self, upstream_port: int) -> support.Steps:
        gateway = yield self.start_gateway(tcp_config([upstream_port]), listeners=("redis",))
        client = HalfCloseClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port("redis"), timeout=5)
        yield connectProtocol(endpoint, client)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_client_shuts_down_writing(self) -> support.Steps:
        """A client that shut down writing still gets the echo, then the end of stream."""
        client = yield self.connect_client(listen(self, EchoAtEnd))
        message = b"hello through the tunnel " * 4000
        client.transport.write(message)
        client.transport.loseWriteConnection()
        received = yield client.eof.wait().addTimeout(REPLY_TIMEOUT, reactor)
        self.assertTrue(received == message, f"echo differs: {len(received)} bytes")

    @defer.inlineCallbacks
    def test_upstream_shuts_down_writing(self) -> support.Steps:
        """After the upstream's end of stream, the client can still send to it."""
        done = support.Event()
        client = yield self.connect_client(listen(self, lambda: BannerThenListen(done)))
        banner = yield client.eof.wait().addTimeout(REPLY_TIMEOUT, reactor)
        client.transport.write(b"still talking")
        client.transport.loseWriteConnection()
        heard = yield done.wait().addTimeout(REPLY_TIMEOUT, reactor)
        self.assertEqual((banner, heard), (b"banner", b"still talking"))
