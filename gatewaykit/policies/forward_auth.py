"""
The C{forward_auth} policy: an outside service decides, as Traefik's
forwardAuth and nginx's auth_request do.

Each request's fields go to C{GET url} with C{X-Forwarded-Method},
C{-Proto}, C{-Host}, C{-Uri} and C{-For} describing it. A 2xx answer lets
the request go on, with the C{copy_headers} of the answer set on it; any
other answer (a 401, a 302 to a login page...) goes back to the client as
it is. A service that cannot be reached or does not answer within
C{timeout} gives 503 C{unavailable}: the request is never let through.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.schema import Key, Section, duration, header_name, list_of
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Request, Response
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import (
    Answer,
    HTTPClient,
    end_to_end,
    http_url,
    set_fields,
    unavailable,
    upstream_header,
)
from gatewaykit.policies.chain import Identity, PolicyCall, PolicyContext

log = Logger()

# The client's fields never sent to the auth service: the subrequest has its
# own host and framing, and the X-Forwarded-* ones are the gateway's to say.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-method",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-uri",
        b"x-forwarded-for",
        b"x-forwarded-port",
        b"x-request-id",
    }
)
# Fields of a refusal the gateway sets itself when relaying it.
_NOT_RELAYED = frozenset({b"content-length", b"date", b"x-request-id"})

Verdict = Union[GatewayError, Response, None]


@frozen
class ForwardAuthOptions:
    """
    C{type: forward_auth}: the service's URL, the fields of its 2xx answer
    set on the request, the client fields sent to it (all end-to-end ones
    when not given), the time it has to answer, and the answer field naming
    the subject.
    """

    url: str
    copy_headers: tuple[str, ...] = ()
    forward_headers: Optional[tuple[str, ...]] = None
    timeout: float = 5.0
    subject_header: Optional[str] = None


OPTIONS = Section(
    {
        "url": Key(http_url, required=True),
        "copy_headers": list_of(upstream_header, unique=str.lower, what="header"),
        "forward_headers": list_of(header_name, unique=str.lower, what="header"),
        "timeout": duration(),
        "subject_header": header_name,
    }
).into(ForwardAuthOptions)


@implementer(IPolicy)
class ForwardAuthPolicy:
    """Asks the auth service about each request."""

    def __init__(self, name: str, options: ForwardAuthOptions, client: Any) -> None:
        self.name = name
        self._options = options
        self._client = client
        self._forwarded = (
            None
            if options.forward_headers is None
            else frozenset(n.lower().encode("ascii") for n in options.forward_headers)
        )

    def subrequest_fields(self, request: Request) -> list[tuple[bytes, bytes]]:
        """The fields of the subrequest for C{request}."""
        fields = []
        for name, value in request.headers:
            lower = name.lower()
            if lower in request.hop_by_hop or lower in _NOT_FORWARDED:
                continue
            if self._forwarded is None or lower in self._forwarded:
                fields.append((name, value))
        host = request.headers.get(b"host")
        fields += [
            (b"X-Forwarded-Method", request.method.encode("ascii")),
            (b"X-Forwarded-Proto", request.scheme.encode("ascii")),
            (b"X-Forwarded-Host", host if host is not None else request.host.encode("idna")),
            (b"X-Forwarded-Uri", request.uri.encode("latin-1")),
            (b"X-Forwarded-For", request.client_ip.encode("ascii")),
            (b"X-Request-ID", request.request_id.encode("ascii")),
        ]
        return fields

    def on_request(self, call: PolicyCall) -> Deferred[Verdict]:
        options = self._options
        d = self._client.get(options.url, self.subrequest_fields(call.request), options.timeout)
        return d.addCallbacks(self._answered, self._failed, callbackArgs=(call,))

    def _answered(self, answer: Answer, call: PolicyCall) -> Verdict:
        if not 200 <= answer.status < 300:
            fields = [(n, v) for n, v in end_to_end(answer.fields) if n.lower() not in _NOT_RELAYED]
            return Response(answer.status, fields, answer.body)
        copied: dict[str, str] = {}
        for name in self._options.copy_headers:
            value = answer.get(name)
            if value is not None:
                copied[name] = value.decode("latin-1")
        set_fields(call.request.headers, self._options.copy_headers, copied)
        subject = ""
        if self._options.subject_header is not None:
            subject = (answer.get(self._options.subject_header) or b"").decode("latin-1")
        call.identity = Identity("forward_auth", subject, frozenset(), copied)
        call.values["forward_auth"] = answer
        return None

    def _failed(self, failure: Failure) -> GatewayError:
        log.warn(
            "forward_auth {policy}: no answer from the auth service ({why})",
            policy=self.name,
            why=failure.getErrorMessage() or failure.type.__name__,
        )
        return unavailable("the authentication service did not answer")

    def close(self) -> None:
        """Close the pooled connections to the auth service."""
        self._client.close()


@implementer(IPolicyFactory)
class ForwardAuthFactory:
    """
    The C{forward_auth} policy type. C{client} replaces the HTTP client
    (tests use a fake).
    """

    name = "forward_auth"
    options = staticmethod(OPTIONS)

    def __init__(self, client: Optional[Any] = None) -> None:
        self._client = client

    def build(
        self, name: str, options: ForwardAuthOptions, context: PolicyContext
    ) -> ForwardAuthPolicy:
        client = self._client
        if client is None:
            # Refusals (a login page) are relayed whole, so bounded small.
            client = HTTPClient(context.reactor, max_body=256 * 1024)
        return ForwardAuthPolicy(name, options, client)
