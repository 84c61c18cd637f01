"""
What the authentication policies share: their answers (401 with a
challenge, 403), credential files read next to the config, the fields they
move on the request, and a small HTTP client for their subrequests (the JWKS
of C{jwt}, the auth service of C{forward_auth}).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Optional, TypeVar
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as TwistedHeaders

from gatewaykit.config.schema import (
    Context,
    Invalid,
    Parser,
    check_header_name,
    converted,
    list_of,
    text,
)
from gatewaykit.config.yamlpos import ListNode, Node
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Headers
from gatewaykit.http.wire import HOP_BY_HOP, hop_by_hop_fields

T = TypeVar("T")

DEFAULT_REALM = "gatewaykit"

# C0 controls but tab, and DEL: never inside a field value we build.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Fields no policy may set on the way upstream: the gateway frames the
# request and names its host itself.
_RESERVED_UPSTREAM = HOP_BY_HOP | {b"host", b"content-length", b"expect"}


# -- answers --------------------------------------------------------------------


def quoted(value: str) -> str:
    """C{value} as an RFC 9110 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(scheme: str, **params: Optional[str]) -> bytes:
    """
    A C{WWW-Authenticate} value: C{Bearer realm="api", error="..."}.
    Parameters whose value is C{None} are left out.
    """
    given = [f"{name}={quoted(value)}" for name, value in params.items() if value is not None]
    return (scheme + (" " + ", ".join(given) if given else "")).encode("utf-8")


def unauthorized(detail: str, challenge_value: bytes) -> GatewayError:
    """A 401 C{unauthorized} with its challenge."""
    return GatewayError(
        401, "unauthorized", detail, headers=((b"WWW-Authenticate", challenge_value),)
    )


