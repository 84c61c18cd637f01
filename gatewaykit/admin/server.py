"""
The admin API (SPEC section 9) on twisted.web: the dashboard, C{/status},
C{/metrics}, C{/config}, C{/reload} and C{/cache/purge}.

Authentication, when C{gateway.admin.token} is set: every call but the
static assets and the login form needs C{Authorization: Bearer <token>}.
A browser, which cannot add that header to a page load, signs in on the
login form instead: C{POST /login} sets an C{HttpOnly}, C{SameSite=Strict}
cookie holding an HMAC of the token (not the token), good for reading
(C{GET}) only, so the cookie can never be used to change anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from importlib import resources
from typing import Any, Callable, Optional, Union
from urllib.parse import parse_qs, urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gatewaykit.admin.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gatewaykit.admin.state import Unavailable
from gatewaykit.config.model import AdminConfig

log = Logger()

COOKIE = b"gk_admin"
REALM = "gatewaykit-admin"
MAX_BODY_BYTES = 64 * 1024

_COOKIE_PURPOSE = b"gatewaykit admin dashboard cookie"
_JSON = b"application/json"
_PROBLEM = b"application/problem+json"
_SECURITY_HEADERS = (
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    # Not no-referrer: with it browsers send "Origin: null" on the sign-in
    # form's POST, which the cross-origin check below cannot tell apart.
    (b"Referrer-Policy", b"same-origin"),
    (
        b"Content-Security-Policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        b" img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"Server", b"gatewaykit-admin"),
)
_STATIC_TYPES = {
    "html": b"text/html; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "svg": b"image/svg+xml",
    "png": b"image/png",
}

_LOOPBACK = ("127.0.0.1", "::1", "localhost")

# Calls open without the token: signing in and out, and files with no data.
_PUBLIC = (b"/login", b"/logout", b"/favicon.ico")

Body = Union[bytes, "defer.Deferred[bytes]"]
Handler = Callable[[Any], Body]


# -- authentication --------------------------------------------------------------


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _same(given: bytes, expected: bytes) -> bool:
    """Constant-time equality, lengths included (both are hashed first)."""
    return hmac.compare_digest(_digest(given), _digest(expected))


class TokenGuard:
    """
    Checks admin calls against the token (none set: every call passes).

    C{check} answers C{None} when the call may go on, else the RFC 6750
    error for the C{WWW-Authenticate} challenge (C{""} when no credentials
    came, C{"invalid_token"} for wrong ones).
    """

    def __init__(self, token: str) -> None:
        self.set_token(token)

    def set_token(self, token: str) -> None:
        """Use C{token} from now on (a reload may change it)."""
        self._token = token.encode("ascii")
        self.cookie_value = (
            hmac.new(self._token, _COOKIE_PURPOSE, hashlib.sha256).hexdigest().encode("ascii")
            if token
            else b""
        )

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def token_matches(self, given: bytes) -> bool:
        return self.enabled and _same(given, self._token)

    def check(self, request: Any, cookie_allowed: bool) -> Optional[str]:
        if not self._token:
            return None
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, credentials = header.strip().partition(b" ")
            if scheme.lower() == b"bearer" and self.token_matches(credentials.strip()):
                return None
            return "invalid_token"
        cookie = request.getCookie(COOKIE)
        if cookie is not None and cookie_allowed:
            return None if _same(cookie, self.cookie_value) else "invalid_token"
        return ""


# -- responses -------------------------------------------------------------------


def _json(request: Any, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _JSON)
    return json.dumps(document, indent=2).encode("utf-8") + b"\n"


def _problem(request: Any, status: int, code: str, title: str, detail: str) -> bytes:
    """An RFC 9457 problem, as the gateway's own errors."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _PROBLEM)
    document = {
        "type": f"urn:gatewaykit:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    return json.dumps(document).encode("utf-8") + b"\n"


def _client(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _wants_html(request: Any) -> bool:
    return b"text/html" in (request.getHeader(b"accept") or b"")


class Assets:
    """The dashboard's files, read once from the package."""

    def __init__(self, files: dict[str, tuple[bytes, bytes, bytes]]) -> None:
        self.files = files  # name -> (content, content type, ETag)

    @classmethod
    def load(cls) -> "Assets":
        folder = resources.files("gatewaykit.admin") / "static"
        files = {}
        for entry in folder.iterdir():
            extension = entry.name.rpartition(".")[2]
            if extension in _STATIC_TYPES and entry.is_file():
                content = entry.read_bytes()
                etag = hashlib.sha256(content).hexdigest()[:16].encode("ascii")
                files[entry.name] = (content, _STATIC_TYPES[extension], etag)
        return cls(files)


# -- the resource ------------------------------------------------------------------


class AdminResource(Resource):
    """Every admin call, dispatched on path and method."""

    isLeaf = True

    def __init__(self, state: Any, config: AdminConfig) -> None:
        super().__init__()
        self.state = state
        self.guard = TokenGuard(config.token)
        self.assets = Assets.load()
        self._routes: dict[bytes, dict[bytes, Handler]] = {
            b"/": {b"GET": self._dashboard},
            b"/status": {b"GET": self._status},
            b"/metrics": {b"GET": self._metrics},
            b"/config": {b"GET": self._config},
            b"/reload": {b"POST": self._reload},
            b"/cache/purge": {b"POST": self._purge},
            b"/login": {b"POST": self._login},
            b"/logout": {b"POST": self._logout},
            b"/favicon.ico": {b"GET": self._no_icon},
        }

    def render(self, request: Any) -> Any:
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        path = request.path
        public = path in _PUBLIC or path.startswith(b"/static/")
        methods: Optional[dict[bytes, Handler]] = (
            {b"GET": self._static} if path.startswith(b"/static/") else self._routes.get(path)
        )
        if methods is None:
            return _problem(request, 404, "not_found", "Not Found", "no admin call at this path")
        method = b"GET" if request.method == b"HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = sorted(methods) + ([b"HEAD"] if b"GET" in methods else [])
            request.setHeader(b"Allow", b", ".join(allowed))
            return _problem(
                request,
                405,
                "method_not_allowed",
                "Method Not Allowed",
                f"{method.decode('latin-1')} is not allowed on {path.decode('latin-1')}",
            )
        if method == b"POST" and self._cross_origin(request):
            return _problem(
                request, 403, "forbidden", "Forbidden", "cross-origin admin calls are refused"
            )
        if not public:
            refusal = self.guard.check(request, cookie_allowed=method == b"GET")
            if refusal is not None:
                return self._unauthorized(request, refusal)
        body = handler(request)
        if isinstance(body, defer.Deferred):
            self._finish_later(request, body)
            return NOT_DONE_YET
        return body

    @staticmethod
    def _cross_origin(request: Any) -> bool:
        # Browsers say where a POST comes from (Sec-Fetch-Site, or at least
        # Origin): refusing other sites keeps a web page from reloading or
        # purging through the visitor's browser. curl sends neither.
        site = request.getHeader(b"sec-fetch-site")
        if site is not None:
            return site not in (b"same-origin", b"none")
        origin = request.getHeader(b"origin")
        if origin is None:
            return False
        host = (request.getHeader(b"host") or b"").lower()
        return origin == b"null" or urlsplit(origin).netloc.lower() != host

    def _unauthorized(self, request: Any, error: str) -> bytes:
        challenge = f'Bearer realm="{REALM}"'
        if error:
            challenge += f', error="{error}"'
        request.setHeader(b"WWW-Authenticate", challenge.encode("ascii"))
        if request.path == b"/" and _wants_html(request):
            request.setResponseCode(401)
            return self._login_page(request, failed=False)
        detail = "this admin call needs 'Authorization: Bearer <token>'"
        if error:
            detail = "the admin token given is not valid"
        return _problem(request, 401, "unauthorized", "Unauthorized", detail)

    def _finish_later(self, request: Any, body: defer.Deferred[bytes]) -> None:
        lost: list[Failure] = []
        request.notifyFinish().addErrback(lost.append)

        def failed(reason: Failure) -> bytes:
            log.failure("admin call {path} failed", reason, path=request.path)
            return _problem(
                request, 500, "internal_error", "Internal Server Error", "the admin call failed"
            )

        def write(data: bytes) -> None:
            if not lost:
                request.write(data)
                request.finish()

        body.addErrback(failed).addCallback(write)

    # -- the calls -----------------------------------------------------------------

    def _dashboard(self, request: Any) -> bytes:
        return self._asset(request, "dashboard.html")

    def _static(self, request: Any) -> bytes:
        name = request.path[len(b"/static/") :].decode("utf-8", "replace")
        return self._asset(request, name)

    def _asset(self, request: Any, name: str) -> bytes:
        found = self.assets.files.get(name)
        if found is None:
            return _problem(request, 404, "not_found", "Not Found", "no such dashboard file")
        content, content_type, etag = found
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        if request.setETag(etag):
            return b""
        return content

    def _no_icon(self, request: Any) -> bytes:
        # Browsers ask for it on every page (the JSON ones too): no 404 noise.
        request.setResponseCode(204)
        return b""

    def _status(self, request: Any) -> defer.Deferred[bytes]:
        answer = self.state.status()
        return answer.addCallbacks(
            lambda status: _json(request, 200, status), _unavailable, errbackArgs=(request,)
        )

    def _metrics(self, request: Any) -> defer.Deferred[bytes]:
        def exposition(text: bytes) -> bytes:
            request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE.encode("ascii"))
            return text

        return self.state.metrics_text().addCallbacks(
            exposition, _unavailable, errbackArgs=(request,)
        )

    def _config(self, request: Any) -> bytes:
        return _json(request, 200, self.state.config())

    def _reload(self, request: Any) -> defer.Deferred[bytes]:
        client = _client(request)
        log.info("admin: configuration reload requested from {client}", client=client)

        def done(result: Any) -> bytes:
            if result.ok:
                return _json(request, 200, {"ok": True, "digest": result.digest})
            return _json(request, 422, {"ok": False, "problems": list(result.problems)})

        return self.state.reload().addCallbacks(done, _unavailable, errbackArgs=(request,))

    def _purge(self, request: Any) -> Body:
        raw = request.content.read(MAX_BODY_BYTES + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY_BYTES:
            return _problem(
                request, 413, "body_too_large", "Content Too Large", "the body is too large"
            )
        try:
            prefix, url = _purge_target(raw)
        except ValueError as exc:
            return _problem(request, 400, "bad_request", "Bad Request", str(exc))
        log.info(
            "admin: cache purge of {what} requested from {client}",
            # Without the URL's query, which may carry credentials.
            what=f"prefix {prefix}" if prefix is not None else f"url {str(url).split('?')[0]}",
            client=_client(request),
        )
        purged = self.state.purge_cache(prefix=prefix, url=url)
        return purged.addCallbacks(
            lambda count: _json(request, 200, {"purged": count}),
            _unavailable,
            errbackArgs=(request,),
        )

    def _login(self, request: Any) -> bytes:
        if self.guard.enabled:
            # From the form body only: a token in the URL would end up in
            # the browser's history.
            request.content.seek(0)
            form = parse_qs(request.content.read(MAX_BODY_BYTES))
            token = (form.get(b"token") or [b""])[0]
            if not self.guard.token_matches(token):
                log.info("admin: failed dashboard sign-in from {client}", client=_client(request))
                request.setResponseCode(401)
                request.setHeader(b"WWW-Authenticate", f'Bearer realm="{REALM}"'.encode())
                return self._login_page(request, failed=True)
            request.addCookie(
                COOKIE, self.guard.cookie_value, path=b"/", httpOnly=True, sameSite="strict"
            )
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/")
        return b""

    def _logout(self, request: Any) -> bytes:
        request.addCookie(COOKIE, b"", path=b"/", max_age=b"0", httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/")
        return b""

    def _login_page(self, request: Any, failed: bool) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        page = self.assets.files["login.html"][0]
        message = b"That token is not valid." if failed else b""
        return page.replace(b"<!--message-->", message)


def _unavailable(reason: Failure, request: Any) -> bytes:
    reason.trap(Unavailable)
    if reason.value.status == 503:
        return _problem(request, 503, "unavailable", "Service Unavailable", str(reason.value))
    return _problem(request, 501, "not_implemented", "Not Implemented", str(reason.value))


def _purge_target(raw: bytes) -> tuple[Optional[str], Optional[str]]:
    """The C{prefix} or C{url} of a purge body; C{ValueError} saying what is wrong."""
    expected = 'expected a JSON body {"prefix": "/path"} or {"url": "..."}'
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError(expected) from None
    if not isinstance(body, dict) or len(body) != 1 or not ({"prefix", "url"} & body.keys()):
        raise ValueError(expected)
    (key, value), = body.items()
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    if key == "prefix":
        if not value.startswith("/"):
            raise ValueError("prefix must be a path starting with '/'")
        return value, None
    return None, value


# -- serving -------------------------------------------------------------------------


class AdminSite(Site):
    """The admin API's C{Site}: one L{AdminResource}, no access log."""

    def __init__(self, state: Any, config: AdminConfig, reactor: Any) -> None:
        self.admin = AdminResource(state, config)
        super().__init__(self.admin, reactor=reactor, timeout=60)
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        # Scrapes and dashboard polls every few seconds would drown the log;
        # what changes state (reload, purge, sign-in) is logged on its own.
        pass

    def set_token(self, token: str) -> None:
        """Check calls against C{token} from now on."""
        self.admin.guard.set_token(token)


def listen_admin(site: AdminSite, config: AdminConfig, reactor: Any) -> IListeningPort:
    """Listen on C{config.bind} (every interface, IPv6 or else IPv4, for C{:port})."""
    if config.host:
        port: IListeningPort = reactor.listenTCP(config.port, site, interface=config.host)
    else:
        try:
            port = reactor.listenTCP(config.port, site, interface="::")
        except CannotListenError:
            port = reactor.listenTCP(config.port, site, interface="0.0.0.0")
    address = port.getHost()
    host, number = getattr(address, "host", ""), getattr(address, "port", 0)
    if config.token or config.host in _LOOPBACK:
        log.info("gatewaykit admin API on {host}:{port}", host=host, port=number)
    else:
        log.warn(
            "gatewaykit admin API on {host}:{port} without a token: anyone who can"
            " connect may read the state and reload the config (set gateway.admin.token)",
            host=host,
            port=number,
        )
    return port


class AdminService(Service):
    """
    The admin API as a service: listens on C{config.bind} when started
    (before privileges are dropped), stops listening when stopped.
    """

    def __init__(self, state: Any, config: AdminConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.site = AdminSite(state, config, reactor)
        self.port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self.port is not None:
            return
        try:
            self.port = listen_admin(self.site, self.config, self.reactor)
        except CannotListenError as exc:
            raise SystemExit(
                f"gatewaykit: the admin API cannot bind {self.config.bind}: {exc.socketError}"
            ) from None

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        stop: Callable[[], Any] = port.stopListening
        return defer.maybeDeferred(stop)

    @defer.inlineCallbacks
    def reconfigure(self, config: AdminConfig) -> Any:
        """Take a reloaded C{gateway.admin}: a new token at once, a new bind re-listens."""
        self.site.set_token(config.token)
        old, self.config = self.config, config
        if (old.host, old.port) != (config.host, config.port) and self.running:
            yield self.stopService()
            self.startService()
