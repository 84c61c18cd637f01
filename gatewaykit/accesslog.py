"""
The access log: one line per answered request, in nginx's C{combined}
format or as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Optional

from gatewaykit.config.model import AccessLogConfig
from gatewaykit.timer import Timer

# Lines written to a file are flushed at most this long after being written.
FLUSH_SECONDS = 1.0


class AccessLog:
    """
    Writes access log lines for finished streams.

    @param path: C{"-"} for standard output, else a file opened for append
        (see L{reopen}, for log rotation).
    """

    def __init__(self, config: AccessLogConfig, clock: Any) -> None:
        self.config = config
        self._clock = clock
        self._json = config.format == "json"
        self._file: Optional[IO[str]] = None
        self._flusher = Timer(clock, self.flush)
        self._second = -1
        self._stamp = ""
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the log file, e.g. after logrotate moved it."""
        if self.config.path == "-":
            self._file = sys.__stdout__
            return
        if self._file is not None:
            self._file.close()
        self._file = open(self.config.path, "a", buffering=65536, encoding="utf-8")

    def close(self) -> None:
        """Flush and close the file."""
        self._flusher.cancel()
        if self._file is not None:
            self._file.flush()
            if self._file is not sys.__stdout__:
                self._file.close()
            self._file = None

    def flush(self) -> None:
        """Write out buffered lines."""
        if self._file is not None:
            self._file.flush()

    def log(self, stream: Any) -> None:
        """Write the line for one finished stream."""
        file = self._file
        if file is None:
            return
        now = self._clock.seconds()
        line = self._json_line(stream, now) if self._json else self._combined_line(stream, now)
        file.write(line)
        if self.config.path == "-":
            file.flush()
        elif not self._flusher.armed:
            self._flusher.set(FLUSH_SECONDS)

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
