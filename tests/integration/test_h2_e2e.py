"""
End-to-end tests of HTTP/2 downstream: a real gateway process with an https
listener (ALPN h2 and http/1.1) in front of a twisted.web upstream, driven
by curl over HTTP/2 and HTTP/1.1.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import log

from tests.fixtures.tls import Authority, write_pair
from tests.integration import support
from tests.integration.support import KiB, MiB

HOST = "a.test"
# Fields that differ between any two requests, or between the protocols'
# framing, whatever the gateway does.
VARYING = {"x-request-id", "traceparent", "date"}
FRAMING = {"connection", "keep-alive", "transfer-encoding"}


class H2TestCase(support.GatewayTestCase):
    """A gateway with an https listener for C{a.test} proxying to a test upstream."""

    @defer.inlineCallbacks
    def start(self) -> support.Steps:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        authority = Authority()
        self.ca = authority.write(directory)
        certificate, key = authority.issue(HOST, dns=[HOST])
        cert_path, key_path = write_pair(directory, "a", certificate, key)
        self.upstream = self.start_upstream()
        config = support.proxy_config(
            self.upstream.port,
            limits={"max_body_bytes": "64MiB"},
            timeouts={"response": "20s"},
            routes=(support.PING_ROUTE,),
        )
        config["listeners"] = {
            "secure": {
                "protocol": "https",
                "bind": "127.0.0.1:0",
                "tls": {"certificates": [{"cert": cert_path, "key": key_path}], "hsts": 600},
            }
        }
        self.gateway = yield self.start_gateway(config, ("secure",))
        self.port = self.gateway.port("secure")

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"

    def tls_options(self) -> tuple[str, ...]:
        return ("--cacert", self.ca, "--resolve", f"{HOST}:{self.port}:127.0.0.1")

    def curl(self, version: str, path: str, *options: str, **kwargs: Any) -> defer.Deferred:
        """C{path} fetched with curl over C{version} (C{--http2} or C{--http1.1})."""
        return support.curl(
            self, self.url(path), version, *self.tls_options(), *options, max_time=60, **kwargs
        )

    @defer.inlineCallbacks
    def http_version(self, version: str) -> support.Steps:
        """The HTTP version curl ended up speaking when asking for C{version}."""
        out, err, code = yield support.run_curl(
            self, version, *self.tls_options(), "-o", "/dev/null", "-w", "%{http_version}",
            self.url("/ping"),
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        return out.decode("ascii")


class H2Probe(Protocol):
    """
    An h2 client over a real TLS connection that acknowledges the data it
    receives (reopening the server's send window) only while C{acking}.
    """

    def __init__(self) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.acking = True
        self.status = 0
        self.received = 0
        self._unacked: list[tuple[int, int]] = []
        self.ended = support.Event()

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self._flush()

    def get(self, authority: str, path: str) -> None:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
             (b":path", path.encode())],
            end_stream=True,
        )  # fmt: skip
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                self.status = int(dict(event.headers or [])[b":status"])
            elif isinstance(event, DataReceived):
                self.received += len(event.data or b"")
                self._unacked.append((event.flow_controlled_length or 0, event.stream_id))
            elif isinstance(event, StreamEnded):
                self.ended.fire(self)
        if self.acking:
            self.acknowledge()
        self._flush()

    def acknowledge(self) -> None:
        """Reopen the windows for everything received so far."""
        for size, stream_id in self._unacked:
            self.conn.acknowledge_received_data(size, stream_id)
        self._unacked = []
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)  # type: ignore[union-attr]


def _fields(response: support.Response, skip: set[str]) -> dict[str, list[str]]:
    """The response's fields by lower-case name, without those in C{skip}."""
    seen: dict[str, list[str]] = {}
    for name, value in response.fields:
        if name.lower() not in skip:
            seen.setdefault(name.lower(), []).append(value)
    return seen


class SameAnswerTests(H2TestCase):
    """curl --http2 and --http1.1 get the same route, status, body and headers."""

    @defer.inlineCallbacks
    def test_negotiated(self) -> support.Steps:
        """ALPN gives HTTP/2 to a client offering it, HTTP/1.1 to one that does not."""
        yield self.start()
        self.assertEqual((yield self.http_version("--http2")), "2")
        self.assertEqual((yield self.http_version("--http1.1")), "1.1")

    @defer.inlineCallbacks
    def test_proxied(self) -> support.Steps:
        """A proxied answer: same status, body, response fields and fields sent upstream."""
        yield self.start()
        two = yield self.curl("--http2", "/headers?x=1", "-H", "X-Custom: a", "-H", "Cookie: c=1")
        one = yield self.curl("--http1.1", "/headers?x=1", "-H", "X-Custom: a", "-H", "Cookie: c=1")
        self.assertEqual(two.status, one.status)
        self.assertEqual(
            _fields(two, VARYING | FRAMING | {"content-length"}),
            _fields(one, VARYING | FRAMING | {"content-length"}),
        )
        self.assertEqual(two.header("strict-transport-security"), "max-age=600")
        received = [two.json(), one.json()]
        self.assertEqual(received[0]["method"], received[1]["method"])
        self.assertEqual(received[0]["uri"], received[1]["uri"])
        upstream_fields = [
            sorted((n.lower(), v) for n, v in answer["headers"] if n.lower() not in VARYING)
            for answer in received
        ]
        self.assertEqual(upstream_fields[0], upstream_fields[1])
        self.assertIn(("x-forwarded-proto", "https"), upstream_fields[0])
        self.assertIn(("host", f"{HOST}:{self.port}"), upstream_fields[0])

    @defer.inlineCallbacks
    def test_gateway_answers(self) -> support.Steps:
        """The gateway's own answers (respond, errors) are the same too."""
        yield self.start()
        two = yield self.curl("--http2", "/ping")
        one = yield self.curl("--http1.1", "/ping")
        self.assertEqual((two.status, two.body), (one.status, one.body))
        self.assertEqual(_fields(two, VARYING | FRAMING), _fields(one, VARYING | FRAMING))
        two = yield self.curl("--http2", "/../x", "--path-as-is")
        one = yield self.curl("--http1.1", "/../x", "--path-as-is")
        self.assertEqual((two.status, one.status), (400, 400))
        self.assertEqual(_fields(two, VARYING | FRAMING), _fields(one, VARYING | FRAMING))
        problems = [answer.json() for answer in (two, one)]
        for problem in problems:
            del problem["request_id"]
        self.assertEqual(problems[0], problems[1])
        self.assertEqual(problems[0]["type"], "urn:gatewaykit:error:bad_request")


class ConcurrencyTests(H2TestCase):
    """Many streams on one HTTP/2 connection."""

    @defer.inlineCallbacks
    def test_hundred_streams(self) -> support.Steps:
        """100 slow requests at once over one connection are all answered, concurrently."""
        yield self.start()
        count, delay = 100, 1.0
        arguments: list[str] = []
        for _ in range(count):
            arguments += ["-o", "/dev/null", self.url(f"/slow?ms={int(delay * 1000)}")]
        started = time.monotonic()
        out, err, code = yield support.run_curl(
            self, "--http2", *self.tls_options(), "--parallel", "--parallel-max", str(count),
            "-w", "RESULT %{http_code} %{http_version} %{num_connects}\\n", *arguments,
            max_time=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        self.assertEqual(code, 0, err)
        results = re.findall(rb"RESULT (\d+) (\S+) (\d+)", out)
        log.msg(f"{count} parallel streams of {delay:g}s each answered in {elapsed:.2f}s")
        self.assertEqual(len(results), count)
        self.assertEqual({(status, version) for status, version, _ in results}, {(b"200", b"2")})
        self.assertEqual(sum(int(connects) for _, _, connects in results), 1)
        # One after another they would take 100 s.
        self.assertLess(elapsed, 15)


class TransferTests(H2TestCase):
    """Big bodies over HTTP/2, both ways."""

    @defer.inlineCallbacks
    def test_download_memory(self) -> support.Steps:
        """A 50 MiB download over HTTP/2 arrives whole; the gateway's RSS stays flat."""
        yield self.start()
        yield self.curl("--http2", "/headers")
        before = self.gateway.rss_bytes()
        sampler = support.RssSampler(self.gateway, interval=0.1)
        sampler.start(self)
        size = 50 * MiB
        response = yield self.curl("--http2", f"/bytes?n={size}", output="/dev/null")
        sampler.stop()
        growth = max(sampler.samples) - before
        report = (
            f"50 MiB over HTTP/2: RSS before {before / MiB:.1f} MiB, max "
            f"{max(sampler.samples) / MiB:.1f} MiB, growth {growth / MiB:.1f} MiB "
            f"({len(sampler.samples)} samples)"
        )
        log.msg(report)
        self.assertEqual((response.status, response.size_download), (200, size))
        self.assertLess(growth, 16 * MiB, report)

    @defer.inlineCallbacks
    def test_upload(self) -> support.Steps:
        """A 20 MiB POST over HTTP/2 reaches the upstream identical (it echoes it back)."""
        yield self.start()
        size = 20 * MiB
        path = support.random_file(self, size)
        response = yield self.curl("--http2", "/echo", "--data-binary", f"@{path}")
        self.assertEqual((response.status, response.size_download), (200, size))
        self.assertEqual(support.sha256_of(response.body_path), support.sha256_of(path))

    @defer.inlineCallbacks
    def test_small_upload(self) -> support.Steps:
        """A small POST body without Expect goes up and back."""
        yield self.start()
        response = yield self.curl("--http2", "/echo", "--data-binary", "x" * (3 * KiB))
        self.assertEqual((response.status, response.body), (200, b"x" * (3 * KiB)))

    @defer.inlineCallbacks
    def test_withheld_window_pauses_upstream(self) -> support.Steps:
        """A client withholding WINDOW_UPDATE pauses the upstream; acknowledging resumes it."""
        yield self.start()
        with open(self.ca, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        options = optionsForClientTLS(HOST, trustRoot=trust, acceptableProtocols=[b"h2"])
        probe = H2Probe()
        probe.acking = False
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port, options)
        yield connectProtocol(endpoint, probe)
        self.addCleanup(lambda: probe.transport.abortConnection())  # type: ignore[union-attr]
        size = 64 * MiB
        probe.get(f"{HOST}:{self.port}", f"/bytes?n={size}")
        streams = yield support.wait_for(lambda: self.upstream.streams, what="the upstream stream")
        stream = streams[0]
        yield support.sleep(2.0)
        written, paused = stream.written, stream.paused
        log.msg(
            f"withheld window: client got {probe.received} bytes, upstream wrote "
            f"{written / MiB:.1f} MiB of {size / MiB:.0f} MiB (paused: {paused})"
        )
        self.assertTrue(paused, "the upstream's producer is not paused")
        self.assertLessEqual(probe.received, 65535)
        self.assertLess(written, 32 * MiB)
        probe.acking = True
        probe.acknowledge()
        yield probe.ended.wait()
        self.assertEqual((probe.status, probe.received), (200, size))
