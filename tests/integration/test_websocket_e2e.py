"""
End-to-end tests of WebSocket proxying: a real C{twistd gatewaykit} between
autobahn WebSocket clients and an autobahn WebSocket server, over ws and wss.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Optional

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from tests.fixtures.tls import Authority, pem, write_pair
from tests.integration import support

TOKEN = "ws-e2e-admin-token-0123456789abcdef"
KEY = "ws-e2e-key-0123456789"
ADMIN_LINE = re.compile(r"gatewaykit admin API on 127\.0\.0\.1:(\d+)")


# -- the upstream WebSocket server -------------------------------------------------


class Upstream(WebSocketServerFactory):
    """
    The WebSocket server behind the gateway: echoes every message, and on
    command closes with a code or floods a client.

    @ivar opened: handshakes it accepted.
    @ivar frames: data frames it received (to see fragmentation kept).
    @ivar closes: C{(code, reason)} of each close a client started.
    """

    def __init__(self) -> None:
        super().__init__()
        self.protocol = UpstreamSide
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        self.opened = 0
        self.frames = 0
        self.closes: list[tuple[Optional[int], str]] = []
        self.closed = support.Event()
        self.flooding: Optional[Flood] = None
        self._port: Any = None

    @property
    def listening_port(self) -> int:
        return self._port.getHost().port

    def listen(self, test_case: Any) -> Upstream:
        self._port = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        test_case.addCleanup(self._port.stopListening)
        return self


class UpstreamSide(WebSocketServerProtocol):
    factory: Upstream

    def onOpen(self) -> None:
        self.factory.opened += 1

    def onMessageFrameBegin(self, length: int) -> None:
        self.factory.frames += 1
        super().onMessageFrameBegin(length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload.startswith(b"close "):
            code = int(payload.split()[1])
            # sendCloseFrame, unlike sendClose, also sends the codes only
            # endpoints may use (1001, 1008, 1011).
            self.sendCloseFrame(code, b"server says " + str(code).encode(), isReply=False)
        elif payload == b"flood":
            self.factory.flooding = Flood(self)
        else:
            self.sendMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: Optional[int], reason: str) -> None:
        if code is not None:
            self.factory.closes.append((code, reason))
        self.factory.closed.fire()


@implementer(IPushProducer)
class Flood:
    """Sends 256 KiB binary messages while the connection takes them."""

    CHUNK = 256 * support.KiB

    def __init__(self, side: UpstreamSide) -> None:
        self.side = side
        self.sent = 0
        self.paused = False
        self.stopped = False
        side.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        # Payload bytes only; each send is one frame of CHUNK bytes.
        while not self.paused and not self.stopped and self.sent < 256 * support.MiB:
            self.side.sendMessage(b"\x00" * self.CHUNK, isBinary=True)
            self.sent += self.CHUNK

    def stopProducing(self) -> None:
        self.stopped = True


# -- clients -------------------------------------------------------------------


class Client(WebSocketClientProtocol):
    """A client that records what it gets and lets a test wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = support.Event()
        self.closed = support.Event()
        self.messages: list[tuple[bytes, bool]] = []
        self.received = 0  # payload bytes
        # Whether to keep binary payloads over 1 KiB (a flood is only counted).
        self.keep_binary = False
        self.pongs: list[bytes] = []
        self._waiting: Optional[tuple[int, defer.Deferred]] = None

    @property
    def status(self) -> Optional[int]:
        """The status of the handshake's answer, once it came."""
        line = getattr(self, "http_status_line", None)
        return int(line.split()[1]) if line else None

    def onOpen(self) -> None:
        self.opened.fire(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received += len(payload)
        if self.keep_binary or len(payload) < support.KiB or not isBinary:
            self.messages.append((payload, isBinary))
        else:
            self.messages.append((b"", isBinary))
        self._check()

    def onPong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: str) -> None:
        self.opened.fire(None)
        self.closed.fire((wasClean, code, reason))

    def next_message(self) -> defer.Deferred:
        """Fires with the next message C{(payload, isBinary)} to arrive."""
        return self.messages_until(len(self.messages) + 1)

    def messages_until(self, count: int) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        self._waiting = (count, waiter)
        self._check()
        waiter.addTimeout(30, reactor)
        return waiter

    def _check(self) -> None:
        if self._waiting is not None and len(self.messages) >= self._waiting[0]:
            count, waiter = self._waiting
            self._waiting = None
            waiter.callback(self.messages[count - 1])


