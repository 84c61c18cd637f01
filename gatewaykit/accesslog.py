"""
The access log: one line per answered request, in nginx's C{combined}
format or as JSON.

A log that cannot be written (a full disk) never stops serving: its lines
are dropped and counted, the write is tried again every L{RETRY_SECONDS},
and the error is logged at most once per L{REPORT_SECONDS}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable, Optional

from twisted.logger import Logger

from gatewaykit.config.model import AccessLogConfig
from gatewaykit.timer import Timer

# Lines written to a file are flushed at most this long after being written.
FLUSH_SECONDS = 1.0
# After a write error, lines are dropped without trying for this long: a
# full disk must not cost a failing system call per request.
RETRY_SECONDS = 1.0
# Write errors (and the lines they cost) are logged at most this often.
REPORT_SECONDS = 10.0

log = Logger()


class AccessLog:
    """
    Writes access log lines for finished streams.

    C{config.path} is C{"-"} for standard output, else a file opened for
    append (see L{reopen}, for log rotation) with C{opener}, which takes
    C{open}'s arguments.

    @ivar lines_dropped: lines lost to write errors so far.
    """

    def __init__(
        self, config: AccessLogConfig, clock: Any, opener: Callable[..., IO[str]] = open
    ) -> None:
        self.config = config
        self._clock = clock
        self._opener = opener
        self._json = config.format == "json"
        self._stdout = config.path == "-"
        self._flusher = Timer(clock, self.flush)
        self._second = -1
        self._stamp = ""
        # Lines handed to the file object since it last flushed without error.
        self._pending = 0
        # While writes fail: when to try again (None: writes work).
        self._retry_at: Optional[float] = None
        self._error = ""
        self.lines_dropped = 0
        # Lost since the last report, when that was, and whether writes
        # started working again since.
        self._unreported = 0
        self._reported_at: Optional[float] = None
        self._recovered = False
        self._reporter = Timer(clock, self._report)
        self._file: Optional[IO[str]] = sys.__stdout__ if self._stdout else self._open()

    def reopen(self) -> None:
        """(Re)open the log file, e.g. after logrotate moved it."""
        if self._stdout:
            return
        self._close_file()
        try:
            self._file = self._open()
        except OSError as exc:
            self._failed(exc)
            return
        if self._retry_at is not None:
            self._retry_at = self._clock.seconds()  # the next line tries the new file

    def close(self) -> None:
        """Flush and close the file (and report lines dropped but not yet reported)."""
        self.flush()
        if not self._stdout:
            self._close_file()
        self._file = None
        self._retry_at = None
        self._flusher.cancel()
        self._reporter.cancel()
        if self._unreported or self._recovered:
            self._report()

    def flush(self) -> None:
        """Write out buffered lines."""
        file = self._file
        if file is None:
            return
        try:
            file.flush()
        except OSError as exc:
            self._failed(exc)
            return
        self._pending = 0

    def log(self, stream: Any) -> None:
        """Write the line for one finished stream."""
        retry_at = self._retry_at
        if retry_at is not None and not self._try_again(retry_at):
            return
        file = self._file
        if file is None:
            return
        now = self._clock.seconds()
        line = self._json_line(stream, now) if self._json else self._combined_line(stream, now)
        self._pending += 1
        try:
            file.write(line)
            if self._stdout or retry_at is not None:
                file.flush()
                self._pending = 0
        except OSError as exc:
            self._failed(exc)
            return
        if retry_at is not None:
            self._retry_at = None
            self._recovered = True
            self._note()
        if not self._stdout and not self._flusher.armed:
            self._flusher.set(FLUSH_SECONDS)

    # -- write errors ---------------------------------------------------

    def _open(self) -> IO[str]:
        return self._opener(self.config.path, "a", buffering=65536, encoding="utf-8")

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except OSError as exc:
            # close() flushes first, and closes the descriptor even so.
            self._lose(self._pending, exc)

    def _try_again(self, retry_at: float) -> bool:
        """While failing: whether to try to write a line now (else it is dropped)."""
        if self._clock.seconds() < retry_at:
            self._lose(1)
            return False
        if self._file is None and not self._stdout:
            try:
                self._file = self._open()
            except OSError as exc:
                self._pending = 1
                self._failed(exc)
                return False
        return True

    def _failed(self, exc: OSError) -> None:
        """A write or flush failed: drop what is buffered, pause writing for a while."""
        self._retry_at = self._clock.seconds() + RETRY_SECONDS
        self._recovered = False
        self._flusher.clear()
        if not self._stdout:
            # The file object keeps what it could not write and would try
            # (and fail) again on every line: throw it away instead.
            self._close_file()
        self._lose(self._pending, exc)

    def _lose(self, lines: int, exc: Optional[OSError] = None) -> None:
        """C{lines} are lost; nothing written is pending any more."""
        self._pending = 0
        if exc is not None:
            self._error = exc.strerror or str(exc)
        if lines:
            self.lines_dropped += lines
            self._unreported += lines
            self._note()

    def _note(self) -> None:
        """There is something to report: now, or once the interval allows."""
        if self._reporter.armed:
            return
        now = self._clock.seconds()
        since = REPORT_SECONDS if self._reported_at is None else now - self._reported_at
        if since >= REPORT_SECONDS:
            self._report()
        else:
            self._reporter.set(REPORT_SECONDS - since)

    def _report(self) -> None:
        lines, self._unreported = self._unreported, 0
        if self._recovered:
            self._recovered = False
            log.info(
                "access log {path} writes work again; {lines} lines dropped",
                path=self.config.path,
                lines=lines,
            )
        elif lines:
            log.error(
                "access log {path} write failed: {error}; {lines} lines dropped",
                path=self.config.path,
                error=self._error,
                lines=lines,
            )
        else:
            return
        self._reported_at = self._clock.seconds()

    def _combined_line(self, stream: Any, now: float) -> str:
        request = stream.request
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        headers = request.headers
        target = request.target.decode("latin-1")
        return '%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"\n' % (
            request.client_host,
            self._stamp,
            request.method,
            _quote(target),
            request.version,
            stream.status,
            stream.bytes_sent,
            _quote(headers.get_str(b"referer") or "-"),
            _quote(headers.get_str(b"user-agent") or "-"),
        )

    def _json_line(self, stream: Any, now: float) -> str:
        request = stream.request
        headers = request.headers
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + ".%03dZ" % int((now % 1) * 1000),
            "listener": request.listener,
            "client": request.client_host,
            "method": request.method,
            "host": request.host,
            "uri": request.target.decode("latin-1"),
            "protocol": "HTTP/" + request.version,
            "status": stream.status,
            "bytes_sent": stream.bytes_sent,
            "bytes_received": stream.body_bytes,
            "duration_ms": round((now - request.received_at) * 1000, 3),
            "route": request.route,
            "upstream_target": stream.upstream_address or None,
            "request_id": request.request_id,
            "referer": headers.get_str(b"referer"),
            "user_agent": headers.get_str(b"user-agent"),
        }
        return json.dumps(record, separators=(",", ":")) + "\n"


def _quote(text: str) -> str:
    """Escape what would break a quoted field of the combined format."""
    if '"' in text or "\\" in text or not text.isprintable():
        return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text
