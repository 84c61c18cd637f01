"""
Tests for L{gatewaykit.accesslog}.
"""

import errno
import io
import json
import os
import re
import sys
from typing import Optional

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit import accesslog
from gatewaykit.accesslog import FLUSH_SECONDS, REPORT_SECONDS, RETRY_SECONDS, AccessLog
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


class Disk:
    """
    Files whose writes fail with ENOSPC while C{full}, behind Python's real
    buffered text layer (as C{open} gives them).
    """

    def __init__(self) -> None:
        self.full = False
        self.data = bytearray()
        self.writes = 0  # system calls, failed or not
        self.opened = 0

    def open(self, path: str, mode: str, buffering: int, encoding: str) -> io.TextIOWrapper:
        self.opened += 1
        raw = _DiskFile(self)
        return io.TextIOWrapper(io.BufferedWriter(raw, buffering), encoding=encoding)

    def lines(self) -> list[str]:
        return self.data.decode("utf-8").splitlines()


class _DiskFile(io.RawIOBase):
    def __init__(self, disk: Disk) -> None:
        self._disk = disk

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._disk.writes += 1
        if self._disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.data += data
        return len(data)


class WriteErrorTests(SynchronousTestCase):
    """A log that cannot be written (a full disk) costs lines, never requests."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.start = self.clock.seconds()
        self.disk = Disk()
        self.events: list[tuple[float, dict]] = []

        def observer(event: dict) -> None:
            self.events.append((self.clock.seconds() - self.start, event))

        self.patch(accesslog, "log", Logger(observer=observer))
        config = AccessLogConfig("/var/log/x.log", "combined")
        self.log = AccessLog(config, self.clock, self.disk.open)

    def run_for(self, seconds: float, log: Optional[AccessLog] = None) -> int:
        """Log 8 lines a second for C{seconds} (from the start of each eighth); how many."""
        count = int(seconds * 8)
        for _ in range(count):
            (log or self.log).log(stream())
            self.clock.advance(0.125)
        return count

    def reports(self) -> list[str]:
        return [formatEvent(event) for _, event in self.events]

    def dropped_in_reports(self) -> int:
        counts = [re.search(r"(\d+) lines dropped", text) for text in self.reports()]
        return sum(int(match.group(1)) for match in counts if match)

    def test_full_disk_raises_nothing(self):
        """Lines logged and flushed onto a full disk raise nothing; all are counted as dropped."""
        self.disk.full = True
        logged = self.run_for(5)
        self.log.close()
        self.assertEqual(self.disk.data, b"")
        self.assertEqual(self.log.lines_dropped, logged)
        self.assertEqual(self.dropped_in_reports(), logged)

    def test_reported_once_per_interval(self):
        """35 s of failing writes: one error message every 10 s (and one on close), with the counts."""
        self.disk.full = True
        self.run_for(35)
        self.log.close()
        self.assertEqual([when for when, _ in self.events], [1, 11, 21, 31, 35])
        for text in self.reports():
            self.assertRegex(
                text,
                r"^access log /var/log/x.log write failed: No space left on device;"
                r" \d+ lines dropped$",
            )
        self.assertEqual({event["log_level"] for _, event in self.events}, {LogLevel.error})
        self.assertEqual(self.dropped_in_reports(), 35 * 8)

    def test_few_system_calls_while_failing(self):
        """While failing, writing is tried once per RETRY_SECONDS (a few calls each), not per line."""
        self.run_for(1)
        self.disk.full = True
        before = self.disk.writes
        self.run_for(10)
        tries = 10 / RETRY_SECONDS + 1
        self.assertLessEqual(self.disk.writes - before, 3 * tries)

    def test_recovers(self):
        """Once the disk has room, lines are written again and the recovery is reported with the count."""
        self.run_for(2)
        self.disk.full = True
        self.run_for(5)
        self.disk.full = False
        self.run_for(2)
        self.log.close()
        self.assertEqual([when for when, _ in self.events], [3, 9])
        self.assertEqual(
            self.reports(),
            [
                "access log /var/log/x.log write failed: No space left on device; 8 lines dropped",
                "access log /var/log/x.log writes work again; 32 lines dropped",
            ],
        )
        self.assertEqual(self.events[1][1]["log_level"], LogLevel.info)
        self.assertEqual(self.log.lines_dropped, 40)
        lines = self.disk.lines()
        self.assertEqual(len(lines), 16 + 16)
        self.assertTrue(all(line.startswith("192.0.2.1 - - [") for line in lines))

    def test_close_reports_the_rest(self):
        """Lines dropped after the last report are reported when the log closes."""
        self.disk.full = True
        self.run_for(3)
        self.log.close()
        self.assertEqual([when for when, _ in self.events], [1, 3])
        self.assertEqual(self.dropped_in_reports(), 24)

    def test_reopen_tries_at_once(self):
        """After reopen (log rotation freed space), the next line is written."""
        self.disk.full = True
        self.run_for(1.5)
        self.disk.full = False
        self.log.reopen()
        self.log.log(stream())
        self.log.close()
        self.assertEqual(len(self.disk.lines()), 1)
        self.assertEqual(self.log.lines_dropped, 12)

    def test_stdout(self):
        """Standard output that cannot be written drops lines the same way, and recovers."""
        self.patch(sys, "__stdout__", self.disk.open("-", "a", 8192, "utf-8"))
        log = AccessLog(AccessLogConfig("-", "json"), self.clock)
        self.disk.full = True
        self.run_for(2, log)
        self.disk.full = False
        self.run_for(1, log)
        self.assertEqual(log.lines_dropped, 16)
        self.assertEqual([when for when, _ in self.events], [0])
        self.clock.advance(REPORT_SECONDS)
        self.assertEqual(len(self.events), 2)
        self.assertEqual(self.dropped_in_reports(), 16)
        # A line that failed may still come out once writing works again.
        self.assertGreaterEqual(len(self.disk.lines()), 8)
