"""
Pieces the end-to-end tests share: a real C{twistd gatewaykit} process,
upstream servers in the test process, clients (curl and raw TCP) and
waiting for conditions.

A real C{redis-server} (L{RedisServer}) and a small RESP client
(L{RespClient}) serve the tcp and rate-limit tests.

Every piece registers its own cleanup with the test case that made it, so a
failing test still leaves no process, port or connection behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Optional, Sequence
from urllib.parse import parse_qs

import httptools
import yaml
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import (
    ProcessProtocol,
    Protocol,
    ServerFactory,
    connectionDone,
)
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE = "it-node"
_CURL = shutil.which("curl") or "curl"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# The return type of an C{inlineCallbacks} generator.
Steps = Generator[Any, Any, Any]

_LISTENER_LINE = re.compile(r"gatewaykit listener (\S+) \((\w+)\) on (\S+):(\d+)")


class WaitTimeout(Exception):
    """A condition did not come true in time."""


class Event:
    """Something that happens once, which any number of callers can wait for."""

    def __init__(self) -> None:
        self.happened = False
        self.value: Any = None
        self._waiters: list[defer.Deferred] = []

    def fire(self, value: Any = None) -> None:
        self.happened = True
        self.value = value
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(value)

    def wait(self) -> defer.Deferred:
        """A new Deferred firing with the value once it happened."""
        if self.happened:
            return defer.succeed(self.value)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter


@defer.inlineCallbacks
def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """
    Poll C{predicate} until it returns something true; fire with that.

    @raise WaitTimeout: after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() >= deadline:
            raise WaitTimeout(f"waited {timeout:g}s for {what or predicate!r}")
        yield task.deferLater(reactor, interval, lambda: None)


def sleep(seconds: float) -> defer.Deferred:
    """Let C{seconds} pass on the reactor (for behaviour that *is* about time)."""
    return task.deferLater(reactor, seconds, lambda: None)


