"""
Property-based fuzzing of the HTTP/1.1 listener: raw request bytes, well
formed, half formed and random, fed in random pieces.

Whatever arrives, no exception escapes the protocol, every byte the client
gets parses as a sequence of HTTP responses, and once the client stops
sending, the connection ends by itself (nothing hangs). A longer run:
C{GATEWAYKIT_FUZZ_EXAMPLES=20000 python -m twisted.trial tests.test_http_fuzz}
(see C{docs/reliability.md}).
"""

from __future__ import annotations

import os
from typing import Any

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.config.model import Limits
from gatewaykit.testing import GatewayHarness, make_config, route, upstream

EXAMPLES = int(os.environ.get("GATEWAYKIT_FUZZ_EXAMPLES", "300"))
UPSTREAM_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# Pieces of requests, valid and not: hypothesis mixes them with random bytes.
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"get", b"G ET", b"CONNECT"]
TARGETS = [
    b"/",
    b"/a/b?c=d",
    b"/../../etc/passwd",
    b"/%2e%2e/x",
    b"http://other.example/x",
    b"https://u@h/x",
    b"*",
    b"//x",
    b"/a\x00b",
    b"/" + b"a" * 9000,
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b""]
ENDINGS = [b"\r\n", b"\n", b"\r", b"\r\r\n"]
NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Expect",
    b"Upgrade",
    b"X-Request-ID",
    b"Host ",
    b" Host",
    b"X(A)",
    b"",
]
VALUES = [
    b"a.example",
    b"0",
    b"5",
    b"+5",
    b"-1",
    b"5, 6",
    b"99999999999999999999999",
    b"chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"100-continue",
    b"websocket",
    b"a\x00b",
    b"x" * 10000,
]
CHUNKED_BODIES = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n0\r\n\r\n",
    b"5x\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffffff\r\nhello\r\n",
    b"0\r\nContent-Length: 5\r\n\r\n",
    b"3\r\nabc\n0\r\n\r\n",
]


def pick(options: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(options), st.binary(max_size=16))


@st.composite
def requests(draw: Any) -> bytes:
    """One request, put together from valid and broken pieces."""
    ending = draw(st.sampled_from(ENDINGS))
    line = b" ".join([draw(pick(METHODS)), draw(pick(TARGETS)), draw(pick(VERSIONS))])
    fields = draw(
        st.lists(st.tuples(pick(NAMES), pick(VALUES), st.sampled_from([b": ", b":", b" : "])))
    )
    head = [line] + [name + sep + value for name, value, sep in fields]
    body = draw(st.one_of(st.just(b""), st.sampled_from(CHUNKED_BODIES), st.binary(max_size=64)))
    return ending.join(head) + ending + ending + body


streams = st.one_of(
    st.lists(requests(), min_size=1, max_size=4).map(b"".join),
    st.binary(max_size=512),
    st.lists(st.one_of(requests(), st.binary(max_size=32)), max_size=4).map(b"".join),
)


def harness() -> GatewayHarness:
    config = make_config(
        routes=[route("app", path_prefix="/", upstream="app")],
        upstreams=[upstream("app", "10.0.0.1:8000")],
        limits=Limits(max_header_bytes=8192),
    )
    return GatewayHarness(config)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} cut at C{cuts} (positions, any order, any size)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def responses(data: bytes) -> list[int]:
    """The statuses of the responses in C{data}; raises if C{data} is not HTTP."""
    statuses: list[int] = []

    class Collector:
        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Collector())
    parser.feed_data(data)
    return statuses


class ListenerFuzzTests(SynchronousTestCase):
    """Random input into one client connection."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=EXAMPLES <= 300,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=streams, cuts=st.lists(st.integers(min_value=0), max_size=6))
    def test_any_bytes(self, data: bytes, cuts: list[int]) -> None:
        gateway = harness()
        client, transport = gateway.connect()
        answered = 0
        for piece in pieces(data, cuts):
            if transport.disconnecting:
                break
            client.dataReceived(piece)
            answered = self.answer_upstreams(gateway, answered)
        # The client is done sending; whatever was open must end by itself.
        if not transport.disconnecting:
            client.readConnectionLost()
        for _ in range(40):
            answered = self.answer_upstreams(gateway, answered)
            if transport.disconnecting:
                break
            gateway.reactor.advance(15)
        self.assertTrue(transport.disconnecting, (data, transport.value()[:300]))
        statuses = responses(transport.value())
        for status in statuses:
            self.assertTrue(100 <= status <= 599, statuses)

    def answer_upstreams(self, gateway: GatewayHarness, answered: int) -> int:
        """Answer each request the gateway sent upstream since the last call."""
        attempts = gateway.reactor.tcpClients
        while answered < len(attempts):
            upstream_side, upstream_transport = gateway.accept_upstream(answered)
            upstream_side.dataReceived(UPSTREAM_ANSWER)
            answered += 1
        return answered
