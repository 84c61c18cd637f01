"""
The request and header objects used on the proxy path.

These are deliberately small (C{__slots__}, bytes on the wire side) because
one of each is made per request. HTTP/1.1 and HTTP/2 downstream codecs both
produce L{Request} objects; routes, policies and actions only see these.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Union
from urllib.parse import parse_qs, unquote_plus

from gatewaykit.http.wire import HOP_BY_HOP

Name = Union[str, bytes]


def _as_bytes(value: Name) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


class Headers:
    """
    An ordered list of header fields that keeps repeated fields repeated and
    the case of names as received. Lookups are case-insensitive.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Optional[Iterable[tuple[bytes, bytes]]] = None) -> None:
        # A list given is adopted as is (the codecs hand over the one they built).
        self.raw: list[tuple[bytes, bytes]] = (
            raw if isinstance(raw, list) else list(raw) if raw is not None else []
        )

    def get(self, name: Name, default: Optional[bytes] = None) -> Optional[bytes]:
        """The first value of C{name}, or C{default}."""
        wanted = _as_bytes(name).lower()
        for key, value in self.raw:
            if key.lower() == wanted:
                return value
        return default

    def get_all(self, name: Name) -> list[bytes]:
        """Every value of C{name}, in order."""
        wanted = _as_bytes(name).lower()
        return [value for key, value in self.raw if key.lower() == wanted]

    def get_str(self, name: Name) -> Optional[str]:
        """The values of C{name} joined with C{", "} as text, or C{None}."""
        values = self.get_all(name)
        if not values:
            return None
        return b", ".join(values).decode("latin-1")

    def __contains__(self, name: Name) -> bool:
        return self.get(name) is not None

    def add(self, name: Name, value: Name) -> None:
        """Append a field, keeping any existing ones."""
        self.raw.append((_as_bytes(name), _as_bytes(value)))

    def set(self, name: Name, value: Name) -> None:
        """Replace every field called C{name} by one with C{value}."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: Name) -> None:
        """Drop every field called C{name}."""
        wanted = _as_bytes(name).lower()
        self.raw = [(k, v) for k, v in self.raw if k.lower() != wanted]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


class Response:
    """A whole response made by the gateway (or a policy): status, fields, body."""

    __slots__ = ("status", "fields", "body")

    def __init__(
        self, status: int, fields: Optional[list[tuple[bytes, bytes]]] = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.fields = fields if fields is not None else []
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class Request:
    """
    One client request as the router, policies and actions see it.

    C{client_host} is the peer's address; C{client_ip} the client's, which
    differs when the peer is a trusted proxy (C{gateway.trusted_proxies})
    that named the client in C{X-Forwarded-For}.
    C{server_port} is the gateway port the client connected to.
    C{hop_by_hop} holds the lower-case names of the fields that describe the
    client's connection (never forwarded), those named in C{Connection} too.
    C{path} is the normalised, matched path (see L{gatewaykit.routing.paths});
    C{query} is the raw query string without its C{?}. C{host} is the lower
    case host name without port, from the absolute-form target or C{Host}.
    """

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "host",
        "port",
        "server_port",
        "scheme",
        "client_host",
        "client_port",
        "client_ip",
        "listener",
        "request_id",
        "keep_alive",
        "content_length",
        "chunked",
        "expect_continue",
        "received_at",
        "hop_by_hop",
        "tls",
        "upgrade",
        "route",
        "upstream",
        "_query_params",
        "_cookies",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        path: str,
        query: str = "",
        version: str = "1.1",
        headers: Optional[Headers] = None,
        host: str = "",
        port: Optional[int] = None,
        server_port: int = 0,
        scheme: str = "http",
        client_host: str = "",
        client_port: int = 0,
        client_ip: Optional[str] = None,
        listener: str = "",
        request_id: str = "",
        keep_alive: bool = True,
        content_length: Optional[int] = None,
        chunked: bool = False,
        expect_continue: bool = False,
        received_at: float = 0.0,
        hop_by_hop: frozenset[bytes] = HOP_BY_HOP,
        tls: Any = None,
        upgrade: Optional[str] = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self.host = host
        self.port = port
        self.server_port = server_port
        self.scheme = scheme
        self.client_host = client_host
        self.client_port = client_port
        self.client_ip = client_host if client_ip is None else client_ip
        self.listener = listener
        self.request_id = request_id
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.received_at = received_at
        self.hop_by_hop = hop_by_hop
        # The connection's gatewaykit.listeners.tls.TLSInfo on an https
        # listener (version, SNI, ALPN, verified client certificate), else None.
        self.tls = tls
        self.upgrade = upgrade  # e.g. "websocket": the protocol the client asks to switch to
        self.route = None
        # The upstream an action chose among several (a split); "" when the
        # route names one, or the request went to none.
        self.upstream = ""
        self._query_params: Optional[dict[str, list[str]]] = None
        self._cookies: Optional[dict[str, str]] = None

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head."""
        return self.chunked or bool(self.content_length)

    @property
    def uri(self) -> str:
        """The path and query as sent upstream: C{/a/b?x=1}."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def query_params(self) -> dict[str, list[str]]:
        """The query string parsed; blank values kept."""
        if self._query_params is None:
            self._query_params = parse_qs(self.query, keep_blank_values=True)
        return self._query_params

    def query_param(self, name: str) -> Optional[str]:
        """The first value of query parameter C{name}, or C{None}."""
        values = self.query_params.get(name)
        return values[0] if values else None

    def remove_query_param(self, name: str) -> None:
        """Drop every C{name=...} from the query string (it goes upstream without it)."""
        pairs = self.query.split("&") if self.query else []
        kept = [p for p in pairs if unquote_plus(p.partition("=")[0]) != name]
        if len(kept) != len(pairs):
            self.query = "&".join(kept)
            self._query_params = None

    def add_query_params(self, encoded: list[str]) -> None:
        """Append C{encoded} C{name=value} pairs (already percent-encoded) to the query."""
        if encoded:
            self.query = "&".join([self.query, *encoded] if self.query else encoded)
            self._query_params = None

    def remove_cookie(self, name: str) -> None:
        """Drop cookie C{name} from the C{Cookie} fields (it goes upstream without it)."""
        kept: list[bytes] = []
        changed = False
        wanted = name.encode("latin-1")
        for value in self.headers.get_all(b"cookie"):
            pairs = [p.strip() for p in value.split(b";") if p.strip()]
            left = [p for p in pairs if p.partition(b"=")[0].strip() != wanted]
            changed = changed or len(left) != len(pairs)
            if left:
                kept.append(b"; ".join(left))
        if changed:
            self.headers.remove(b"cookie")
            for value in kept:
                self.headers.add(b"Cookie", value)
            self._cookies = None

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies from every C{Cookie} field; the first of a repeated name wins."""
        if self._cookies is None:
            cookies: dict[str, str] = {}
            for value in self.headers.get_all(b"cookie"):
                for pair in value.decode("latin-1").split(";"):
                    name, sep, val = pair.strip().partition("=")
                    if sep and name and name not in cookies:
                        cookies[name] = val.strip('"')
            self._cookies = cookies
        return self._cookies

    def copy(self, **changes: Any) -> "Request":
        """
        A request without a body from the same client, listener and target
        as this one (its id, time and fields too), with C{changes} applied;
        the route it matched is kept.
        """
        values: dict[str, Any] = dict(
            method=self.method,
            target=self.target,
            path=self.path,
            query=self.query,
            version=self.version,
            host=self.host,
            port=self.port,
            server_port=self.server_port,
            scheme=self.scheme,
            client_host=self.client_host,
            client_port=self.client_port,
            client_ip=self.client_ip,
            listener=self.listener,
            request_id=self.request_id,
            received_at=self.received_at,
            hop_by_hop=self.hop_by_hop,
            tls=self.tls,
        )
        values.update(changes)
        if "headers" not in values:
            values["headers"] = Headers(list(self.headers))
        copy = Request(**values)
        copy.route = self.route
        return copy

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.host}{self.uri} id={self.request_id}>"