def sha256_of(path: str) -> str:
    """The hex SHA-256 of a file's content, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(MiB), b""):
            digest.update(piece)
    return digest.hexdigest()


def random_file(test_case: TestCase, size: int) -> str:
    """A new file of C{size} random bytes; its path."""
    path = os.path.abspath(test_case.mktemp())
    with open(path, "wb") as f:
        for offset in range(0, size, MiB):
            f.write(os.urandom(min(MiB, size - offset)))
    return path


# -- configuration ------------------------------------------------------------

PING_ROUTE = {
    "name": "ping",
    "match": {"path": "/ping"},
    "respond": {"status": 200, "body": "pong\n"},
}


def proxy_config(
    upstream_port: int,
    limits: Optional[dict] = None,
    timeouts: Optional[dict] = None,
    routes: tuple[dict, ...] = (),
    drain_timeout: str = "10s",
) -> dict:
    """
    A config with listener C{web} on an OS-chosen port proxying every path
    to upstream C{app} (on C{upstream_port}); C{routes} come first.
    """
    return {
        "gateway": {
            "node": NODE,
            "access_log": {"path": "off"},
            "drain_timeout": drain_timeout,
            "limits": dict(limits or {}),
        },
        "listeners": {"web": {"protocol": "http", "bind": "127.0.0.1:0"}},
        "upstreams": {
            "app": {
                "targets": [f"127.0.0.1:{upstream_port}"],
                "timeouts": {"connect": "1s", "response": "5s", **(timeouts or {})},
            }
        },
        "routes": [*routes, {"name": "all", "match": {"path_prefix": "/"}, "upstream": "app"}],
    }


def cluster_config(ports: Sequence[int], weights: Sequence[int] = (), **upstream: Any) -> dict:
    """
    L{proxy_config} with upstream C{app} over a target on each of C{ports}
    (with C{weights} when given); C{upstream} adds keys to C{app} (e.g.
    C{balancer}, C{health}, C{retries}).
    """
    config = proxy_config(ports[0])
    app = config["upstreams"]["app"]
    app["targets"] = [
        {"address": f"127.0.0.1:{port}", "weight": weight} if weights else f"127.0.0.1:{port}"
        for port, weight in zip(ports, weights or ports, strict=True)
    ]
    app.update(upstream)
    return config


def with_policies(config: dict, policies: dict, **route_policies: Sequence[str]) -> dict:
    """
    C{config} with the top-level C{policies}, and each route named in
    C{route_policies} applying the policies listed for it, in order.
    """
    config["policies"] = policies
    for each in config["routes"]:
        if each["name"] in route_policies:
            each["policies"] = list(route_policies[each["name"]])
    return config


# -- the gateway process --------------------------------------------------------


class GatewayProcess(ProcessProtocol):
    """
    C{twistd -n [twistd_arguments] gatewaykit --config PATH [arguments]} as a
    child process.

    @ivar output: everything the process wrote so far (stdout and stderr).
    @ivar exit_code: the exit code once it ended (C{None} if killed by a signal).
    """

    def __init__(
        self,
        test_case: TestCase,
        config: Any,
        listeners: tuple[str, ...] = ("web",),
        arguments: Sequence[str] = (),
        twistd_arguments: Sequence[str] = (),
    ) -> None:
        self._test_case = test_case
        self._listeners = listeners
        self._arguments = tuple(arguments)
        self._twistd_arguments = tuple(twistd_arguments)
        self.config_path = ""
        self._config = config if isinstance(config, str) else yaml.safe_dump(config)
        self._ports: dict[str, int] = {}
        self._chunks: list[str] = []
        self._ready: Optional[defer.Deferred] = None
        self._ended = Event()
        self.running = False
        self.pid: Optional[int] = None
        self._process: Any = None
        self.exit_code: Optional[int] = None
        self.exit_signal: Optional[int] = None

    @property
    def output(self) -> str:
        return "".join(self._chunks)

    def port(self, listener: str = "web") -> int:
        """The port the OS gave listener C{listener}."""
        return self._ports[listener]

    def url(self, path: str, listener: str = "web") -> str:
        """An C{http://} URL for C{path} on C{listener}."""
        return f"http://127.0.0.1:{self.port(listener)}{path}"

    def start(self, timeout: float = 15.0) -> defer.Deferred:
        """
        Write the config, spawn twistd and fire with C{self} once every
        listener logged its address.
        """
        directory = os.path.abspath(self._test_case.mktemp())
        os.makedirs(directory)
        path = self.config_path = os.path.join(directory, "gateway.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self._config)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        args = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *self._twistd_arguments,
            "gatewaykit",
            "--config",
            path,
            *self._arguments,
        ]
        self._ready = defer.Deferred()
        self._test_case.addCleanup(self._kill)
        self._process = reactor.spawnProcess(self, sys.executable, args, env=env, path=directory)
        self._process.closeStdin()
        self.running = True
        self.pid = self._process.pid
        ready = self._ready
        ready.addTimeout(timeout, reactor)
        ready.addErrback(self._not_ready, timeout)
        return ready

    def _not_ready(self, reason: Failure, timeout: float) -> Failure:
        if reason.check(defer.TimeoutError):
            raise WaitTimeout(
                f"gateway listeners not up within {timeout:g}s; output:\n{self.output}"
            )
        return reason

    def rss_bytes(self) -> int:
        """The process's resident set size (VmRSS)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ValueError(f"no VmRSS for process {self.pid}")

    def signal(self, name: str) -> None:
        """Send signal C{name} (e.g. C{"TERM"}) to the process."""
        self._process.signalProcess(name)

    def ended(self) -> defer.Deferred:
        """Fires with the exit code when the process ends."""
        return self._ended.wait()

    def stop(self, timeout: float = 30.0) -> defer.Deferred:
        """SIGTERM; fires with the exit code (killed after C{timeout} seconds)."""
        if self.running:
            self.signal("TERM")
        done = self.ended()
        done.addTimeout(timeout, reactor)
        return done

    def _kill(self) -> defer.Deferred:
        if not self.running:
            return defer.succeed(None)
        try:
            self._process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        return self.ended()

    # -- ProcessProtocol ------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        self._received(data)

    def errReceived(self, data: bytes) -> None:
        self._received(data)

    def _received(self, data: bytes) -> None:
        self._chunks.append(data.decode("utf-8", "replace"))
        if self._ready is None or self._ready.called:
            return
        # A line may arrive in pieces, so search everything so far.
        for match in _LISTENER_LINE.finditer(self.output):
            self._ports[match.group(1)] = int(match.group(4))
        if all(name in self._ports for name in self._listeners):
            self._ready.callback(self)

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if reason.check(ProcessDone):
            self.exit_code = 0
        else:
            self.exit_code = reason.value.exitCode
            self.exit_signal = reason.value.signal
        if self._ready is not None and not self._ready.called:
            self._ready.errback(
                RuntimeError(
                    f"gateway exited ({self.exit_code}, signal {self.exit_signal}) "
                    f"before listening; output:\n{self.output}"
                )
            )
        self._ended.fire(self.exit_code)


class RssSampler:
    """Samples a process's RSS every C{interval} seconds while running."""

    def __init__(self, gateway: GatewayProcess, interval: float = 0.1) -> None:
        self._gateway = gateway
        self.samples: list[int] = []
        self._loop = task.LoopingCall(self._sample)
        self._interval = interval

    def _sample(self) -> None:
        self.samples.append(self._gateway.rss_bytes())

    def start(self, test_case: TestCase) -> None:
        test_case.addCleanup(self.stop)
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
            self._sample()


# -- the upstream side -------------------------------------------------------


_PIECE = b"x" * (64 * KiB)


@implementer(IPushProducer)
class ByteStream:
    """
    Writes C{total} bytes to a request in 64 KiB pieces while not paused.

    @ivar written: bytes handed to the transport so far.
    @ivar paused: whether the consumer has us paused right now.
    @ivar pauses: how many times we were paused.
    """

    def __init__(self, request: Any, total: int) -> None:
        self._request = request
        self._remaining = total
        self.total = total
        self.written = 0
        self.paused = False
        self.pauses = 0
        self.done = False

    def start(self) -> None:
        request = self._request
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % self.total)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        request.registerProducer(self, True)
        reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        # The transport calls pauseProducing synchronously from write() once
        # its buffer is over 64 KiB, which ends this loop.
        while not self.paused and not self.done and self._remaining:
            size = min(len(_PIECE), self._remaining)
            self._remaining -= size
            self.written += size
            self._request.write(_PIECE if size == len(_PIECE) else _PIECE[:size])
        if not self._remaining and not self.done:
            self.done = True
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self._produce()

    def stopProducing(self) -> None:
        self.done = True