@defer.inlineCallbacks
def open_client(
    test_case: Any,
    port: int,
    path: str = "/ws",
    headers: Optional[dict] = None,
    tls: Optional[Any] = None,
    host: str = "127.0.0.1",
) -> Any:
    """
    A L{Client} connected through the gateway on C{port}; fires with it once
    the handshake ended (its C{http_response} tells how).
    """
    scheme = "wss" if tls is not None else "ws"
    factory = WebSocketClientFactory(f"{scheme}://{host}:{port}{path}", headers=headers or {})
    factory.protocol = Client
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    client = yield endpoint.connect(factory)
    test_case.addCleanup(_drop, client)
    yield client.opened.wait()
    return client


def _drop(client: Client) -> Any:
    if client.transport is not None and client.state != WebSocketProtocol.STATE_CLOSED:
        client.transport.abortConnection()
    return client.closed.wait()


def ws_config(upstream_port: int, **gateway: Any) -> dict:
    """A gateway whose route C{/ws} is a WebSocket route to C{upstream_port}."""
    config = support.proxy_config(upstream_port)
    config["gateway"].update(gateway)
    config["routes"].insert(
        0,
        {
            "name": "ws",
            "match": {"path_prefix": "/ws"},
            "upstream": "app",
            "websocket": {"max_tunnels": 2000, "idle_timeout": "1m"},
        },
    )
    return config


class WebSocketTestCase(support.GatewayTestCase):
    @defer.inlineCallbacks
    def start(self, config: Optional[dict] = None, listeners: tuple = ("web",)) -> Any:
        self.upstream = Upstream().listen(self)
        config = config or ws_config(self.upstream.listening_port)
        self.gateway = yield self.start_gateway(config, listeners)
        self.port = self.gateway.port(listeners[0])

    def connect(self, **options: Any) -> defer.Deferred:
        return open_client(self, self.port, **options)


class MessageTests(WebSocketTestCase):
    """Messages of every kind, through one tunnel."""

    @defer.inlineCallbacks
    def test_text_and_binary(self) -> Any:
        """Text and binary messages come back as they were sent."""
        yield self.start()
        client = yield self.connect()
        self.assertEqual(client.status, 101)
        client.sendMessage("héllo".encode(), isBinary=False)
        self.assertEqual((yield client.next_message()), ("héllo".encode(), False))
        binary = bytes(range(256))
        client.sendMessage(binary, isBinary=True)
        self.assertEqual((yield client.next_message()), (binary, True))

    @defer.inlineCallbacks
    def test_sixteen_mib_message(self) -> Any:
        """A 16 MiB message crosses both ways whole."""
        yield self.start()
        client = yield self.connect()
        payload = os.urandom(16 * support.MiB)
        client.keep_binary = True
        client.sendMessage(payload, isBinary=True)
        echoed, binary = yield client.messages_until(1)
        self.assertEqual((len(echoed), binary), (len(payload), True))
        self.assertTrue(echoed == payload)

    @defer.inlineCallbacks
    def test_fragmented_message(self) -> Any:
        """A message sent in 11 frames reaches the server as 11 frames, one message."""
        yield self.start()
        client = yield self.connect()
        client.sendMessage(b"x" * 1050, isBinary=False, fragmentSize=100)
        self.assertEqual((yield client.next_message()), (b"x" * 1050, False))
        self.assertEqual(self.upstream.frames, 11)

    @defer.inlineCallbacks
    def test_ping_pong(self) -> Any:
        """A ping gets the server's pong with the same payload."""
        yield self.start()
        client = yield self.connect()
        client.sendPing(b"are you there")
        yield support.wait_for(lambda: client.pongs, what="a pong")
        self.assertEqual(client.pongs, [b"are you there"])

    @defer.inlineCallbacks
    def test_client_close_codes(self) -> Any:
        """Each close code a client sends reaches the server, with its reason."""
        yield self.start()
        for code in (1000, 3000, 4001, 4999):
            self.upstream.closed = support.Event()
            client = yield self.connect()
            client.sendClose(code, f"client says {code}")
            wasClean, _, _ = yield client.closed.wait()
            yield self.upstream.closed.wait()
            self.assertEqual(self.upstream.closes[-1], (code, f"client says {code}"))
            # The server's closing reply came back too: a clean close.
            self.assertTrue(wasClean)

    @defer.inlineCallbacks
    def test_server_close_codes(self) -> Any:
        """Each close code the server sends reaches the client, with its reason."""
        yield self.start()
        for code in (1000, 1001, 1008, 1011, 4002):
            client = yield self.connect()
            client.sendMessage(f"close {code}".encode())
            wasClean, seen, reason = yield client.closed.wait()
            self.assertEqual((seen, reason), (code, f"server says {code}"))
            self.assertTrue(wasClean)

    @defer.inlineCallbacks
    def test_plain_route_refuses_upgrade(self) -> Any:
        """
        On a route without websocket the upgrade is not passed on: the
        server sees a plain GET (autobahn answers it with its status page).
        """
        yield self.start()
        client = yield self.connect(path="/plain")
        self.assertEqual((client.opened.value, client.status), (None, 200))
        self.assertEqual(self.upstream.opened, 0)


