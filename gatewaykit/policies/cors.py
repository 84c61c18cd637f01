"""
The C{cors} policy: cross-origin resource sharing as the Fetch standard
defines it, answered at the gateway.

- A preflight (C{OPTIONS} with C{Origin} and C{Access-Control-Request-Method})
  is answered here: 204 with the C{Access-Control-Allow-*} fields when the
  origin, method and headers are allowed, else 403 C{forbidden} without
  them. It never reaches the upstream.
- Any other request with an allowed C{Origin} goes on; its response (the
  upstream's, or an error a later policy answers) gets
  C{Access-Control-Allow-Origin} and friends, replacing the upstream's own
  C{Access-Control-*} fields so that exactly one policy speaks for the route.
- A request without C{Origin} goes on untouched; its response only gets
  C{Vary: Origin} when the answer depends on the origin.

See C{docs/access-control.md}.
"""

from __future__ import annotations

import re
from typing import Any, Optional
from urllib.parse import urlsplit

from attrs import frozen
from zope.interface import implementer

from gatewaykit.config.schema import (
    TOKEN,
    Context,
    Invalid,
    Key,
    Section,
    boolean,
    check_header_name,
    converted,
    duration,
    expect_map,
    list_of,
)
from gatewaykit.config.yamlpos import Node
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Request, Response
from gatewaykit.interfaces import IPolicy, IPolicyFactory

_DEFAULT_PORTS = {"http": 80, "https": 443}
# The request methods browsers send without a preflight (Fetch: CORS-safelisted).
SAFELISTED_METHODS = ("GET", "HEAD", "POST")

_PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
# Response fields this policy owns on its routes.
_OWNED = (b"access-control-allow-", b"access-control-expose-headers", b"access-control-max-age")


def _method(value: str) -> str:
    if value == "*":
        return value
    if not TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid method")
    return value.upper()


def _header(value: str) -> str:
    return value if value == "*" else check_header_name(value)