class _UpstreamResource(Resource):
    """The upstream's endpoints, by path."""

    isLeaf = True

    def __init__(self, server: UpstreamServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Any) -> Any:
        self._server.requests += 1
        name = request.path.decode("ascii").strip("/")
        endpoint = getattr(self, "render_" + name, None) if name.isidentifier() else None
        if endpoint is None:
            request.setResponseCode(404)
            return b"no such endpoint\n"
        return endpoint(request)

    def _arg(self, request: Any, name: str, default: int) -> int:
        query = parse_qs(request.uri.partition(b"?")[2].decode("ascii"))
        return int(query.get(name, [default])[0])

    def render_headers(self, request: Any) -> bytes:
        """What the upstream received: method, URI and raw header fields."""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "method": request.method.decode("ascii"),
                "uri": request.uri.decode("latin-1"),
                "headers": [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
            }
        ).encode("utf-8")

    def render_echo(self, request: Any) -> Any:
        """The request body, streamed back from twisted.web's temporary file."""
        content = request.content
        content.seek(0, os.SEEK_END)
        request.setHeader(b"content-length", b"%d" % content.tell())
        request.setHeader(b"content-type", b"application/octet-stream")
        content.seek(0)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def sent(_: Any) -> None:
            if not gone:
                request.finish()

        FileSender().beginFileTransfer(content, request).addCallbacks(sent, lambda _: None)
        return NOT_DONE_YET

    def render_bytes(self, request: Any) -> Any:
        """C{n} bytes from a L{ByteStream}."""
        stream = ByteStream(request, self._arg(request, "n", 0))
        self._server.streams.append(stream)
        stream.start()
        return NOT_DONE_YET

    def render_slow(self, request: Any) -> Any:
        """A short answer after C{ms} milliseconds."""
        call = reactor.callLater(self._arg(request, "ms", 1000) / 1000, _finish, request)

        def cancel(_: Failure) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(cancel)
        return NOT_DONE_YET

    def render_hang(self, request: Any) -> Any:
        """No answer, ever."""
        return NOT_DONE_YET


def _finish(request: Any) -> None:
    request.setHeader(b"content-type", b"text/plain")
    request.write(b"slow done\n")
    request.finish()


class _Channel(HTTPChannel):
    on_lost: Callable[[_Channel], None]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.on_lost(self)