class FlowTests(WebSocketTestCase):
    """Many tunnels, and a reader that stops."""

    timeout = 240

    @defer.inlineCallbacks
    def test_thousand_tunnels(self) -> Any:
        """1,000 tunnels are held open at once, each echoing; the metrics count them."""
        config = ws_config(0)
        yield self.start_with_admin(config)
        gate = defer.DeferredSemaphore(50)
        clients = yield defer.gatherResults(
            [gate.run(self.connect) for _ in range(1000)], consumeErrors=True
        )
        self.assertEqual(self.upstream.opened, 1000)
        for number, client in enumerate(clients):
            client.sendMessage(f"hello {number}".encode())
        answers = yield defer.gatherResults([c.messages_until(1) for c in clients])
        self.assertEqual(answers, [(f"hello {n}".encode(), False) for n in range(1000)])
        metrics = yield self.scrape()
        self.assertGreaterEqual(metrics['gatewaykit_connections_active{listener="web"}'], 1000)
        sent = sum(len(f"hello {n}") for n in range(1000))
        # Frames carry 6 bytes of header and mask from a client, 2 from the server.
        self.assertGreaterEqual(
            metrics['gatewaykit_websocket_bytes_total{direction="in",listener="web"}'],
            sent + 6 * 1000,
        )
        self.assertGreaterEqual(
            metrics['gatewaykit_websocket_bytes_total{direction="out",listener="web"}'],
            sent + 2 * 1000,
        )
        # Every one still answers after all were opened.
        for client in clients:
            client.sendMessage(b"again")
        answers = yield defer.gatherResults([c.messages_until(2) for c in clients])
        self.assertEqual({answer for answer in answers}, {(b"again", False)})

    @defer.inlineCallbacks
    def start_with_admin(self, config: dict) -> Any:
        self.upstream = Upstream().listen(self)
        config = ws_config(self.upstream.listening_port)
        config["gateway"]["admin"] = {"bind": "127.0.0.1:0", "token": TOKEN}
        self.gateway = yield self.start_gateway(config)
        self.port = self.gateway.port()
        match = yield support.wait_for(lambda: ADMIN_LINE.search(self.gateway.output))
        self.admin_port = int(match.group(1))

    @defer.inlineCallbacks
    def scrape(self) -> Any:
        result = yield support.curl(
            self,
            f"http://127.0.0.1:{self.admin_port}/metrics",
            "-H",
            f"Authorization: Bearer {TOKEN}",
        )
        samples = {}
        for line in result.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    @defer.inlineCallbacks
    def test_slow_reader_pauses_upstream(self) -> Any:
        """
        A client that stops reading stops the server's sending within a few
        MiB of buffers; once it reads again, every byte arrives.
        """
        yield self.start()
        client = yield self.connect()
        client.transport.pauseProducing()
        client.sendMessage(b"flood")
        yield support.wait_for(lambda: self.upstream.flooding, what="the flood to start")
        flood = self.upstream.flooding
        yield support.wait_for(lambda: flood.paused, what="the server to be paused")
        yield support.sleep(1.0)
        stalled_at = flood.sent
        self.assertTrue(flood.paused)
        # Socket buffers on three connections plus the gateway's read size;
        # the server would have sent 256 MiB unchecked.
        self.assertLess(stalled_at, 32 * support.MiB)
        client.transport.resumeProducing()
        yield support.wait_for(
            lambda: flood.sent == 256 * support.MiB and client.received == flood.sent,
            timeout=120,
            what="every flooded byte to arrive",
        )


