"""
The C{session} policy: a server-side session per browser, kept in the state
store and named by a signed cookie.

The cookie holds C{id.signature}: a random 256-bit id and its HMAC-SHA256
under the policy's C{secret}, both base64url. A cookie that does not verify
is ignored, as is one whose session expired: the request starts a new
session with a new id (a client never chooses its id). The data is a JSON
object stored under C{gk:session:ID} for C{ttl} seconds after its last use.

Other policies read and write C{call.session} (a L{Session}, or C{None}
when the store could not answer). When the response goes out the session
is saved if it changed, its expiry pushed back if it was used, and the
cookie sent when it is new. A new session nobody wrote to is neither
stored nor sent, so anonymous traffic costs no store writes and stays
cacheable.

L{sign} and L{unsign} are the cookie signing, for other cookies (sticky
affinity) to reuse. See C{docs/sessions.md}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any, Callable, Mapping, Optional, Union

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.addresses import parse_route_host
from gatewaykit.config.schema import (
    Context,
    Invalid,
    Key,
    Parser,
    Section,
    boolean,
    check_header_name,
    converted,
    duration,
    expect_map,
    header_name,
    list_of,
    pairs,
    text,
    wrong,
)
from gatewaykit.config.yamlpos import ListNode, Node, ScalarNode
from gatewaykit.http.forwarding import is_trusted
from gatewaykit.http.message import Request
from gatewaykit.http.wire import HOP_BY_HOP
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IStateStore

log = Logger()

Secret = Union[str, bytes]
Fields = list[tuple[bytes, bytes]]

KEY_PREFIX = "gk:session:"
MIN_SECRET_BYTES = 16
RECOMMENDED_SECRET_BYTES = 32
# An unchanged session is written back (to push its expiry) at most this
# often, or every tenth of its ttl when that is shorter.
REFRESH_SECONDS = 60.0
# Store trouble is logged at most this often, with how much was left out.
LOG_EVERY_SECONDS = 10.0

# Request fields the gateway sets itself on the way upstream: a value sent
# under these names would be dropped or would break the message.
_RESERVED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"cookie",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-request-id",
    b"traceparent",
    b"via",
}


# -- signing ---------------------------------------------------------------


def _as_bytes(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _mac(value: str, secret: Secret, purpose: str) -> bytes:
    message = purpose.encode("utf-8") + b"\0" + value.encode("utf-8", "surrogatepass")
    digest = hmac.new(_as_bytes(secret), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def sign(value: str, secret: Secret, purpose: str = "") -> str:
    """
    C{value.signature}: C{value} with its HMAC-SHA256 under C{secret}
    (base64url, no padding). C{purpose} is mixed into the MAC so that a
    token signed for one use (C{"session"}, C{"sticky"}) does not verify
    for another under the same secret. C{value} is not encoded: keep it to
    cookie-safe characters.
    """
    return f"{value}.{_mac(value, secret, purpose).decode('ascii')}"


def unsign(token: str, secret: Secret, *older: Secret, purpose: str = "") -> Optional[str]:
    """
    The value of a L{sign}ed C{token} if its signature verifies under
    C{secret} or one of the C{older} secrets being retired; else C{None}.
    """
    value, dot, mac = token.rpartition(".")
    if not dot or not value:
        return None
    given = mac.encode("utf-8", "surrogatepass")
    for each in (secret, *older):
        if hmac.compare_digest(given, _mac(value, each, purpose)):
            return value
    return None


# -- the options -----------------------------------------------------------


def _cookie_name(value: str) -> str:
    try:
        return check_header_name(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid cookie name") from None


def _secret(value: str) -> str:
    if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ValueError(
            f"a session secret needs at least {MIN_SECRET_BYTES} bytes"
            f" ({RECOMMENDED_SECRET_BYTES} or more recommended; e.g. `openssl rand -base64 32`)"
        )
    return value


def _same_site(value: str) -> str:
    for choice in ("Lax", "Strict", "None"):
        if value.lower() == choice.lower():
            return choice
    raise ValueError(f"expected Lax, Strict or None, got {value!r}")


def _cookie_path(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in ";\r\n\0 "):
        raise ValueError(f"expected a path starting with '/' without ';' or spaces, got {value!r}")
    return value


def _cookie_domain(value: str) -> str:
    domain = parse_route_host(value.removeprefix("."))
    if "*" in domain or domain.startswith("["):
        raise ValueError(f"expected a domain name like example.com, got {value!r}")
    return domain


def _forwarded_header(value: str) -> str:
    check_header_name(value)
    if value.lower().encode("latin-1") in _RESERVED:
        raise ValueError(f"{value} is set by the gateway itself; choose another header")
    return value


def _secure(ctx: Context, node: Node) -> Union[bool, str]:
    if isinstance(node, ScalarNode) and node.value == "auto":
        return "auto"
    try:
        return boolean(ctx, node)
    except Invalid:
        raise wrong(node, "true, false or auto") from None


def _copied(ctx: Context, node: Node) -> tuple[tuple[str, str], ...]:
    """C{[Header, ...]} (kept under the header's name) or C{{Header: key}}."""
    if isinstance(node, ListNode):
        names = list_of(header_name, unique=str.lower)(ctx, node)
        return tuple((name, name) for name in names)
    parse: Parser = pairs(text(expected="a session key"), check_header_name)
    return tuple(parse(ctx, node))


@frozen
class SessionOptions:
    """A C{session} policy's keys."""

    secret: str = field(repr=False)
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    cookie: str = "gk_session"
    ttl: float = 1800.0
    secure: Union[bool, str] = "auto"
    same_site: str = "Lax"
    http_only: bool = True
    path: str = "/"
    domain: Optional[str] = None
    strip_cookie: bool = True
    forward: tuple[tuple[str, str], ...] = ()  # (session key, request header)
    from_forward_auth: tuple[tuple[str, str], ...] = ()  # (header, session key)
    from_response: tuple[tuple[str, str], ...] = ()  # (header, session key)


_KEYS = Section(
    {
        "secret": Key(converted(_secret, "a secret"), required=True),
        "previous_secrets": list_of(converted(_secret, "a secret")),
        "cookie": converted(_cookie_name, "a cookie name"),
        "ttl": duration(),
        "secure": _secure,
        "same_site": converted(_same_site, "Lax, Strict or None"),
        "http_only": boolean,
        "path": converted(_cookie_path, "a path"),
        "domain": converted(_cookie_domain, "a domain"),
        "strip_cookie": boolean,
        "forward": pairs(converted(_forwarded_header, "a header name")),
        "from_forward_auth": _copied,
        "from_response": _copied,
    }
)


def _options(ctx: Context, node: Node) -> SessionOptions:
    """The keys, and the cookie attributes browsers insist go together."""
    values = _KEYS(ctx, node)
    mapping = expect_map(node)
    options = SessionOptions(**values)
    problems = []
    if options.same_site == "None" and options.secure is not True:
        problems.append(("same_site", "same_site: None needs secure: true (browsers insist)"))
    if options.cookie.startswith("__Secure-") and options.secure is not True:
        problems.append(("cookie", "a __Secure- cookie needs secure: true"))
    if options.cookie.startswith("__Host-") and (
        options.secure is not True or options.path != "/" or options.domain is not None
    ):
        problems.append(
            ("cookie", "a __Host- cookie needs secure: true, path: / and no domain")
        )
    for key, message in problems:
        ctx.report(mapping.node_of(key), message)
    if problems:
        raise Invalid()
    return options


# -- the session ---------------------------------------------------------------


def _canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def new_session_id() -> str:
    """A random session id: 256 bits, base64url."""
    return secrets.token_urlsafe(32)


class Session:
    """
    One browser's session, as policies see it on C{call.session}.

    @ivar id: the session id (changes on L{rotate}).
    @ivar is_new: whether this request started it.
    @ivar data: the values, a JSON-compatible C{dict}; change it through
        L{set} and L{delete} (direct changes are noticed too).
    """

    __slots__ = ("id", "is_new", "data", "_loaded", "saved_at", "replaced", "invalidated")

    def __init__(
        self,
        session_id: str,
        data: Optional[dict[str, Any]] = None,
        is_new: bool = True,
        saved_at: float = 0.0,
    ) -> None:
        self.id = session_id
        self.is_new = is_new
        self.data: dict[str, Any] = data if data is not None else {}
        self._loaded = _canonical(self.data)
        self.saved_at = saved_at
        self.replaced: Optional[str] = None  # the id before a rotate
        self.invalidated = False

    def get(self, key: str, default: Any = None) -> Any:
        """The value under C{key}, or C{default}."""
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Keep C{value} (anything JSON can hold) under C{key}."""
        json.dumps(value)  # refuse what cannot be stored now, not at save time
        self.data[key] = value

    def delete(self, key: str) -> None:
        """Forget C{key}."""
        self.data.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    @property
    def changed(self) -> bool:
        """Whether the data differs from what was loaded."""
        return _canonical(self.data) != self._loaded

    def rotate(self) -> None:
        """
        Carry on under a new id (the old one is deleted when the response
        goes out), as after a login, so an id someone planted before it is
        worth nothing after it.
        """
        if self.is_new:
            return
        if self.replaced is None:
            self.replaced = self.id
        self.id = new_session_id()

    def invalidate(self) -> None:
        """End the session: its data is deleted and the cookie expired."""
        self.data.clear()
        self.invalidated = True

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]}... new={self.is_new} keys={sorted(self.data)}>"


def _header_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_header_text, value))
    return str(value)


def _forwarded_value(value: Any) -> Optional[bytes]:
    """A session value as a header value; C{None} if it cannot be one."""
    raw = value if isinstance(value, str) else json.dumps(value)
    if any(c in raw for c in "\r\n\0"):
        return None
    return raw.encode("utf-8")


class _ThrottledLog:
    """Says the same warning at most every few seconds, counting the rest."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._last = -LOG_EVERY_SECONDS
        self._left_out = 0

    def warn(self, message: str, **kwargs: Any) -> None:
        now = self._clock.seconds()
        if now - self._last < LOG_EVERY_SECONDS:
            self._left_out += 1
            return
        if self._left_out:
            message += " ({left_out} more since the last such message)"
        log.warn(message, left_out=self._left_out, **kwargs)
        self._last = now
        self._left_out = 0


# -- the policy ------------------------------------------------------------------


@implementer(IPolicy)
class SessionPolicy:
    """Loads the session before the request goes on, saves it on the response."""

    def __init__(
        self, name: str, options: SessionOptions, clock: Any, store: IStateStore, config: Any
    ) -> None:
        self.name = name
        self.options = options
        self._clock = clock
        self._store = store
        self._trusted = tuple(config.gateway.trusted_proxies) if config is not None else ()
        self._refresh = min(REFRESH_SECONDS, options.ttl / 10)
        self._cookie = options.cookie
        self._forward = tuple(
            (key, header.encode("latin-1")) for key, header in options.forward
        )
        self._forward_names = frozenset(h.lower() for _, h in self._forward)
        self._from_response = {
            header.lower().encode("latin-1"): key for header, key in options.from_response
        }
        attributes = [f"Path={options.path}"]
        if options.domain is not None:
            attributes.append(f"Domain={options.domain}")
        if options.http_only:
            attributes.append("HttpOnly")
        attributes.append(f"SameSite={options.same_site}")
        self._attributes = "; ".join(attributes)
        self._trouble = _ThrottledLog(clock)

    # -- the cookie ---------------------------------------------------------

    def _verified_id(self, token: Optional[str]) -> tuple[Optional[str], bool]:
        """The session id a cookie names, and whether it needs signing anew."""
        if not token:
            return None, False
        session_id = unsign(token, self.options.secret, purpose="session")
        if session_id is not None:
            return session_id, False
        if self.options.previous_secrets:
            session_id = unsign(token, *self.options.previous_secrets, purpose="session")
            return session_id, session_id is not None
        return None, False

    def _secure(self, request: Request) -> bool:
        secure = self.options.secure
        if secure != "auto":
            return bool(secure)
        if request.scheme == "https":
            return True
        proto = request.headers.get(b"x-forwarded-proto")
        return (
            proto is not None
            and proto.strip().lower() == b"https"
            and is_trusted(request.client_host, self._trusted)
        )

    def set_cookie(self, request: Request, value: str, expire: bool = False) -> bytes:
        """The C{Set-Cookie} value giving C{value} (or expiring the cookie)."""
        parts = [f"{self._cookie}={value}", self._attributes]
        if expire:
            parts.append("Max-Age=0")
        if self._secure(request):
            parts.append("Secure")
        return "; ".join(parts).encode("latin-1")

    def _strip_cookie(self, request: Request) -> None:
        """Remove this policy's cookie from the fields sent upstream."""
        prefix = self._cookie + "="
        raw = []
        for name, value in request.headers.raw:
            if name.lower() == b"cookie":
                items = value.decode("latin-1").split(";")
                kept = [item for item in items if not item.strip().startswith(prefix)]
                if len(kept) != len(items):
                    if not any(item.strip() for item in kept):
                        continue
                    value = ";".join(kept).strip().encode("latin-1")
            raw.append((name, value))
        request.headers.raw = raw

    # -- the chain ----------------------------------------------------------

    def on_request(self, call: Any) -> Optional[Deferred[None]]:
        request: Request = call.request
        token = request.cookies.get(self._cookie)
        self._scrub(request, token is not None)
        session_id, resign = self._verified_id(token)
        if session_id is None:
            self._begin(call, Session(new_session_id()), resign=False)
            return None
        loading = self._store.get(KEY_PREFIX + session_id)
        loading.addCallbacks(
            self._loaded,
            self._unavailable,
            callbackArgs=(call, session_id, resign),
            errbackArgs=(call,),
        )
        return loading

    def _scrub(self, request: Request, has_cookie: bool) -> None:
        """Drop what a client must not send upstream in the gateway's name."""
        headers = request.headers
        for name in self._forward_names:
            headers.remove(name)
        if self._forward_names & request.hop_by_hop:
            # The fields this policy sets are for the next hop, whatever the
            # client's Connection said about its own copies.
            request.hop_by_hop = request.hop_by_hop - self._forward_names
        if has_cookie and self.options.strip_cookie:
            self._strip_cookie(request)

    def _loaded(
        self, record: Optional[bytes], call: Any, session_id: str, resign: bool
    ) -> None:
        session = None
        if record is not None:
            try:
                stored = json.loads(record)
                data = stored["data"]
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                session = Session(session_id, data, is_new=False, saved_at=float(stored["at"]))
            except (ValueError, KeyError, TypeError) as e:
                self._trouble.warn(
                    "session policy {policy}: ignoring an unreadable session record: {error}",
                    policy=self.name,
                    error=e,
                )
        if session is None:
            # Expired (or unreadable): a new session under a new id.
            session, resign = Session(new_session_id()), False
        self._begin(call, session, resign)

    def _unavailable(self, failure: Failure, call: Any) -> None:
        self._trouble.warn(
            "session policy {policy}: the state store is unavailable, requests go on"
            " without a session: {error}",
            policy=self.name,
            error=failure.getErrorMessage(),
        )
        call.session = None
        if self._from_response:
            call.on_response(lambda status, fields: self._take_from_response(None, fields))

    def _begin(self, call: Any, session: Session, resign: bool) -> None:
        call.session = session
        self._copy_from_forward_auth(call, session)
        headers = call.request.headers
        for key, header in self._forward:
            value = session.data.get(key)
            if value is None:
                continue
            encoded = _forwarded_value(value)
            if encoded is None:
                self._trouble.warn(
                    "session policy {policy}: not forwarding {key}: it has line breaks",
                    policy=self.name,
                    key=key,
                )
                continue
            headers.add(header, encoded)
        request = call.request
        call.on_response(
            lambda status, fields: self._respond(call, session, request, resign, fields)
        )

    # -- copying values in ----------------------------------------------------

    def _copy_in(
        self,
        session: Session,
        mapping: tuple[tuple[str, str], ...],
        lookup: Callable[[str], Optional[str]],
    ) -> None:
        """Set each mapped key from C{lookup(header)}; an empty value deletes it."""
        for header, key in mapping:
            value = lookup(header)
            if value is None or value == session.data.get(key):
                continue
            if not value and key not in session.data:
                continue
            # A new identity on an old session: the id must not survive it.
            session.rotate()
            if value:
                session.set(key, value)
            else:
                session.delete(key)

    def _copy_from_forward_auth(self, call: Any, session: Session) -> None:
        copied = call.values.get("forward_auth")
        if not self.options.from_forward_auth or copied is None:
            return
        # Either the copied fields by name, or the auth service's whole
        # answer (whose get(name) is case-insensitive already).
        by_name = (
            {str(name).lower(): value for name, value in copied.items()}
            if isinstance(copied, Mapping)
            else None
        )

        def lookup(header: str) -> Optional[str]:
            value = copied.get(header) if by_name is None else by_name.get(header.lower())
            return None if value is None else _header_text(value)

        self._copy_in(session, self.options.from_forward_auth, lookup)

    def _take_from_response(self, session: Optional[Session], fields: Fields) -> None:
        """Copy (then remove) the C{from_response} fields of a response."""
        found: dict[bytes, str] = {}
        kept = []
        for name, value in fields:
            lower = name.lower()
            if lower in self._from_response:
                found.setdefault(lower, value.decode("latin-1").strip())
            else:
                kept.append((name, value))
        if not found:
            return
        fields[:] = kept
        if session is not None:
            mapping = tuple(
                (header.decode("latin-1"), key) for header, key in self._from_response.items()
            )
            self._copy_in(session, mapping, lambda h: found.get(h.encode("latin-1")))

    # -- saving -----------------------------------------------------------

    def _respond(
        self, call: Any, session: Session, request: Request, resign: bool, fields: Fields
    ) -> None:
        # forward_auth may run after this policy: its values arrive now.
        self._copy_from_forward_auth(call, session)
        if self._from_response:
            self._take_from_response(session, fields)
        self.save(session, request, resign, fields)

    def save(self, session: Session, request: Request, resign: bool, fields: Fields) -> None:
        """Write C{session} back as needed and add the C{Set-Cookie} it needs."""
        store = self._store
        if session.replaced is not None:
            self._watch(store.delete(KEY_PREFIX + session.replaced))
        if session.invalidated:
            if not session.is_new:
                self._watch(store.delete(KEY_PREFIX + session.id))
                fields.append((b"Set-Cookie", self.set_cookie(request, "", expire=True)))
            return
        if session.is_new and not session.data:
            return
        now = self._clock.seconds()
        try:
            changed = session.changed
        except (TypeError, ValueError) as e:
            # Something put a value JSON cannot hold straight into data.
            self._trouble.warn(
                "session policy {policy}: cannot save a session: {error}",
                policy=self.name,
                error=e,
            )
            return
        if changed or session.replaced is not None or now - session.saved_at >= self._refresh:
            record = json.dumps({"at": now, "data": session.data}, separators=(",", ":"))
            key = KEY_PREFIX + session.id
            self._watch(store.set(key, record.encode("utf-8"), self.options.ttl))
        if session.is_new or session.replaced is not None or resign:
            token = sign(session.id, self.options.secret, purpose="session")
            fields.append((b"Set-Cookie", self.set_cookie(request, token)))

    def _watch(self, result: Deferred[Any]) -> None:
        result.addErrback(
            lambda failure: self._trouble.warn(
                "session policy {policy}: could not save a session: {error}",
                policy=self.name,
                error=failure.getErrorMessage(),
            )
        )


@implementer(IPolicyFactory)
class SessionFactory:
    """The C{session} policy type."""

    name = "session"
    options = staticmethod(_options)

    def build(self, name: str, options: SessionOptions, context: Any) -> SessionPolicy:
        for secret in (options.secret, *options.previous_secrets):
            if len(secret.encode("utf-8")) < RECOMMENDED_SECRET_BYTES:
                log.warn(
                    "session policy {policy}: a secret shorter than {bytes} bytes is weak;"
                    " use e.g. `openssl rand -base64 32`",
                    policy=name,
                    bytes=RECOMMENDED_SECRET_BYTES,
                )
                break
        return SessionPolicy(name, options, context.reactor, context.store, context.config)
