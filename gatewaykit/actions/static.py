"""
The C{static} route action: files under a root folder, served as nginx's
C{root} directive does, with conditional and range requests.

See C{docs/static-files.md} for every behaviour and why.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import re
import stat
import time
from datetime import datetime, timezone
from email.utils import formatdate
from functools import lru_cache
from typing import Any, Optional
from urllib.parse import quote_from_bytes, unquote_to_bytes

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

from gatewaykit.config.model import StaticAction
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Headers, Request
from gatewaykit.http.wire import HTTPDate
from gatewaykit.interfaces import IRouteAction

log = Logger()

# Bytes read (and written) per step of the pull producer.
CHUNK_SIZE = 64 * 1024

_ALLOW = ((b"Allow", b"GET, HEAD"),)
_METHODS = frozenset({"GET", "HEAD"})
# O_NONBLOCK so that opening a FIFO under the root cannot stall the reactor;
# O_NOFOLLOW so that a symlink swapped in after the containment check is
# refused rather than followed.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ENXIO})
_FORBIDDEN_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP})

# Python's built-in table (not /etc/mime.types, so answers do not change
# from host to host), plus common web types it lacks.
_MIME_TYPES = mimetypes.MimeTypes()
_EXTRA_TYPES = {
    ".gz": "application/gzip",
    ".map": "application/json",
    ".md": "text/markdown",
    ".otf": "font/otf",
    ".ttf": "font/ttf",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
}
_UTF8_TYPES = frozenset({"application/javascript", "application/json"})
_DEFAULT_TYPE = b"application/octet-stream"

# Characters kept as they are in a Location built from the request: every
# character allowed in a path or query, and "%" so existing escapes stay.
_URI_SAFE = "/?%!$&'()*+,;=:@-._~"

_ENTITY_TAG = re.compile(rb'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_BYTE_RANGE = re.compile(rb"^([0-9]{0,30})-([0-9]{0,30})$")
_MONTHS = {
    name: number
    for number, name in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)
}
_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_IMF_FIXDATE = re.compile(
    _DAY + rb", ([0-9]{2}) ([A-Z][a-z]{2}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_RFC850_DATE = re.compile(
    rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    rb"([0-9]{2})-([A-Z][a-z]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_ASCTIME_DATE = re.compile(
    _DAY + rb" ([A-Z][a-z]{2}) ([ 0-9][0-9]) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)


def not_found(detail: str) -> GatewayError:
    """A 404 for a file that is not there (or may not be shown)."""
    return GatewayError(404, "not_found", detail)


def content_type(name: str) -> bytes:
    """The C{Content-Type} for a file called C{name}."""
    extension = os.path.splitext(name)[1].lower()
    if not extension:
        return _DEFAULT_TYPE
    kind = (
        _EXTRA_TYPES.get(extension)
        or _MIME_TYPES.types_map[True].get(extension)
        or _MIME_TYPES.types_map[False].get(extension)
    )
    if kind is None:
        return _DEFAULT_TYPE
    if kind.startswith("text/") or kind in _UTF8_TYPES:
        kind += "; charset=utf-8"
    return kind.encode("ascii")


# Distinct dates remembered: a Date changes once a second, a
# Last-Modified once per resource version.
REMEMBERED_DATES = 1024


@lru_cache(maxsize=REMEMBERED_DATES)
def parse_http_date(value: bytes) -> Optional[int]:
    """
    The POSIX time of an HTTP-date in any of the three formats RFC 9110
    section 5.6.7 requires recipients to accept, or C{None} if invalid.
    """
    value = value.strip()
    match = _IMF_FIXDATE.fullmatch(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
    else:
        match = _ASCTIME_DATE.fullmatch(value)
        if match is not None:
            month, day, hour, minute, second, year = match.groups()
        else:
            match = _RFC850_DATE.fullmatch(value)
            if match is None:
                return None
            day, month, short_year, hour, minute, second = match.groups()
            # A two-digit year more than 50 years ahead is in the past century.
            this_year = time.gmtime().tm_year
            century = this_year - this_year % 100
            full_year = century + int(short_year)
            if full_year > this_year + 50:
                full_year -= 100
            year = b"%d" % full_year
    number = _MONTHS.get(month)
    if number is None:
        return None
    try:
        moment = datetime(
            int(year), number, int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc
        )
    except ValueError:
        return None
    return int(moment.timestamp())


class Unsatisfiable(Exception):
    """The range asked for lies wholly outside the file: 416."""


def parse_range(value: bytes, size: int) -> Optional[tuple[int, int]]:
    """
    The C{(start, end)} (end excluded) of a single byte range C{Range}
    value for a body of C{size} bytes, or C{None} when the header is to be
    ignored: another unit, malformed, or more than one range.

    @raise Unsatisfiable: no byte of the range exists.
    """
    unit, equals, spec = value.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return None
    ranges = [part.strip() for part in spec.split(b",") if part.strip()]
    if len(ranges) != 1:
        return None
    match = _BYTE_RANGE.match(ranges[0])
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable()
    end = min(int(last) + 1, size) if last else size
    return start, end


def _tags_match(values: list[bytes], etag: bytes, weak: bool) -> bool:
    """
    Whether an C{If-Match}/C{If-None-Match} list matches our strong C{etag},
    with the weak comparison if C{weak}, else the strong one.
    """
    listed = b",".join(values).strip()
    if listed == b"*":
        return True
    for tag in _ENTITY_TAG.findall(listed):
        if tag.startswith(b"W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
    return False


def _single_date(values: list[bytes]) -> Optional[int]:
    """The date of a date field sent exactly once, else C{None} (ignored)."""
    if len(values) != 1:
        return None
    return parse_http_date(values[0])


def precondition_status(headers: Headers, etag: bytes, mtime: int) -> Optional[int]:
    """
    Evaluate the preconditions of a GET or HEAD in RFC 9110 section 13.2.2's
    order: 412 or 304 when one decides the answer, else C{None}.
    """
    if_match = headers.get_all(b"if-match")
    if if_match:
        if not _tags_match(if_match, etag, weak=False):
            return 412
    else:
        since = _single_date(headers.get_all(b"if-unmodified-since"))
        if since is not None and mtime > since:
            return 412
    if_none_match = headers.get_all(b"if-none-match")
    if if_none_match:
        if _tags_match(if_none_match, etag, weak=True):
            return 304
    else:
        since = _single_date(headers.get_all(b"if-modified-since"))
        if since is not None and mtime <= since:
            return 304
    return None


def _if_range_holds(headers: Headers, etag: bytes, mtime: int) -> bool:
    """Whether a C{Range} may be honoured given C{If-Range} (RFC 9110 13.1.5)."""
    value = headers.get(b"if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        # Only a strong comparison: a weak tag never matches.
        return value == etag
    return parse_http_date(value) == mtime


def _inside(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def _uri_text(value: str) -> bytes:
    """A path or query from the request, escaped where a header needs it."""
    return quote_from_bytes(value.encode("latin-1"), safe=_URI_SAFE).encode("ascii")


@implementer(IPullProducer)
class FileBody:
    """
    Writes bytes C{start} to C{end} (excluded) of an open file to a stream,
    C{CHUNK_SIZE} at a time as the stream pulls, then finishes the stream.
    The file descriptor is closed at the end, on error, and when the client
    goes away.
    """

    def __init__(self, stream: Any, fd: int, start: int, end: int) -> None:
        self._stream = stream
        self._fd: Optional[int] = fd
        self._offset = start
        self._end = end

    @property
    def closed(self) -> bool:
        """Whether the file has been closed."""
        return self._fd is None

    def start(self) -> None:
        """Begin sending; the response head must already be written."""
        stream = self._stream
        if stream.lost:
            # Nobody will pull (or report the loss): close now.
            self._close()
            return
        stream.handler = self
        try:
            if self._end - self._offset <= CHUNK_SIZE:
                # One read answers it: skip the producer round trip.
                self.resumeProducing()
            else:
                stream.registerProducer(self, False)
        except BaseException:
            self._close()
            raise

    def resumeProducing(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.pread(fd, min(CHUNK_SIZE, self._end - self._offset), self._offset)
        except OSError as exc:
            log.error("static file read failed: {error}", error=exc)
            self._fail()
            return
        if not data:
            # The file shrank after its length was sent: cut the response
            # so the client sees it is incomplete.
            log.warn("static file shrank while being sent")
            self._fail()
            return
        self._offset += len(data)
        stream = self._stream
        if self._offset >= self._end:
            self._close()
            stream.write(data)
            stream.finish()
        else:
            stream.write(data)

    def stopProducing(self) -> None:
        self._close()

    def stream_lost(self) -> None:
        """The client went away."""
        self._close()

    def _fail(self) -> None:
        self._close()
        self._stream.abort()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@implementer(IRouteAction)
class StaticFiles:
    """Serve the files under C{config.root}, with C{config.index} for folders."""

    def __init__(self, config: StaticAction, reactor: Any) -> None:
        self._root = os.fsencode(config.root)
        self._index = os.fsencode(config.index)
        self._index_name = config.index
        self._date = HTTPDate(reactor.seconds)

    def handle(self, request: Request, stream: Any) -> None:
        if request.method not in _METHODS:
            stream.send_error(
                GatewayError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed on static files",
                    headers=_ALLOW,
                )
            )
            return
        try:
            self._answer(request, stream)
        except GatewayError as error:
            stream.send_error(error)

    def _answer(self, request: Request, stream: Any) -> None:
        opened = self._regular_file(request, stream)
        if opened is None:
            return
        fd, info, name = opened
        try:
            span = self._send_head(request, stream, info, name)
        except BaseException:
            os.close(fd)
            raise
        if span is None:
            os.close(fd)
            stream.finish()
            return
        FileBody(stream, fd, *span).start()

    def _regular_file(
        self, request: Request, stream: Any
    ) -> Optional[tuple[int, os.stat_result, str]]:
        """
        The open file, its status and its name for C{request}, or C{None}
        when a folder was asked for without its slash and the redirect sent.
        """
        path = self._file_path(request.path)
        fd, info = self._open(path, request.path)
        name = os.fsdecode(path.rpartition(b"/")[2])
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            if not request.path.endswith("/"):
                self._redirect_to_folder(request, stream)
                return None
            fd, info = self._open(path + self._index, request.path)
            name = self._index_name
        elif request.path.endswith("/"):
            # realpath() dropped the slash: a file asked for as a folder.
            os.close(fd)
            raise not_found(f"{request.path} is a file, not a folder")
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise not_found(f"no file for {request.path}")
        return fd, info, name

    def _file_path(self, request_path: str) -> bytes:
        """The file system path for a normalised request path, fully decoded."""
        segments = []
        for segment in request_path.encode("latin-1").split(b"/"):
            decoded = unquote_to_bytes(segment)
            if b"/" in decoded or b"\0" in decoded or decoded in (b".", b".."):
                raise not_found(f"no file for {request_path}")
            segments.append(decoded)
        return self._root + b"/".join(segments)

    def _open(self, path: bytes, request_path: str) -> tuple[int, os.stat_result]:
        """Open C{path} if it lies inside the root once symlinks are resolved."""
        real = os.path.realpath(path)
        if not _inside(real, os.path.realpath(self._root)):
            raise not_found(f"no file for {request_path}")
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            raise _open_error(exc, request_path) from None
        try:
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise

    def _redirect_to_folder(self, request: Request, stream: Any) -> None:
        location = _uri_text(request.path + "/")
        if request.query:
            location += b"?" + _uri_text(request.query)
        stream.respond(
            301,
            [
                (b"Location", location),
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"X-Request-ID", request.request_id.encode("ascii")),
            ],
            b"Moved to " + location + b"\n",
        )

    def _send_head(
        self, request: Request, stream: Any, info: os.stat_result, name: str
    ) -> Optional[tuple[int, int]]:
        """
        Write the response head for a file with status C{info}: the
        C{(start, end)} span of the file the body holds, or C{None} for none.
        """
        size = info.st_size
        mtime = int(info.st_mtime)
        etag = b'"%x-%x"' % (mtime, size)
        validators = [
            (b"Last-Modified", formatdate(mtime, usegmt=True).encode("ascii")),
            (b"ETag", etag),
        ]
        common = [
            (b"Date", self._date()),
            (b"X-Request-ID", request.request_id.encode("ascii")),
        ]
        headers = request.headers
        decided = precondition_status(headers, etag, mtime)
        if decided == 412:
            raise GatewayError(412, "precondition_failed", "a precondition did not hold")
        if decided == 304:
            stream.write_head(304, validators + common)
            return None
        fields = [(b"Content-Type", content_type(name))] + validators
        fields.append((b"Accept-Ranges", b"bytes"))
        status, start, end = 200, 0, size
        ranges = headers.get_all(b"range")
        # Range is defined for GET only (RFC 9110 14.2): HEAD ignores it.
        if ranges and request.method == "GET" and _if_range_holds(headers, etag, mtime):
            try:
                span = parse_range(b",".join(ranges), size)
            except Unsatisfiable:
                raise GatewayError(
                    416,
                    "range_not_satisfiable",
                    f"the range asked for is outside the {size} bytes of the file",
                    headers=((b"Content-Range", b"bytes */%d" % size),),
                ) from None
            if span is not None:
                status, (start, end) = 206, span
                fields.append((b"Content-Range", b"bytes %d-%d/%d" % (start, end - 1, size)))
        stream.write_head(status, fields + common, end - start)
        if request.method == "HEAD" or start == end:
            return None
        return start, end


def _open_error(exc: OSError, request_path: str) -> GatewayError:
    if exc.errno in _NOT_FOUND_ERRNOS:
        return not_found(f"no file for {request_path}")
    if exc.errno in _FORBIDDEN_ERRNOS:
        return GatewayError(403, "forbidden", f"{request_path} may not be read")
    log.error("opening a static file failed: {error}", error=exc)
    return GatewayError(500, "internal_error", f"{request_path} could not be opened")

