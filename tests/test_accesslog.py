"""
Tests for L{gatewaykit.accesslog}.
"""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.accesslog import FLUSH_SECONDS, AccessLog
from gatewaykit.config.model import AccessLogConfig
from gatewaykit.http.message import Headers, Request


class FinishedStream:
    def __init__(self, request: Request, status: int = 200, bytes_sent: int = 42) -> None:
        self.request = request
        self.status = status
        self.bytes_sent = bytes_sent
        self.body_bytes = 0
        self.upstream_address = "10.0.0.1:80"


def stream() -> FinishedStream:
    request = Request(
        method="GET",
        target=b'/a?b="c"',
        path="/a",
        query='b="c"',
        headers=Headers([(b"User-Agent", b"curl/8"), (b"Referer", b"http://r/")]),
        host="example.com",
        client_host="192.0.2.1",
        listener="web",
        request_id="rid",
        received_at=1700000000.0,
    )
    request.route = "api"
    return FinishedStream(request)


class AccessLogTests(SynchronousTestCase):
    """Both formats, and buffering."""

    def setUp(self):
        self.path = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1700000000.25)

    def read(self) -> str:
        with open(self.path) as f:
            return f.read()

    def test_combined(self):
        """The combined line has nginx's fields, with quotes escaped."""
        log = AccessLog(AccessLogConfig(self.path, "combined"), self.clock)
        log.log(stream())
        log.close()
        self.assertEqual(
            self.read(),
            '192.0.2.1 - - [14/Nov/2023:22:13:20 +0000] "GET /a?b=\\"c\\" HTTP/1.1" '
            '200 42 "http://r/" "curl/8"\n',
        )

    def test_json(self):
        """The JSON line carries route, target, request id and duration."""
        log = AccessLog(AccessLogConfig(self.path, "json"), self.clock)
        log.log(stream())
        log.close()
        record = json.loads(self.read())
        self.assertEqual(record["route"], "api")
        self.assertEqual(record["upstream_target"], "10.0.0.1:80")
        self.assertEqual(record["request_id"], "rid")
        self.assertEqual(record["duration_ms"], 250.0)
        self.assertEqual(record["time"], "2023-11-14T22:13:20.250Z")

    def test_flushed_within_a_second(self):
        """A line reaches the file within the flush interval."""
        log = AccessLog(AccessLogConfig(self.path, "combined"), self.clock)
        log.log(stream())
        self.clock.advance(FLUSH_SECONDS)
        self.assertIn("GET /a", self.read())
        log.close()

    def test_reopen(self):
        """After reopen, lines go to a new file at the same path."""
        import os

        log = AccessLog(AccessLogConfig(self.path, "combined"), self.clock)
        log.log(stream())
        log.flush()
        os.rename(self.path, self.path + ".1")
        log.reopen()
        log.log(stream())
        log.close()
        self.assertEqual(self.read().count("\n"), 1)