class SecureAndPolicyTests(WebSocketTestCase):
    """wss through an https listener; handshakes a policy refuses."""

    @defer.inlineCallbacks
    def test_wss(self) -> Any:
        """A wss client talks through an https listener to a plain ws server."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        authority = Authority()
        certificate, key = authority.issue("ws.test", dns=["ws.test"])
        cert_path, key_path = write_pair(directory, "ws", certificate, key)
        upstream = Upstream().listen(self)
        config = ws_config(upstream.listening_port)
        config["listeners"] = {
            "websecure": {
                "protocol": "https",
                "bind": "127.0.0.1:0",
                "tls": {"certificates": [{"cert": cert_path, "key": key_path}]},
            }
        }
        self.upstream = upstream
        self.gateway = yield self.start_gateway(config, ("websecure",))
        self.port = self.gateway.port("websecure")
        trust = ssl.Certificate.loadPEM(pem(authority.certificate))
        tls = ssl.optionsForClientTLS("ws.test", trustRoot=trust)
        client = yield self.connect(tls=tls, host="ws.test")
        self.assertEqual(client.status, 101)
        client.sendMessage(b"secret", isBinary=True)
        self.assertEqual((yield client.next_message()), (b"secret", True))
        self.assertEqual(upstream.opened, 1)

    def policy_config(self) -> dict:
        config = ws_config(self.upstream.listening_port)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        keys_file = os.path.join(directory, "keys.yaml")
        with open(keys_file, "w", encoding="utf-8") as f:
            f.write(f"- name: alice\n  sha256: {hashlib.sha256(KEY.encode()).hexdigest()}\n")
        config["policies"] = {
            "keys": {"type": "api_key", "keys_file": keys_file},
            "limit": {
                "type": "rate_limit",
                "key": ["ip"],
                "limit": 2,
                "window": "1m",
                "algorithm": "fixed_window",
            },
        }
        config["routes"][0]["policies"] = ["keys", "limit"]
        return config

    @defer.inlineCallbacks
    def test_refused_handshakes_never_reach_upstream(self) -> Any:
        """401 without a key and 429 past the limit; the server sees only the allowed two."""
        self.upstream = Upstream().listen(self)
        self.gateway = yield self.start_gateway(self.policy_config())
        self.port = self.gateway.port()
        anonymous = yield self.connect()
        self.assertEqual((anonymous.opened.value, anonymous.status), (None, 401))
        self.assertEqual(self.upstream.opened, 0)
        allowed = []
        for _ in range(2):
            client = yield self.connect(headers={"X-API-Key": KEY})
            self.assertEqual(client.status, 101)
            allowed.append(client)
        limited = yield self.connect(headers={"X-API-Key": KEY})
        self.assertEqual((limited.opened.value, limited.status), (None, 429))
        self.assertEqual(self.upstream.opened, 2)
        statuses = yield self.handshake_statuses()
        self.assertEqual(statuses, [401, 429])

    @defer.inlineCallbacks
    def handshake_statuses(self) -> Any:
        """The statuses curl gets for a handshake without a key and with one past the limit."""
        handshake = (
            "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
            "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        )  # fmt: skip
        anonymous = yield support.curl(self, self.gateway.url("/ws"), *handshake)
        limited = yield support.curl(
            self, self.gateway.url("/ws"), *handshake, "-H", f"X-API-Key: {KEY}"
        )
        return [anonymous.status, limited.status]