class LoopbackServer:
    """
    A server factory's listening on 127.0.0.1 (a port from the OS unless
    given) for one test: the factory keeps its open connections' protocols
    in C{channels}; stopping stops listening and drops them all, like a
    crash.
    """

    channels: set[Any] = frozenset()  # type: ignore[assignment]  # none kept
    _port: Any = None

    @property
    def port(self) -> int:
        return int(self._port.getHost().port)

    @property
    def label(self) -> str:
        """What the server is called in timeout messages."""
        return type(self).__name__

    def listen(self, test_case: Optional[TestCase] = None, port: int = 0) -> Any:
        """Listen; stopped on C{test_case}'s cleanup when one is given."""
        self._port = reactor.listenTCP(port, self, interface="127.0.0.1")  # type: ignore[arg-type]
        if test_case is not None:
            test_case.addCleanup(self.stop)
        return self

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and drop every open connection."""
        port, self._port = self._port, None
        if port is not None:
            yield port.stopListening()
        for channel in list(self.channels):
            _abort(channel.transport)
        yield wait_for(lambda: not self.channels, what=f"{self.label} connections to close")


class UpstreamServer(LoopbackServer, Site):
    """
    A twisted.web upstream on 127.0.0.1, port chosen by the OS.

    Endpoints: C{POST /echo}, C{GET /bytes?n=N}, C{/headers},
    C{/slow?ms=N}, C{/hang}.

    @ivar connections_accepted: connections accepted so far.
    @ivar requests: requests received so far.
    @ivar streams: the L{ByteStream}s of C{/bytes} requests, in order.
    """

    protocol = _Channel  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(_UpstreamResource(self), timeout=None)
        self.noisy = False
        self.connections_accepted = 0
        self.requests = 0
        self.streams: list[ByteStream] = []
        self.channels: set[_Channel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        self.connections_accepted += 1
        channel = super().buildProtocol(addr)
        channel.on_lost = self.channels.discard
        self.channels.add(channel)
        return channel

    def log(self, request: Any) -> None:
        pass


def start_upstream(test_case: TestCase) -> UpstreamServer:
    """A listening L{UpstreamServer}, stopped on cleanup."""
    return UpstreamServer().listen(test_case)


def serve_resource(test_case: TestCase, resource: Resource) -> int:
    """
    Serve a twisted.web C{resource} (an auth service, a JWKS...) on
    127.0.0.1 until cleanup; its port.
    """
    site = Site(resource)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
    test_case.addCleanup(port.stopListening)
    return int(port.getHost().port)  # type: ignore[attr-defined]


@defer.inlineCallbacks
def closed_port() -> Any:
    """A 127.0.0.1 port nothing listens on (it was just bound and released)."""
    port = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
    number = port.getHost().port  # type: ignore[attr-defined]
    yield port.stopListening()
    return number


def _abort(transport: Any) -> None:
    transport.abortConnection()


# -- clients ---------------------------------------------------------------------


def _split_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return status, fields


@dataclass
class Response:
    """A response as a client saw it."""

    status: int
    fields: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The value of the last field named C{name}, if any."""
        values = self.headers(name)
        return values[-1] if values else None

    def headers(self, name: str) -> list[str]:
        """Every value of the fields named C{name}."""
        return [v for n, v in self.fields if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> Response:
    """A whole response (head and Content-Length body) from raw bytes."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError(f"no complete response head in {data[:200]!r}")
    status, fields = _split_head(head)
    return Response(status, fields, body)


class _Collector(ProcessProtocol):
    """Collects a child's output; C{ended} fires with C{(stdout, stderr, code)}."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self.ended = Event()
        self.process: Any = None

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.ended.fire((b"".join(self._out), b"".join(self._err), code))

    def kill(self) -> defer.Deferred:
        if not self.ended.happened:
            try:
                self.process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
        return self.ended.wait()


def run_curl(test_case: TestCase, *args: str, max_time: float = 60.0) -> defer.Deferred:
    """
    Run curl quietly with C{args} (killed on cleanup if still running);
    fires with C{(stdout, stderr, exit code)}.
    """
    collector = _Collector()
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", f"{max_time:g}", *args]
    collector.process = reactor.spawnProcess(collector, _CURL, argv, env=dict(os.environ))
    test_case.addCleanup(collector.kill)
    return collector.ended.wait()


@dataclass
class CurlResult(Response):
    """A response curl received; the body is in C{body_path}."""

    size_download: int = 0
    body_path: str = ""


@defer.inlineCallbacks
def curl(
    test_case: TestCase,
    url: str,
    *options: str,
    output: Optional[str] = None,
    max_time: float = 60.0,
) -> Any:
    """
    Fetch C{url} with curl and C{options}; fire with a L{CurlResult}.

    The body goes to a temporary file (read into C{body} when under 1 MiB),
    or to C{output} when given (e.g. C{/dev/null}).
    """
    base = os.path.abspath(test_case.mktemp())
    head_path = base + ".head"
    body_path = output or base + ".body"
    out, err, code = yield run_curl(
        test_case,
        "-D",
        head_path,
        "-o",
        body_path,
        "-w",
        "%{http_code} %{size_download}",
        *options,
        url,
        max_time=max_time,
    )
    if code != 0:
        raise AssertionError(f"curl {url} failed ({code}): {err.decode(errors='replace')}")
    with open(head_path, "rb") as f:
        heads = [h for h in f.read().split(b"\r\n\r\n") if h.strip()]
    # Interim responses (100 Continue) come first; the final head is last.
    status, fields = _split_head(heads[-1])
    body = b""
    if output is None and os.path.getsize(body_path) < MiB:
        with open(body_path, "rb") as f:
            body = f.read()
    size = int(out.split()[1])
    return CurlResult(status, fields, body, size_download=size, body_path=body_path)


class RawClient(Protocol):
    """
    A TCP client that counts what it receives and keeps the first bytes.

    @ivar received: bytes received so far.
    @ivar data: the first C{keep} bytes received.
    """

    def __init__(self, keep: int = 256 * KiB) -> None:
        self.received = 0
        self.data = b""
        self._keep = keep
        self._closed = Event()
        self._tcp: Any = None
        self.open = False

    def connectionMade(self) -> None:
        self.open = True
        self._tcp = self.transport

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if len(self.data) < self._keep:
            self.data += data[: self._keep - len(self.data)]

    @property
    def lost(self) -> bool:
        """Whether the connection is gone."""
        return self._closed.happened

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.open = False
        self._closed.fire(self)

    def send(self, data: bytes) -> None:
        self._tcp.write(data)

    def pause_reading(self) -> None:
        """Stop reading: the kernel buffers fill and the sender must wait."""
        self._tcp.pauseProducing()

    def resume_reading(self) -> None:
        self._tcp.resumeProducing()

    def head_length(self) -> int:
        """Bytes of the response head (0 until it has all arrived)."""
        end = self.data.find(b"\r\n\r\n")
        return 0 if end == -1 else end + 4

    def response(self) -> Response:
        return parse_response(self.data)

    def when_closed(self) -> defer.Deferred:
        """A new Deferred firing with C{self} once the connection is lost."""
        return self._closed.wait()

    def close(self) -> defer.Deferred:
        """Drop the connection; fires once it is gone."""
        if self.open:
            _abort(self._tcp)
        return self.when_closed()


@defer.inlineCallbacks
def connect_raw(test_case: TestCase, port: int) -> Any:
    """A L{RawClient} connected to 127.0.0.1:C{port}, closed on cleanup."""
    client = RawClient()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    test_case.addCleanup(client.close)
    return client


class GatewayTestCase(TestCase):
    """Base for the end-to-end tests: starts upstreams and gateways."""

    timeout = 120

    def start_upstream(self) -> UpstreamServer:
        return start_upstream(self)

    def start_gateway(
        self,
        config: Any,
        listeners: tuple[str, ...] = ("web",),
        arguments: Sequence[str] = (),
        twistd_arguments: Sequence[str] = (),
    ) -> defer.Deferred:
        """
        A running L{GatewayProcess} for C{config} (a dict or YAML text);
        C{arguments} follow C{gatewaykit}, C{twistd_arguments} precede it.
        """
        return GatewayProcess(self, config, listeners, arguments, twistd_arguments).start()

    @defer.inlineCallbacks
    def start_proxy(self, **config: Any) -> Any:
        """
        An upstream and a gateway proxying to it (L{proxy_config} with
        C{config}); fires with C{(gateway, upstream)}.
        """
        upstream = self.start_upstream()
        gateway = yield self.start_gateway(proxy_config(upstream.port, **config))
        return gateway, upstream


# -- named upstreams, crashed targets and a keep-alive load client ----------------

# The response field naming the upstream server that answered.
UPSTREAM_FIELD = "X-Upstream"
HEALTH_PATH = b"/healthz"


class _NamedChannel(Protocol):
    """One connection to a L{NamedServer}: HTTP/1.1 requests, one at a time."""

    factory: NamedServer

    def connectionMade(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._answers: list[Any] = []
        self.factory.connections_accepted += 1
        self.factory.channels.add(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        server = self.factory
        keep_alive = self._parser.should_keep_alive()
        if self._url.partition(b"?")[0] == HEALTH_PATH:
            server.health_checks += 1
            server.event("check")
            self._answer(keep_alive)
            return
        server.requests += 1
        server.event("request")
        if server.delay:
            self._answers.append(reactor.callLater(server.delay, self._answer, keep_alive))
        else:
            self._answer(keep_alive)

    def _answer(self, keep_alive: bool) -> None:
        self._answers = [call for call in self._answers if call.active()]
        body = self.factory.name.encode("ascii") + b"\n"
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"%s: %s\r\n%s\r\n%s"
            % (
                len(body),
                UPSTREAM_FIELD.encode("ascii"),
                body.strip(),
                b"" if keep_alive else b"Connection: close\r\n",
                body,
            )
        )
        if not keep_alive:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in self._answers:
            if call.active():
                call.cancel()
        self.factory.channels.discard(self)


class NamedServer(LoopbackServer, ServerFactory):
    """
    A small fast HTTP/1.1 upstream on 127.0.0.1 that names itself: every
    answer is 200 with body C{NAME} and field C{X-Upstream: NAME}, after
    C{delay} seconds (health checks, C{GET /healthz}, are answered at once).

    @ivar requests: requests answered or being answered (not health checks).
    @ivar health_checks: C{/healthz} requests received.
    @ivar on_event: called with C{"check"} or C{"request"} for each request.
    """

    protocol = _NamedChannel

    def __init__(
        self, name: str, delay: float = 0.0, on_event: Optional[Callable[[str], None]] = None
    ) -> None:
        self.name = name
        self.delay = delay
        self.on_event = on_event
        self.requests = 0
        self.health_checks = 0
        self.connections_accepted = 0
        self.channels: set[_NamedChannel] = set()

    @property
    def label(self) -> str:
        return self.name

    def event(self, kind: str) -> None:
        if self.on_event is not None:
            self.on_event(kind)


def start_named(test_case: TestCase, name: str, delay: float = 0.0) -> NamedServer:
    """A listening L{NamedServer} in this process, stopped on cleanup."""
    server: NamedServer = NamedServer(name, delay).listen(test_case)
    return server


def serve_named() -> None:
    """
    The main of an upstream child process (argv: NAME PORT): a L{NamedServer}
    printing C{listening PORT}, then C{check T} for each health check and
    C{request T} for the first real request (T: C{time.monotonic()}).
    """
    name, port = sys.argv[1:3]
    reported: set[str] = set()

    def report(kind: str) -> None:
        if kind == "check" or kind not in reported:
            reported.add(kind)
            print(f"{kind} {time.monotonic():.6f}", flush=True)

    server = NamedServer(name, on_event=report).listen(port=int(port))
    print(f"listening {server.port}", flush=True)
    reactor.run()


class UpstreamProcess(_Collector):
    """
    A L{NamedServer} in a child process, to be killed like a crashed one.

    @ivar events: C{(kind, monotonic time)} of the health checks it got and
        of its first real request.
    """

    def __init__(self, test_case: TestCase, name: str) -> None:
        super().__init__()
        self._test_case = test_case
        self.name = name
        self.port = 0
        self.events: list[tuple[str, float]] = []
        self._listening = Event()
        self._partial = b""

    def start(self, port: int = 0, timeout: float = 15.0) -> defer.Deferred:
        """Spawn the child; fires with C{self} once it listens (on C{port}, or any)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        code = "from tests.integration.support import serve_named; serve_named()"
        argv = [sys.executable, "-c", code, self.name, str(port)]
        self.process = reactor.spawnProcess(self, sys.executable, argv, env=env, path=ROOT)
        self._test_case.addCleanup(self.kill)
        listening = self._listening.wait()
        listening.addTimeout(timeout, reactor)
        return listening

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            kind, _, value = line.decode("ascii").partition(" ")
            if kind == "listening":
                self.port = int(value)
                self._listening.fire(self)
            else:
                self.events.append((kind, float(value)))

    def first(self, kind: str) -> Optional[float]:
        """When the first event C{kind} happened, if it did."""
        return next((when for what, when in self.events if what == kind), None)


class _CountedConnection(Protocol):
    """Classifies a connection by its first bytes, then drops it."""

    factory: ConnectionCounter

    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"GET " + HEALTH_PATH + b" "):
            self.factory.health_checks += 1
        else:
            self.factory.requests += 1
        _abort(self.transport)


class ConnectionCounter(LoopbackServer, ServerFactory):
    """
    A listener that counts the connections it accepts, as health checks or
    real requests by their first bytes, and drops each one like a crashed
    target would.
    """

    protocol = _CountedConnection

    def __init__(self) -> None:
        self.health_checks = 0
        self.requests = 0


@dataclass
class Reply:
    """One response as the load client saw it (C{status} 0: the connection broke first)."""

    status: int
    upstream: str
    sent: float
    received: float


class _LoadConnection(Protocol):
    """A keep-alive client connection sending one request at a time."""

    def __init__(self) -> None:
        self.usable = True
        self._waiter: Optional[defer.Deferred] = None
        self._upstream = ""
        self._sent = 0.0

    def connectionMade(self) -> None:
        self._parser = httptools.HttpResponseParser(self)

    def send(self, request: bytes) -> defer.Deferred:
        """Send C{request}; fires with its L{Reply}."""
        self._waiter = defer.Deferred()
        self._upstream = ""
        self._sent = time.monotonic()
        self.transport.write(request)  # type: ignore[union-attr]
        return self._waiter

    def dataReceived(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.usable = False
            _abort(self.transport)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-upstream":
            self._upstream = value.decode("ascii")

    def on_message_complete(self) -> None:
        self.usable = self.usable and self._parser.should_keep_alive()
        self._reply(self._parser.get_status_code())

    def _reply(self, status: int) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(Reply(status, self._upstream, self._sent, time.monotonic()))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.usable = False
        self._reply(0)

    def close(self) -> None:
        if self.usable:
            self.usable = False
            _abort(self.transport)


def _request_bytes(path: str, fields: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@defer.inlineCallbacks
def send_requests(
    test_case: TestCase,
    port: int,
    requests: Iterable[tuple[str, Sequence[tuple[str, str]]]],
    concurrency: int = 20,
) -> Any:
    """
    Send each C{(path, header fields)} GET of C{requests} to 127.0.0.1:C{port}
    over C{concurrency} keep-alive connections, each one request at a time
    (a new connection replaces one that closed); fires with the L{Reply}s
    in the order of C{requests}. C{requests} may be an endless generator that
    stops when the caller wants the load to end.
    """
    pending = enumerate(requests)
    replies: dict[int, Reply] = {}

    @defer.inlineCallbacks
    def client() -> Steps:
        connection: Optional[_LoadConnection] = None
        for index, (path, fields) in pending:
            if connection is None or not connection.usable:
                connection = _LoadConnection()
                yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), connection)
                test_case.addCleanup(connection.close)
            replies[index] = yield connection.send(_request_bytes(path, fields))

    yield defer.gatherResults([client() for _ in range(concurrency)], consumeErrors=True)
    return [replies[index] for index in sorted(replies)]


# -- redis-server and a RESP client -------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REPLY_TIMEOUT = 20.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisError(Exception):
    """An error reply."""


_INCOMPLETE: Any = object()


def _parse_resp(buffer: bytearray, start: int) -> tuple[Any, int]:
    """The RESP2 value at C{buffer[start:]} and where it ends, or C{_INCOMPLETE}."""
    end = buffer.find(b"\r\n", start)
    if end == -1:
        return _INCOMPLETE, start
    kind, line = buffer[start : start + 1], bytes(buffer[start + 1 : end])
    position = end + 2
    if kind == b"+":
        return line.decode("utf-8"), position
    if kind == b"-":
        return RedisError(line.decode("utf-8")), position
    if kind == b":":
        return int(line), position
    if kind == b"$":
        size = int(line)
        if size == -1:
            return None, position
        if len(buffer) < position + size + 2:
            return _INCOMPLETE, start
        return bytes(buffer[position : position + size]), position + size + 2
    if kind == b"*":
        count = int(line)
        if count == -1:
            return None, position
        items = []
        for _ in range(count):
            item, position = _parse_resp(buffer, position)
            if item is _INCOMPLETE:
                return _INCOMPLETE, start
            items.append(item)
        return items, position
    raise ValueError(f"unexpected reply {bytes(buffer[start : start + 40])!r}")


class RespClient(Protocol):
    """Sends Redis commands and parses the replies, one command at a time or pipelined."""

    transport: Any

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiting: deque[defer.Deferred] = deque()
        self.closed = Event()

    def command(self, *args: Any) -> defer.Deferred:
        """Send one command; fires with its reply (errors as L{RedisError})."""
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            value = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            parts.append(b"$%d\r\n" % len(value))
            parts.append(value)
            parts.append(b"\r\n")
        self.transport.writeSequence(parts)
        reply: defer.Deferred = defer.Deferred()
        self._waiting.append(reply)
        reply.addTimeout(REPLY_TIMEOUT, reactor)
        return reply

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._waiting:
            value, end = _parse_resp(self._buffer, 0)
            if value is _INCOMPLETE:
                return
            del self._buffer[:end]
            waiter = self._waiting.popleft()
            if isinstance(value, RedisError):
                waiter.errback(value)
            else:
                waiter.callback(value)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(reason)
        self.closed.fire()

    def close(self) -> defer.Deferred:
        if not self.closed.happened:
            self.transport.abortConnection()
        return self.closed.wait()


@defer.inlineCallbacks
def connect_resp(test_case: Any, port: int) -> Any:
    """A L{RespClient} connected to 127.0.0.1:C{port}, closed on cleanup."""
    client = RespClient()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), client)
    test_case.addCleanup(client.close)
    return client


class RedisServer(ProcessProtocol):
    """
    A C{redis-server} on a free loopback port, in its own folder, never
    persisting; it can be killed, paused (C{SIGSTOP}, like a hung server)
    and started again on the same port.
    """

    def __init__(self, test_case: Any) -> None:
        self._test_case = test_case
        self.port = 0
        self.output: list[bytes] = []
        self.ended = Event()
        self._process: Any = None
        self._directory = ""

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Spawn it (on its earlier port, if it had one); fire with C{self} once it answers PING."""
        if not self._directory:
            self._directory = os.path.abspath(self._test_case.mktemp())
            os.makedirs(self._directory)
            self.port = free_port()
            self._test_case.addCleanup(self.kill)
        args = self.spawn_arguments(self._directory)
        self.ended = Event()
        self._process = reactor.spawnProcess(self, args[0], args, env={}, path=self._directory)
        deadline = reactor.seconds() + 10
        while True:
            if self.ended.happened:
                raise RuntimeError(f"redis-server exited: {b''.join(self.output)!r}")
            try:
                pong = yield self.command("PING")
                if pong == "PONG":
                    return self
            except Exception:
                if reactor.seconds() > deadline:
                    raise
            yield sleep(0.05)

    def spawn_arguments(self, directory: str) -> list[str]:
        """The command line (a subclass may run it differently, e.g. as a Sentinel)."""
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", directory,
        ]  # fmt: skip

    @defer.inlineCallbacks
    def command(self, *args: Any) -> Any:
        """Run one command on a connection of its own; fires with the reply."""
        client = yield connect_resp(self._test_case, self.port)
        try:
            reply = yield client.command(*args)
        finally:
            yield client.close()
        return reply

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.fire()

    def signal(self, name: str) -> None:
        """Send signal C{name} (C{"STOP"}, C{"CONT"}, ...)."""
        # Twisted only knows the names KILL, TERM and INT.
        self._process.signalProcess(int(getattr(signal, "SIG" + name)))

    def kill(self) -> defer.Deferred:
        """SIGKILL; fires once it is gone."""
        if not self.ended.happened and self._process is not None:
            try:
                self._process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
        return self.ended.wait()

    @defer.inlineCallbacks
    def restart(self) -> Any:
        """Kill it and start a new, empty one on the same port."""
        yield self.kill()
        result = yield self.start()
        return result


# -- a recording load client --------------------------------------------------------


@dataclass
class Answer:
    """
    One response as a L{Load} client saw it: status (0: the connection broke,
    or no answer within the give-up time), fields by lower-case name, and
    the wall-clock times (C{time.time()}, Redis's clock too) it was sent and
    received at.
    """

    status: int
    fields: dict[str, str]
    sent: float
    received: float

    @property
    def latency(self) -> float:
        return self.received - self.sent


class _RecordingConnection(_LoadConnection):
    """A L{_LoadConnection} that keeps every response's fields."""

    def send(self, request: bytes) -> defer.Deferred:
        fields: dict[str, str] = {}
        self._fields = fields
        sent = time.time()
        return super().send(request).addCallback(
            lambda reply: Answer(reply.status, fields, sent, time.time())
        )

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._fields[name.decode("latin-1").lower()] = value.decode("latin-1")


class Load:
    """
    C{clients} keep-alive connections to 127.0.0.1:C{port}, each sending
    C{GET path} with C{fields} one request at a time (C{pause} seconds
    apart) from L{start} until L{stop}; each answer is recorded as it comes,
    in C{answers} (one list per client).
    """

    def __init__(
        self,
        test_case: TestCase,
        port: int,
        path: str,
        fields: Sequence[tuple[str, str]] = (),
        clients: int = 1,
        pause: float = 0.0,
        give_up: float = 10.0,
    ) -> None:
        self._test_case = test_case
        self._port = port
        self._request = _request_bytes(path, fields)
        self._pause = pause
        self._give_up = give_up
        self._running = False
        self._done: Optional[defer.Deferred] = None
        self.answers: list[list[Answer]] = [[] for _ in range(clients)]

    def start(self) -> Load:
        self._running = True
        self._done = defer.gatherResults(
            [self._client(answers) for answers in self.answers], consumeErrors=True
        )
        self._test_case.addCleanup(self.stop)
        return self

    def stop(self) -> defer.Deferred:
        """Stop sending; fires once every client has its last answer."""
        self._running = False
        return self._done if self._done is not None else defer.succeed(None)

    def all(self) -> list[Answer]:
        """Every answer so far, by the time it was sent."""
        return sorted((a for answers in self.answers for a in answers), key=lambda a: a.sent)

    @defer.inlineCallbacks
    def _client(self, answers: list[Answer]) -> Steps:
        connection: Optional[_RecordingConnection] = None
        while self._running:
            if connection is None or not connection.usable:
                connection = _RecordingConnection()
                yield connectProtocol(
                    TCP4ClientEndpoint(reactor, "127.0.0.1", self._port), connection
                )
                self._test_case.addCleanup(connection.close)
            sent = time.time()
            try:
                answer = yield connection.send(self._request).addTimeout(self._give_up, reactor)
            except defer.TimeoutError:
                answer = Answer(0, {}, sent, time.time())
                connection.close()
            answers.append(answer)
            if self._pause:
                yield sleep(self._pause)