def parse_origin(text: str) -> str:
    """
    An allowed origin as written in the config: C{*}, C{~regex} (matched
    against the whole origin), or C{scheme://host[:port]} where the host
    may start with a C{*.} label. Returned normalised: lower case, without
    a default port or a trailing slash.
    """
    text = text.strip()
    if text == "*":
        return text
    if text.startswith("~"):
        try:
            re.compile(text[1:])
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return text
    if text.lower() == "null":
        raise ValueError(
            "the 'null' origin is sent by sandboxed frames and local files, which"
            " any site can produce; it cannot be allowed"
        )
    parts = urlsplit(text)
    if (
        not parts.scheme
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(
            f"expected an origin like https://app.example.com[:port], '*' or '~regex',"
            f" got {text!r}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    host = parts.hostname
    if "*" in host.removeprefix("*."):
        raise ValueError(f"a wildcard is allowed only as a leading '*.' label, got {text!r}")
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


@frozen
class CORSOptions:
    """A C{cors} policy's keys; C{*} in a list means "any"."""

    origins: tuple[str, ...]
    methods: tuple[str, ...] = SAFELISTED_METHODS
    headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age: float = 0.0


_KEYS = Section(
    {
        "origins": Key(
            list_of(
                converted(parse_origin, "an origin"), non_empty=True, unique=str, what="origin"
            ),
            required=True,
        ),
        "methods": list_of(
            converted(_method, "a method"), non_empty=True, unique=str, what="method"
        ),
        "headers": list_of(converted(_header, "a header name"), unique=str.lower, what="header"),
        "expose_headers": list_of(
            converted(_header, "a header name"), unique=str.lower, what="header"
        ),
        "credentials": boolean,
        "max_age": duration(positive=False),
    }
)


def _options(ctx: Context, node: Node) -> CORSOptions:
    """The keys, and what only makes sense together."""
    values = _KEYS(ctx, node)
    entries = expect_map(node).entries
    complete = True
    if values.get("credentials"):
        # With credentials the Fetch standard reads "*" literally; answering
        # every origin instead would let any site read responses made with
        # the user's cookies.
        for key, reason in (
            ("origins", "list the origins that may send credentials"),
            ("expose_headers", "list the header names"),
        ):
            if "*" in values.get(key, ()):
                ctx.report(entries[key][1], f"'*' cannot be used with credentials: true; {reason}")
                complete = False
    if not complete:
        raise Invalid()
    return CORSOptions(**values)


def _has_origin_in_vary(fields: list[tuple[bytes, bytes]]) -> bool:
    for name, value in fields:
        if name.lower() == b"vary":
            for token in value.split(b","):
                if token.strip().lower() in (b"origin", b"*"):
                    return True
    return False


def _add_vary_origin(fields: list[tuple[bytes, bytes]]) -> None:
    if not _has_origin_in_vary(fields):
        fields.append((b"Vary", b"Origin"))


def _drop_owned(fields: list[tuple[bytes, bytes]]) -> None:
    fields[:] = [(n, v) for n, v in fields if not n.lower().startswith(_OWNED)]


def _wildcard_pattern(origin: str) -> re.Pattern[str]:
    """C{https://*.example.com} as a pattern matching one or more labels for C{*}."""
    prefix, _, rest = origin.partition("*.")
    return re.compile(re.escape(prefix) + r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\." + re.escape(rest))


@implementer(IPolicy)
class CORS:
    """Answers preflights and marks the responses of allowed origins."""

    def __init__(self, name: str, options: CORSOptions) -> None:
        if options.credentials and "*" in options.origins:
            raise ValueError("origins '*' cannot be used with credentials")
        self.name = name
        self.credentials = options.credentials
        self._any_origin = "*" in options.origins
        patterns = [o for o in options.origins if o.startswith("~") or "*." in o]
        self._exact = frozenset(options.origins) - {"*", *patterns}
        self._patterns = tuple(
            re.compile(o[1:], re.IGNORECASE) if o.startswith("~") else _wildcard_pattern(o)
            for o in patterns
        )
        self._any_method = "*" in options.methods
        self._methods = frozenset(options.methods)
        self._any_header = "*" in options.headers
        self._headers = frozenset(h.lower() for h in options.headers)
        # "*" answers without credentials; otherwise the answer names the
        # origin, so caches must key on it.
        self._star = self._any_origin and not self.credentials
        self._allow_methods = ", ".join(options.methods).encode("ascii")
        self._allow_headers = ", ".join(options.headers).encode("ascii")
        self._common: list[tuple[bytes, bytes]] = []
        if self.credentials:
            self._common.append((b"Access-Control-Allow-Credentials", b"true"))
        self._expose: list[tuple[bytes, bytes]] = []
        if options.expose_headers:
            self._expose.append(
                (
                    b"Access-Control-Expose-Headers",
                    ", ".join(options.expose_headers).encode("ascii"),
                )
            )
        self._max_age: list[tuple[bytes, bytes]] = []
        if options.max_age:
            self._max_age.append((b"Access-Control-Max-Age", b"%d" % int(options.max_age)))

    # -- decisions --------------------------------------------------------

    def allows_origin(self, origin: str) -> bool:
        """Whether C{origin} (as a browser sends it) may read responses."""
        if self._any_origin:
            return True
        key = origin.lower()
        return key in self._exact or any(p.fullmatch(key) for p in self._patterns)

    def allows_method(self, method: str) -> bool:
        """Whether C{method} may be used cross-origin."""
        return self._any_method or method.upper() in self._methods

    def refused_header(self, requested: str) -> Optional[str]:
        """
        The first name of an C{Access-Control-Request-Headers} value that is
        not allowed, or C{None}.
        """
        if self._any_header:
            return None
        for name in requested.split(","):
            name = name.strip().lower()
            if name and name not in self._headers:
                return name
        return None

    def _allow_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        value = b"*" if self._star else origin
        return [(b"Access-Control-Allow-Origin", value), *self._common]

    # -- the chain ----------------------------------------------------------

    def on_request(self, call: Any) -> Any:
        request: Request = call.request
        origins = request.headers.get_all(b"origin")
        if not origins:
            if not self._star:
                call.on_response(self._vary_only)
            return None
        # Several Origin fields are no browser's doing: allow none of them.
        origin = origins[0]
        text = origin.decode("latin-1")
        allowed = len(origins) == 1 and self.allows_origin(text)
        requested = request.headers.get(b"access-control-request-method")
        if request.method == "OPTIONS" and requested is not None:
            return self._preflight(request, origin, text, allowed, requested.decode("latin-1"))
        if allowed and self.allows_method(request.method):
            call.on_response(lambda status, fields: self._mark(origin, fields))
        else:
            call.on_response(self._refuse)
        return None

    def _preflight(
        self, request: Request, origin: bytes, text: str, allowed: bool, method: str
    ) -> Any:
        requested_headers = request.headers.get_str(b"access-control-request-headers") or ""
        refused = None
        if not allowed:
            refused = f"origin {text!r} is not allowed"
        elif not TOKEN.fullmatch(method) or not self.allows_method(method):
            refused = f"method {method} is not allowed"
        else:
            header = self.refused_header(requested_headers)
            if header is not None:
                refused = f"request header {header} is not allowed"
        if refused is not None:
            return GatewayError(
                403,
                "forbidden",
                f"CORS preflight refused: {refused}",
                headers=((b"Vary", _PREFLIGHT_VARY),),
            )
        fields = self._allow_origin(origin)
        fields.append(
            (
                b"Access-Control-Allow-Methods",
                method.encode("latin-1") if self._any_method else self._allow_methods,
            )
        )
        if self._any_header:
            if requested_headers:
                reflected = requested_headers.encode("latin-1")
                fields.append((b"Access-Control-Allow-Headers", reflected))
        elif self._allow_headers:
            fields.append((b"Access-Control-Allow-Headers", self._allow_headers))
        fields.extend(self._max_age)
        fields.append((b"Vary", _PREFLIGHT_VARY))
        fields.append((b"X-Request-ID", request.request_id.encode("ascii")))
        return Response(204, fields)

    # -- response hooks -----------------------------------------------------

    def _mark(self, origin: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        _drop_owned(fields)
        fields.extend(self._allow_origin(origin))
        fields.extend(self._expose)
        if not self._star:
            _add_vary_origin(fields)

    def _refuse(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        _drop_owned(fields)
        if not self._star:
            _add_vary_origin(fields)

    def _vary_only(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        _add_vary_origin(fields)


@implementer(IPolicyFactory)
class CORSFactory:
    """The C{cors} policy type."""

    name = "cors"
    options = staticmethod(_options)

    def build(self, name: str, options: CORSOptions, context: Any) -> CORS:
        return CORS(name, options)