def forbidden(detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> GatewayError:
    """A 403 C{forbidden}."""
    return GatewayError(403, "forbidden", detail, headers=headers)


def unavailable(detail: str) -> GatewayError:
    """A 503 C{unavailable}: something the decision depends on cannot answer."""
    return GatewayError(503, "unavailable", detail)


# -- config ---------------------------------------------------------------------


def check_upstream_header(value: str) -> str:
    """A field name a policy may set on the request sent upstream."""
    check_header_name(value)
    if value.lower().encode("ascii") in _RESERVED_UPSTREAM:
        raise ValueError(f"{value!r} cannot be set by a policy: the gateway sets it itself")
    return value


def check_http_url(value: str) -> str:
    """C{value} if it is an C{http://} or C{https://} URL, else C{ValueError}."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


http_url: Parser = converted(check_http_url, "a URL")
upstream_header: Parser = converted(check_upstream_header, "a header name")


def text_or_list(ctx: Context, node: Node) -> tuple[str, ...]:
    """One string, or a list of them, as a tuple."""
    if isinstance(node, ListNode):
        return tuple(list_of(text(), non_empty=True)(ctx, node))
    return (text(expected="a string or a list of strings")(ctx, node),)


def in_config_dir(ctx: Context, path: str) -> str:
    """C{path} taken from the config file's folder when relative."""
    return os.path.normpath(os.path.join(ctx.base_dir, path))


def config_file(load: Callable[[bytes], T], what: str) -> Parser:
    """
    A file named relative to the config's folder, read and checked when the
    config loads: C{load(content)} makes the value, and its C{ValueError}
    (like a file that cannot be read) is a problem at the key.
    """

    def parse(ctx: Context, node: Node) -> T:
        written = text(expected=f"a {what} path")(ctx, node)
        path = in_config_dir(ctx, written)
        try:
            with open(path, "rb") as f:
                content = f.read()
        except OSError as e:
            raise Invalid(node, f"cannot read {what} {written!r} ({path}): {e.strerror}") from None
        try:
            return load(content)
        except ValueError as e:
            raise Invalid(node, f"{what} {written!r}: {e}") from None

    return parse


# -- fields on the request -------------------------------------------------------


def claim_text(value: Any) -> Optional[str]:
    """
    How a claim (or metadata) value reads as text: strings as they are,
    numbers as written, booleans as C{true}/C{false}, lists of those joined
    with C{","}, anything else as compact JSON; C{None} for null.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list) and all(
        isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in value
    ):
        return ",".join(str(item) for item in value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def field_value(value: str) -> Optional[bytes]:
    """C{value} as a field value (UTF-8), or C{None} if it holds control characters."""
    if _CONTROL.search(value):
        return None
    return value.strip().encode("utf-8")


def set_fields(headers: Headers, names: Iterable[str], values: dict[str, str]) -> None:
    """
    Drop every field in C{names} (a client's copy must never pass for the
    gateway's), then set those of C{values} that make safe field values.
    """
    for name in names:
        headers.remove(name)
    for name, value in values.items():
        encoded = field_value(value)
        if encoded is not None:
            headers.add(name, encoded)


def end_to_end(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """C{fields} without hop-by-hop ones (those named in C{Connection} too)."""
    fields = list(fields)
    drop = hop_by_hop_fields(v for n, v in fields if n.lower() == b"connection")
    return [(n, v) for n, v in fields if n.lower() not in drop]


# -- subrequests -----------------------------------------------------------------


class SubrequestFailed(Exception):
    """A subrequest got no usable answer."""


@frozen
class Answer:
    """A subrequest's response: status, fields (as received) and body."""

    status: int
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def get(self, name: str) -> Optional[bytes]:
        """The values of field C{name} joined with C{", "}, or C{None}."""
        wanted = name.lower().encode("ascii")
        values = [v for n, v in self.fields if n.lower() == wanted]
        return b", ".join(values) if values else None


class _BoundedBody(Protocol):
    """Collects a response body of at most C{limit} bytes."""

    def __init__(self, limit: int, done: Deferred) -> None:
        self._limit = limit
        self._done = done
        self._pieces: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(SubrequestFailed(f"answer body over {self._limit} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._pieces.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._pieces))
        else:
            self._done.errback(reason)


class HTTPClient:
    """
    GET requests for policies: one persistent connection pool (keep-alive
    to the auth service or identity provider), a timeout over the whole
    exchange and a bounded body.
    """

    def __init__(self, reactor: Any, max_body: int = 1024 * 1024, per_host: int = 16) -> None:
        self._reactor = reactor
        self._max_body = max_body
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = per_host
        self._agent = Agent(reactor, pool=self._pool)

    def get(
        self, url: str, fields: Iterable[tuple[bytes, bytes]] = (), timeout: float = 5.0
    ) -> "Deferred[Answer]":
        """Fires with the L{Answer}, or fails (connection, timeout, body too big)."""
        headers = TwistedHeaders()
        for name, value in fields:
            headers.addRawHeader(name, value)
        d: Deferred[Any] = self._agent.request(b"GET", url.encode("ascii"), headers)
        d.addCallback(self._read)
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=_timed_out)
        return d

    def _read(self, response: Any) -> "Deferred[Answer]":
        done: Deferred[bytes] = Deferred(lambda _: _stop(protocol))
        protocol = _BoundedBody(self._max_body, done)
        response.deliverBody(protocol)
        fields = tuple(
            (name, value)
            for name, values in response.headers.getAllRawHeaders()
            for value in values
        )
        return done.addCallback(lambda body: Answer(response.code, fields, body))

    def close(self) -> Deferred:
        """Close the pooled connections."""
        return self._pool.closeCachedConnections()


def _timed_out(result: Any, timeout: float) -> Any:
    # The agent reports its cancellation as ResponseNeverReceived: say what happened.
    if isinstance(result, Failure):
        return Failure(defer.TimeoutError(f"no answer within {timeout:g}s"))
    return result


def _stop(protocol: Protocol) -> None:
    if protocol.transport is not None:
        protocol.transport.stopProducing()  # type: ignore[attr-defined]
