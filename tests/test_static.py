"""
Tests for L{gatewaykit.actions.static}.
"""

from __future__ import annotations

import errno
import json
import os
from email.utils import formatdate
from typing import Any, Optional

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.actions.static import (
    CHUNK_SIZE,
    FileBody,
    StaticFiles,
    Unsatisfiable,
    content_type,
    parse_http_date,
    parse_range,
)
from gatewaykit.config.model import StaticAction
from gatewaykit.interfaces import IRouteAction
from gatewaykit.testing import (
    GatewayHarness,
    Response,
    TCPStringTransport,
    make_config,
    parse_response,
    parse_responses,
    route,
)

MTIME = 1_700_000_000
MTIME_TEXT = "Tue, 14 Nov 2023 22:13:20 GMT"
TEN = b"0123456789"


def raw_request(path: str, *fields: str, method: str = "GET") -> bytes:
    """The bytes of a request for C{path} with extra C{Name: value} fields."""
    lines = [f"{method} {path} HTTP/1.1", "Host: files.test", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def problem_type(response: Response) -> str:
    """The C{type} of a problem+json body."""
    return json.loads(response.body)["type"]


def producer_of(transport: TCPStringTransport) -> FileBody:
    """The file producer registered on C{transport}."""
    producer = transport.producer
    if not isinstance(producer, FileBody):
        raise AssertionError(f"expected a FileBody producer, got {producer!r}")
    return producer


def pull_all(transport: TCPStringTransport, limit: int = 10_000) -> int:
    """Pull from the registered producer until it unregisters; the pulls made."""
    for pulls in range(limit):
        if transport.producer is None:
            return pulls
        producer_of(transport).resumeProducing()
    raise AssertionError("the producer never finished")


class _StaticCase(SynchronousTestCase):
    """A root folder served by a gateway on a fake transport."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.harness = self.serve()

    def serve(
        self, index: Optional[str] = None, root: Optional[str] = None, **match: Any
    ) -> GatewayHarness:
        """A gateway with one static route over C{root} (default: C{self.root})."""
        config = StaticAction(root=root or self.root)
        if index is not None:
            config = StaticAction(root=config.root, index=index)
        return GatewayHarness(make_config(routes=[route("files", static=config, **match)]))

    def add_file(self, name: str, content: bytes = TEN, under: Optional[str] = None) -> str:
        """Write C{content} to C{name} under the root with mtime L{MTIME}."""
        path = os.path.join(under or self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        os.utime(path, (MTIME, MTIME))
        return path

    def request(self, path: str, *fields: str, method: str = "GET") -> Response:
        """Send one request and parse its response."""
        return self.harness.request(
            raw_request(path, *fields, method=method), head_request=method == "HEAD"
        )

    def track_files(self) -> tuple[list[int], list[int]]:
        """Record every file descriptor opened and closed from now on."""
        opened: list[int] = []
        closed: list[int] = []
        real_open, real_close = os.open, os.close

        def tracking_open(*args: Any, **kwargs: Any) -> int:
            fd = real_open(*args, **kwargs)
            opened.append(fd)
            return fd

        def tracking_close(fd: int) -> None:
            closed.append(fd)
            real_close(fd)

        self.patch(os, "open", tracking_open)
        self.patch(os, "close", tracking_close)
        return opened, closed

    def refuse_open(self, name: str, code: int) -> None:
        """Make opening any path ending in C{name} fail with C{code}."""
        real_open = os.open

        def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
            if os.fsencode(path).endswith(os.fsencode(name)):
                raise OSError(code, os.strerror(code))
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", refusing)


class StaticFilesTests(_StaticCase):
    """L{StaticFiles} is a route action."""

    def test_interface(self) -> None:
        """L{StaticFiles} provides L{IRouteAction}."""
        action = StaticFiles(StaticAction(root=self.root), self.harness.reactor)
        self.assertTrue(verifyObject(IRouteAction, action))


class ServeTests(_StaticCase):
    """A GET for a regular file answers it with its metadata."""

    def test_body(self) -> None:
        """The body is the file's content."""
        self.add_file("hello.txt", b"hello, world\n")
        response = self.request("/hello.txt")
        self.assertEqual((response.status, response.body), (200, b"hello, world\n"))

    def test_content_length(self) -> None:
        """C{Content-Length} is the file's size."""
        self.add_file("hello.txt")
        self.assertEqual(self.request("/hello.txt").headers.get(b"content-length"), b"10")

    def test_text_type_has_charset(self) -> None:
        """A C{text/*} type is sent with C{charset=utf-8}."""
        self.add_file("page.html")
        self.assertEqual(
            self.request("/page.html").headers.get(b"content-type"), b"text/html; charset=utf-8"
        )

    def test_json_type_has_charset(self) -> None:
        """C{application/json} is sent with C{charset=utf-8}."""
        self.add_file("data.json")
        self.assertEqual(
            self.request("/data.json").headers.get(b"content-type"),
            b"application/json; charset=utf-8",
        )

    def test_binary_type(self) -> None:
        """A binary type gets no charset."""
        self.add_file("logo.png")
        self.assertEqual(self.request("/logo.png").headers.get(b"content-type"), b"image/png")

    def test_unknown_type(self) -> None:
        """An unknown extension is C{application/octet-stream}."""
        self.add_file("blob.qqq")
        self.assertEqual(
            self.request("/blob.qqq").headers.get(b"content-type"), b"application/octet-stream"
        )

    def test_last_modified(self) -> None:
        """C{Last-Modified} is the file's mtime as an HTTP date."""
        self.add_file("hello.txt")
        self.assertEqual(
            self.request("/hello.txt").headers.get(b"last-modified"), MTIME_TEXT.encode()
        )

    def test_etag(self) -> None:
        """The C{ETag} is strong and made of mtime and size in hex, as nginx's."""
        self.add_file("hello.txt")
        self.assertEqual(
            self.request("/hello.txt").headers.get(b"etag"), b'"%x-%x"' % (MTIME, 10)
        )

    def test_accept_ranges(self) -> None:
        """C{Accept-Ranges: bytes} announces range support."""
        self.add_file("hello.txt")
        self.assertEqual(self.request("/hello.txt").headers.get(b"accept-ranges"), b"bytes")

    def test_date(self) -> None:
        """A C{Date} field is sent, from the reactor's clock."""
        self.add_file("hello.txt")
        self.assertEqual(
            self.request("/hello.txt").headers.get(b"date"), formatdate(0, usegmt=True).encode()
        )

    def test_request_id(self) -> None:
        """The client's sane C{X-Request-ID} is echoed."""
        self.add_file("hello.txt")
        response = self.request("/hello.txt", "X-Request-ID: abc-123")
        self.assertEqual(response.headers.get(b"x-request-id"), b"abc-123")

    def test_empty_file(self) -> None:
        """An empty file is a 200 with an empty body."""
        self.add_file("empty.txt", b"")
        response = self.request("/empty.txt")
        self.assertEqual(
            (response.status, response.headers.get(b"content-length"), response.body),
            (200, b"0", b""),
        )

    def test_subfolder(self) -> None:
        """Files in subfolders are served."""
        self.add_file("a/b/c.txt", b"deep")
        self.assertEqual(self.request("/a/b/c.txt").body, b"deep")

    def test_root_semantics(self) -> None:
        """The whole request path is appended to the root, as nginx's C{root}."""
        self.harness = self.serve(path_prefix="/assets")
        self.add_file("assets/app.css", b"body{}")
        self.assertEqual(self.request("/assets/app.css").body, b"body{}")

    def test_percent_decoded(self) -> None:
        """Escapes in the path are decoded to find the file."""
        self.add_file("a b.txt", b"space")
        self.assertEqual(self.request("/a%20b.txt").body, b"space")

    def test_utf8_name(self) -> None:
        """A UTF-8 encoded name finds the file of that name."""
        self.add_file("\u00e9t\u00e9.txt", b"summer")
        self.assertEqual(self.request("/%C3%A9t%C3%A9.txt").body, b"summer")

    def test_file_closed(self) -> None:
        """The file is closed once the response is sent."""
        self.add_file("hello.txt")
        opened, closed = self.track_files()
        self.request("/hello.txt")
        self.assertEqual((len(opened), sorted(opened)), (1, sorted(closed)))


class HeadTests(_StaticCase):
    """HEAD answers like GET without a body."""

    def test_same_fields(self) -> None:
        """HEAD gets the same fields as GET."""
        self.add_file("hello.txt")
        get = self.request("/hello.txt", "X-Request-ID: same")
        head = self.request("/hello.txt", "X-Request-ID: same", method="HEAD")
        self.assertEqual((head.status, list(head.headers)), (get.status, list(get.headers)))

    def test_no_body(self) -> None:
        """Nothing follows the head of a HEAD response."""
        self.add_file("hello.txt")
        protocol, transport = self.harness.connect()
        protocol.dataReceived(raw_request("/hello.txt", method="HEAD"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))

    def test_file_not_read(self) -> None:
        """HEAD does not read the file."""
        self.add_file("hello.txt")

        def no_reading(*args: Any) -> bytes:
            raise AssertionError("the file was read")

        self.patch(os, "pread", no_reading)
        self.assertEqual(self.request("/hello.txt", method="HEAD").status, 200)

    def test_large_file_no_producer(self) -> None:
        """HEAD of a large file registers no producer."""
        self.add_file("big.bin", b"x" * (CHUNK_SIZE * 3))
        protocol, transport = self.harness.connect()
        protocol.dataReceived(raw_request("/big.bin", method="HEAD"))
        self.assertIsNone(transport.producer)


class FolderTests(_StaticCase):
    """Folders redirect to their slash form and serve their index file."""

    def test_redirect(self) -> None:
        """A folder without its trailing slash is a 301 to the slash form."""
        os.makedirs(os.path.join(self.root, "docs"))
        response = self.request("/docs")
        self.assertEqual(
            (response.status, response.headers.get(b"location")), (301, b"/docs/")
        )

    def test_redirect_keeps_query(self) -> None:
        """The redirect keeps the query string."""
        os.makedirs(os.path.join(self.root, "docs"))
        response = self.request("/docs?page=2&q=a%20b")
        self.assertEqual(response.headers.get(b"location"), b"/docs/?page=2&q=a%20b")

    def test_redirect_has_request_id(self) -> None:
        """The redirect carries C{X-Request-ID}."""
        os.makedirs(os.path.join(self.root, "docs"))
        response = self.request("/docs", "X-Request-ID: r-1")
        self.assertEqual(response.headers.get(b"x-request-id"), b"r-1")

    def test_index(self) -> None:
        """A folder with its slash serves its index file."""
        self.add_file("docs/index.html", b"<h1>docs</h1>")
        response = self.request("/docs/")
        self.assertEqual(
            (response.body, response.headers.get(b"content-type")),
            (b"<h1>docs</h1>", b"text/html; charset=utf-8"),
        )

    def test_root_index(self) -> None:
        """C{/} serves the root's index file."""
        self.add_file("index.html", b"home")
        self.assertEqual(self.request("/").body, b"home")

    def test_custom_index(self) -> None:
        """The index file's name comes from the config."""
        self.harness = self.serve(index="start.txt")
        self.add_file("start.txt", b"start")
        self.assertEqual(self.request("/").body, b"start")

    def test_no_index(self) -> None:
        """A folder without an index file is a 404, never a listing."""
        self.add_file("docs/other.html")
        response = self.request("/docs/")
        self.assertEqual(
            (response.status, problem_type(response)), (404, "urn:gatewaykit:error:not_found")
        )

    def test_index_is_folder(self) -> None:
        """An index that is itself a folder is a 404."""
        os.makedirs(os.path.join(self.root, "docs", "index.html"))
        self.assertEqual(self.request("/docs/").status, 404)

    def test_file_with_slash(self) -> None:
        """A file asked for with a trailing slash is a 404."""
        self.add_file("hello.txt")
        self.assertEqual(self.request("/hello.txt/").status, 404)

    def test_folder_closed(self) -> None:
        """The folder opened to look at it is closed."""
        os.makedirs(os.path.join(self.root, "docs"))
        opened, closed = self.track_files()
        self.request("/docs/")
        self.assertEqual((len(opened), sorted(opened)), (1, sorted(closed)))


class NotFoundTests(_StaticCase):
    """Missing and unreadable files."""

    def test_missing(self) -> None:
        """A missing file is a 404 C{not_found} problem."""
        response = self.request("/nothing.txt")
        self.assertEqual(
            (response.status, problem_type(response)), (404, "urn:gatewaykit:error:not_found")
        )

    def test_missing_has_request_id(self) -> None:
        """The 404 carries C{X-Request-ID}."""
        response = self.request("/nothing.txt", "X-Request-ID: r-2")
        self.assertEqual(response.headers.get(b"x-request-id"), b"r-2")

    def test_missing_folder(self) -> None:
        """A file in a missing folder is a 404."""
        self.assertEqual(self.request("/no/such/file.txt").status, 404)

    def test_below_a_file(self) -> None:
        """A path continuing below a regular file is a 404."""
        self.add_file("hello.txt")
        self.assertEqual(self.request("/hello.txt/more").status, 404)

    def test_forbidden(self) -> None:
        """A file the gateway may not read is a 403 C{forbidden} problem."""
        self.add_file("secret.txt")
        self.refuse_open("secret.txt", errno.EACCES)
        response = self.request("/secret.txt")
        self.assertEqual(
            (response.status, problem_type(response)), (403, "urn:gatewaykit:error:forbidden")
        )

    def test_io_error(self) -> None:
        """Any other failure to open is a 500 C{internal_error}."""
        self.add_file("broken.txt")
        self.refuse_open("broken.txt", errno.EIO)
        self.assertEqual(self.request("/broken.txt").status, 500)

    def test_fifo(self) -> None:
        """A FIFO is not a regular file: 404 at once, without blocking."""
        os.mkfifo(os.path.join(self.root, "pipe"))
        self.assertEqual(self.request("/pipe").status, 404)


class ContainmentTests(_StaticCase):
    """Nothing outside the root is ever served."""

    def setUp(self) -> None:
        super().setUp()
        self.outside = os.path.abspath(self.mktemp())
        self.secret = self.add_file("secret.txt", b"secret", under=self.outside)
        self.add_file("a/b", b"inside")

    def test_dot_dot_refused_by_router(self) -> None:
        """An encoded C{..} climbing above the root is a 400 before the action."""
        self.assertEqual(self.request("/%2e%2e/etc/passwd").status, 400)

    def test_encoded_slash(self) -> None:
        """A C{%2F} inside a segment is a 404, not a separator."""
        self.assertEqual(self.request("/a%2Fb").status, 404)

    def test_encoded_slash_climbing(self) -> None:
        """C{..%2F} cannot climb out of the root."""
        self.assertEqual(self.request("/..%2F..%2Fetc/passwd").status, 404)

    def test_nul(self) -> None:
        """A decoded NUL is a 404."""
        self.assertEqual(self.request("/a/b%00.html").status, 404)

    def test_symlink_out_file(self) -> None:
        """A symlink to a file outside the root is a 404."""
        os.symlink(self.secret, os.path.join(self.root, "leak.txt"))
        self.assertEqual(self.request("/leak.txt").status, 404)

    def test_symlink_out_folder(self) -> None:
        """A symlink to a folder outside the root is a 404 for files under it."""
        os.symlink(self.outside, os.path.join(self.root, "out"))
        self.assertEqual(self.request("/out/secret.txt").status, 404)

    def test_symlink_inside(self) -> None:
        """A symlink to a file inside the root is followed."""
        os.symlink(os.path.join(self.root, "a", "b"), os.path.join(self.root, "link"))
        self.assertEqual(self.request("/link").body, b"inside")

    def test_root_is_symlink(self) -> None:
        """A root that is itself a symlink serves the files of its target."""
        link = os.path.abspath(self.mktemp())
        os.symlink(self.root, link)
        self.harness = self.serve(root=link)
        self.assertEqual(self.request("/a/b").body, b"inside")


class MethodTests(_StaticCase):
    """Only GET and HEAD are served."""

    def test_post(self) -> None:
        """POST is a 405 C{method_not_allowed} problem."""
        self.add_file("hello.txt")
        response = self.request("/hello.txt", "Content-Length: 0", method="POST")
        self.assertEqual(
            (response.status, problem_type(response)),
            (405, "urn:gatewaykit:error:method_not_allowed"),
        )

    def test_allow(self) -> None:
        """The 405 lists C{GET, HEAD} in C{Allow}."""
        response = self.request("/hello.txt", method="DELETE")
        self.assertEqual(response.headers.get(b"allow"), b"GET, HEAD")


class ConditionalTests(_StaticCase):
    """Conditional requests, RFC 9110 section 13."""

    def setUp(self) -> None:
        super().setUp()
        self.add_file("hello.txt")
        self.etag = '"%x-%x"' % (MTIME, 10)

    def test_if_none_match(self) -> None:
        """A matching C{If-None-Match} is a 304."""
        self.assertEqual(self.request("/hello.txt", f"If-None-Match: {self.etag}").status, 304)

    def test_not_modified_fields(self) -> None:
        """The 304 carries C{ETag} and C{Last-Modified} and no body."""
        protocol, transport = self.harness.connect()
        protocol.dataReceived(raw_request("/hello.txt", f"If-None-Match: {self.etag}"))
        response = parse_response(transport.value())
        self.assertEqual(
            (
                response.headers.get(b"etag"),
                response.headers.get(b"last-modified"),
                response.headers.get(b"content-length"),
                transport.value().endswith(b"\r\n\r\n"),
            ),
            (self.etag.encode(), MTIME_TEXT.encode(), None, True),
        )

    def test_if_none_match_weak(self) -> None:
        """C{If-None-Match} uses the weak comparison."""
        self.assertEqual(
            self.request("/hello.txt", f"If-None-Match: W/{self.etag}").status, 304
        )

    def test_if_none_match_list(self) -> None:
        """Any tag of an C{If-None-Match} list may match."""
        response = self.request("/hello.txt", f'If-None-Match: "other", {self.etag}')
        self.assertEqual(response.status, 304)

    def test_if_none_match_star(self) -> None:
        """C{If-None-Match: *} matches an existing file."""
        self.assertEqual(self.request("/hello.txt", "If-None-Match: *").status, 304)

    def test_if_none_match_other(self) -> None:
        """A different tag in C{If-None-Match} serves the file."""
        self.assertEqual(self.request("/hello.txt", 'If-None-Match: "other"').status, 200)

    def test_head_not_modified(self) -> None:
        """HEAD gets a 304 too."""
        response = self.request("/hello.txt", f"If-None-Match: {self.etag}", method="HEAD")
        self.assertEqual(response.status, 304)

    def test_if_modified_since(self) -> None:
        """C{If-Modified-Since} at the mtime is a 304."""
        self.assertEqual(
            self.request("/hello.txt", f"If-Modified-Since: {MTIME_TEXT}").status, 304
        )

    def test_if_modified_since_later(self) -> None:
        """C{If-Modified-Since} after the mtime is a 304."""
        later = formatdate(MTIME + 3600, usegmt=True)
        self.assertEqual(self.request("/hello.txt", f"If-Modified-Since: {later}").status, 304)

    def test_modified_since(self) -> None:
        """C{If-Modified-Since} before the mtime serves the file."""
        earlier = formatdate(MTIME - 1, usegmt=True)
        self.assertEqual(
            self.request("/hello.txt", f"If-Modified-Since: {earlier}").status, 200
        )

    def test_if_modified_since_rfc850(self) -> None:
        """An obsolete RFC 850 date is understood."""
        date = "Tuesday, 14-Nov-23 22:13:20 GMT"
        response = self.request("/hello.txt", f"If-Modified-Since: {date}")
        self.assertEqual(response.status, 304)

    def test_if_modified_since_asctime(self) -> None:
        """An asctime date is understood."""
        response = self.request("/hello.txt", "If-Modified-Since: Tue Nov 14 22:13:20 2023")
        self.assertEqual(response.status, 304)

    def test_if_modified_since_invalid(self) -> None:
        """An invalid C{If-Modified-Since} is ignored."""
        self.assertEqual(self.request("/hello.txt", "If-Modified-Since: yesterday").status, 200)

    def test_if_none_match_wins(self) -> None:
        """C{If-Modified-Since} is ignored when C{If-None-Match} is present."""
        response = self.request(
            "/hello.txt", 'If-None-Match: "other"', f"If-Modified-Since: {MTIME_TEXT}"
        )
        self.assertEqual(response.status, 200)

    def test_if_match_fails(self) -> None:
        """A C{If-Match} that does not match is a 412."""
        response = self.request("/hello.txt", 'If-Match: "other"')
        self.assertEqual(
            (response.status, problem_type(response)),
            (412, "urn:gatewaykit:error:precondition_failed"),
        )

    def test_if_match_holds(self) -> None:
        """A matching C{If-Match} serves the file."""
        self.assertEqual(self.request("/hello.txt", f"If-Match: {self.etag}").status, 200)

    def test_if_match_weak(self) -> None:
        """C{If-Match} uses the strong comparison: a weak tag fails."""
        self.assertEqual(self.request("/hello.txt", f"If-Match: W/{self.etag}").status, 412)

    def test_if_unmodified_since_fails(self) -> None:
        """C{If-Unmodified-Since} before the mtime is a 412."""
        earlier = formatdate(MTIME - 1, usegmt=True)
        response = self.request("/hello.txt", f"If-Unmodified-Since: {earlier}")
        self.assertEqual(response.status, 412)

    def test_if_unmodified_since_holds(self) -> None:
        """C{If-Unmodified-Since} at the mtime serves the file."""
        response = self.request("/hello.txt", f"If-Unmodified-Since: {MTIME_TEXT}")
        self.assertEqual(response.status, 200)

    def test_file_closed(self) -> None:
        """The file is closed after a 304."""
        opened, closed = self.track_files()
        self.request("/hello.txt", f"If-None-Match: {self.etag}")
        self.assertEqual((len(opened), sorted(opened)), (1, sorted(closed)))


class RangeTests(_StaticCase):
    """Range requests, RFC 9110 section 14."""

    def setUp(self) -> None:
        super().setUp()
        self.add_file("ten.txt")
        self.etag = '"%x-%x"' % (MTIME, 10)

    def test_partial(self) -> None:
        """A byte range is a 206 with that part."""
        response = self.request("/ten.txt", "Range: bytes=2-5")
        self.assertEqual(
            (response.status, response.body, response.headers.get(b"content-range")),
            (206, b"2345", b"bytes 2-5/10"),
        )

    def test_partial_length(self) -> None:
        """C{Content-Length} of a 206 is the range's length."""
        response = self.request("/ten.txt", "Range: bytes=2-5")
        self.assertEqual(response.headers.get(b"content-length"), b"4")

    def test_open_ended(self) -> None:
        """C{bytes=a-} runs to the end."""
        self.assertEqual(self.request("/ten.txt", "Range: bytes=7-").body, b"789")

    def test_suffix(self) -> None:
        """C{bytes=-n} is the last n bytes."""
        response = self.request("/ten.txt", "Range: bytes=-3")
        self.assertEqual(
            (response.body, response.headers.get(b"content-range")), (b"789", b"bytes 7-9/10")
        )

    def test_clamped(self) -> None:
        """A last position past the end stops at the end."""
        response = self.request("/ten.txt", "Range: bytes=8-100")
        self.assertEqual(response.headers.get(b"content-range"), b"bytes 8-9/10")

    def test_unsatisfiable(self) -> None:
        """A range starting past the end is a 416 with C{bytes */size}."""
        response = self.request("/ten.txt", "Range: bytes=10-")
        self.assertEqual(
            (response.status, response.headers.get(b"content-range")), (416, b"bytes */10")
        )

    def test_multiple(self) -> None:
        """Several ranges serve the whole file with 200."""
        response = self.request("/ten.txt", "Range: bytes=0-1,4-5")
        self.assertEqual((response.status, response.body), (200, TEN))

    def test_malformed(self) -> None:
        """A malformed C{Range} is ignored."""
        response = self.request("/ten.txt", "Range: bytes=abc")
        self.assertEqual((response.status, response.body), (200, TEN))

    def test_other_unit(self) -> None:
        """A unit other than C{bytes} is ignored."""
        self.assertEqual(self.request("/ten.txt", "Range: items=0-1").status, 200)

    def test_head_ignores_range(self) -> None:
        """HEAD ignores C{Range}: range handling is defined for GET only."""
        response = self.request("/ten.txt", "Range: bytes=0-1", method="HEAD")
        self.assertEqual(response.status, 200)

    def test_if_range_etag(self) -> None:
        """A matching C{If-Range} tag honours the range."""
        response = self.request("/ten.txt", "Range: bytes=0-1", f"If-Range: {self.etag}")
        self.assertEqual((response.status, response.body), (206, b"01"))

    def test_if_range_etag_changed(self) -> None:
        """A different C{If-Range} tag serves the whole file."""
        response = self.request("/ten.txt", "Range: bytes=0-1", 'If-Range: "old"')
        self.assertEqual((response.status, response.body), (200, TEN))

    def test_if_range_weak(self) -> None:
        """A weak C{If-Range} tag never matches."""
        response = self.request("/ten.txt", "Range: bytes=0-1", f"If-Range: W/{self.etag}")
        self.assertEqual(response.status, 200)

    def test_if_range_date(self) -> None:
        """An C{If-Range} date equal to the mtime honours the range."""
        response = self.request("/ten.txt", "Range: bytes=0-1", f"If-Range: {MTIME_TEXT}")
        self.assertEqual(response.status, 206)

    def test_if_range_date_changed(self) -> None:
        """An C{If-Range} date other than the mtime serves the whole file."""
        earlier = formatdate(MTIME - 60, usegmt=True)
        response = self.request("/ten.txt", "Range: bytes=0-1", f"If-Range: {earlier}")
        self.assertEqual(response.status, 200)


class StreamingTests(_StaticCase):
    """Large bodies go out through a pull producer, a chunk per pull."""

    SIZE = 1024 * 1024

    def setUp(self) -> None:
        super().setUp()
        self.content = os.urandom(self.SIZE)
        self.add_file("big.bin", self.content)

    def start(self, *fields: str) -> tuple[Any, TCPStringTransport]:
        """Send a GET for the big file; the protocol and transport."""
        protocol, transport = self.harness.connect()
        protocol.dataReceived(raw_request("/big.bin", *fields))
        return protocol, transport

    def test_complete(self) -> None:
        """The whole file arrives when the consumer pulls until the end."""
        _, transport = self.start()
        pull_all(transport)
        response = parse_response(transport.value())
        self.assertEqual(
            (response.headers.get(b"content-length"), response.body),
            (b"%d" % self.SIZE, self.content),
        )

    def test_pull_producer(self) -> None:
        """The producer is registered as a pull (non-streaming) producer."""
        _, transport = self.start()
        self.assertEqual((type(transport.producer), transport.streaming), (FileBody, False))

    def test_nothing_before_pull(self) -> None:
        """Only the head is written before the first pull."""
        _, transport = self.start()
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))

    def test_chunk_per_pull(self) -> None:
        """Each pull writes one chunk."""
        _, transport = self.start()
        head = len(transport.value())
        producer_of(transport).resumeProducing()
        self.assertEqual(len(transport.value()) - head, CHUNK_SIZE)

    def test_pulls(self) -> None:
        """The file takes size / chunk pulls."""
        _, transport = self.start()
        self.assertEqual(pull_all(transport), self.SIZE // CHUNK_SIZE)

    def test_range(self) -> None:
        """A large range is streamed and stops at its end."""
        _, transport = self.start("Range: bytes=100000-299999")
        pull_all(transport)
        self.assertEqual(parse_response(transport.value()).body, self.content[100000:300000])

    def test_keep_alive(self) -> None:
        """The connection answers the next request after a streamed body."""
        protocol, transport = self.harness.connect()
        self.add_file("small.txt", b"small")
        protocol.dataReceived(raw_request("/big.bin") + raw_request("/small.txt"))
        pull_all(transport)
        bodies = [response.body for response in parse_responses(transport.value())]
        self.assertEqual(bodies, [self.content, b"small"])

    def test_closed_when_done(self) -> None:
        """The file is closed after the last chunk."""
        opened, closed = self.track_files()
        _, transport = self.start()
        pull_all(transport)
        self.assertEqual((len(opened), sorted(opened)), (1, sorted(closed)))

    def test_closed_on_connection_lost(self) -> None:
        """The file is closed when the client goes away mid-transfer."""
        opened, closed = self.track_files()
        protocol, transport = self.start()
        producer_of(transport).resumeProducing()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((len(opened), sorted(opened)), (1, sorted(closed)))

    def test_nothing_after_connection_lost(self) -> None:
        """A pull after the client went away writes nothing."""
        protocol, transport = self.start()
        producer = producer_of(transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        written = len(transport.value())
        producer.resumeProducing()
        self.assertEqual(len(transport.value()), written)

    def test_closed_on_stop_producing(self) -> None:
        """C{stopProducing} (the transport closing) closes the file."""
        _, transport = self.start()
        producer = producer_of(transport)
        producer.stopProducing()
        self.assertTrue(producer.closed)

    def test_truncated(self) -> None:
        """A file that shrinks mid-transfer cuts the connection and is closed."""
        _, transport = self.start()
        producer = producer_of(transport)
        producer.resumeProducing()
        os.truncate(os.path.join(self.root, "big.bin"), CHUNK_SIZE)
        producer.resumeProducing()
        self.assertEqual((transport.write_closed, producer.closed), (True, True))


class ContentTypeTests(SynchronousTestCase):
    """L{content_type} names a file's media type."""

    def test_case_insensitive(self) -> None:
        """Extensions match whatever their case."""
        self.assertEqual(content_type("PHOTO.JPG"), b"image/jpeg")

    def test_javascript(self) -> None:
        """JavaScript is sent with C{charset=utf-8}."""
        self.assertEqual(content_type("app.js"), b"application/javascript; charset=utf-8")

    def test_web_font(self) -> None:
        """Web fonts missing from Python's table are known."""
        self.assertEqual(content_type("font.woff2"), b"font/woff2")

    def test_compressed(self) -> None:
        """A C{.gz} file is C{application/gzip}, whatever precedes it."""
        self.assertEqual(content_type("backup.tar.gz"), b"application/gzip")

    def test_no_extension(self) -> None:
        """A name without an extension is C{application/octet-stream}."""
        self.assertEqual(content_type("README"), b"application/octet-stream")


class ParseHTTPDateTests(SynchronousTestCase):
    """L{parse_http_date} reads the three HTTP date formats."""

    def test_imf_fixdate(self) -> None:
        """The preferred format."""
        self.assertEqual(parse_http_date(MTIME_TEXT.encode()), MTIME)

    def test_rfc850(self) -> None:
        """The obsolete RFC 850 format."""
        self.assertEqual(parse_http_date(b"Tuesday, 14-Nov-23 22:13:20 GMT"), MTIME)

    def test_asctime(self) -> None:
        """The asctime format, with a space-padded day."""
        self.assertEqual(parse_http_date(b"Sun Nov  6 08:49:37 1994"), 784111777)

    def test_invalid_day(self) -> None:
        """An impossible date is invalid."""
        self.assertIsNone(parse_http_date(b"Fri, 31 Feb 2023 00:00:00 GMT"))

    def test_other_zone(self) -> None:
        """A zone other than GMT is invalid."""
        self.assertIsNone(parse_http_date(b"Tue, 14 Nov 2023 22:13:20 +0100"))


class ParseRangeTests(SynchronousTestCase):
    """L{parse_range} reads a single byte range."""

    def test_first_last(self) -> None:
        """C{a-b} includes both ends."""
        self.assertEqual(parse_range(b"bytes=0-0", 10), (0, 1))

    def test_suffix_longer_than_file(self) -> None:
        """A suffix longer than the file is the whole file."""
        self.assertEqual(parse_range(b"bytes=-50", 10), (0, 10))

    def test_zero_suffix(self) -> None:
        """A zero-length suffix is unsatisfiable."""
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=-0", 10)

    def test_empty_file(self) -> None:
        """No range of an empty file is satisfiable."""
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=0-", 0)

    def test_reversed(self) -> None:
        """A last position before the first is ignored."""
        self.assertIsNone(parse_range(b"bytes=5-2", 10))

    def test_unit_case(self) -> None:
        """The unit is case-insensitive."""
        self.assertEqual(parse_range(b"Bytes=1-2", 10), (1, 3))

    def test_empty_list_elements(self) -> None:
        """Empty list elements do not count as ranges."""
        self.assertEqual(parse_range(b"bytes=, 1-2 ,", 10), (1, 3))

    def test_huge_number(self) -> None:
        """An absurdly long number is malformed, not a crash."""
        self.assertIsNone(parse_range(b"bytes=0-" + b"9" * 5000, 10))
