"""
Running a route's policies in order before its action (SPEC section 8).

Each policy returns "go on" (C{None}) or an answer, now or later (a
C{Deferred}); a policy that wants to see or change the response registers a
hook or wraps the stream. Wrappers nest like middleware: the first policy
listed is the outermost, so it sees the response last.

An answer is a L{GatewayError}, a L{Response}, or any object with a
C{write_to(stream)} method that writes a whole response itself (a cache
hit: its stored head and body). A policy may also send a request of its
own through the rest of the chain (L{PolicyCall.subrequest}).

A policy that waits on something driven by callbacks rather than
C{Deferred}s (the Redis store's rate-limit decisions) may return L{LATER}
instead and call C{call.resume(answer)} (or C{call.resume_failed(failure)})
once it knows: the same as a C{Deferred} firing, without making one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Request, Response
from gatewaykit.http.stream import StreamWrapper
from gatewaykit.interfaces import IPolicy, IResponseStream, IRouteAction, IStateStore

log = Logger()

ResponseHook = Callable[[int, list[tuple[bytes, bytes]]], None]


class _Later:
    def __repr__(self) -> str:
        return "LATER"


LATER: Any = _Later()
"""
What a policy's C{on_request} returns when it will answer by calling
C{call.resume} or C{call.resume_failed} exactly once, later.
"""


class Identity:
    """
    Who a request comes from, as the authentication policy that recognised
    it says: C{kind} (C{api_key}, C{jwt}, C{basic}, C{forward_auth}, ...),
    C{subject} (key name, C{sub} claim, user name), C{scopes} and C{claims}
    (for C{authorize} and for headers sent upstream).
    """

    __slots__ = ("kind", "subject", "scopes", "claims")

    def __init__(
        self,
        kind: str,
        subject: str,
        scopes: frozenset[str] = frozenset(),
        claims: Optional[dict[str, Any]] = None,
    ) -> None:
        self.kind = kind
        self.subject = subject
        self.scopes = scopes
        self.claims = claims if claims is not None else {}

    def __repr__(self) -> str:
        return f"<Identity {self.kind}:{self.subject}>"


class PolicyContext:
    """
    What a policy factory gets to build a policy: the reactor (clock and
    network), the state store, and the whole config (for the gateway's node
    name, trusted proxies...).
    """

    def __init__(self, reactor: Any, store: IStateStore, config: Any) -> None:
        self.reactor = reactor
        self.store = store
        self.config = config


class _HeadHook(StreamWrapper):
    """Runs a hook on the status and fields before they go out."""

    def __init__(self, inner: Any, hook: ResponseHook) -> None:
        super().__init__(inner)
        self._hook = hook

    def write_head(
        self,
        status: int,
        fields: list[tuple[bytes, bytes]],
        content_length: Optional[int] = None,
        reason: Optional[bytes] = None,
    ) -> None:
        self._hook(status, fields)
        self.inner.write_head(status, fields, content_length, reason)


class PolicyCall:
    """
    One request on its way through a policy chain.

    @ivar identity: set by an authentication policy, read by others.
    @ivar session: set by the C{session} policy.
    @ivar values: free room for plugins, by their own keys.
    """

    __slots__ = (
        "request",
        "stream",
        "identity",
        "session",
        "values",
        "_wrappers",
        "_chain",
        "_next",
    )

    def __init__(self, request: Request, stream: IResponseStream) -> None:
        self.request = request
        self.stream = stream
        self.identity: Optional[Identity] = None
        self.session: Any = None
        self.values: dict[str, Any] = {}
        self._wrappers: list[Callable[[Any], Any]] = []
        self._chain: Optional[PolicyChain] = None
        self._next = 0  # the index of the policy after the one running

    def on_response(self, hook: ResponseHook) -> None:
        """Call C{hook(status, fields)} on the response head; it may change C{fields}."""
        self._wrappers.append(lambda inner: _HeadHook(inner, hook))

    def wrap_stream(self, wrap: Callable[[Any], Any]) -> None:
        """Have the response go through C{wrap(inner_stream)}."""
        self._wrappers.append(wrap)

    def resume(self, answer: Any = None) -> None:
        """
        Go on after the running policy returned L{LATER}: C{None} lets the
        request go on to the next policy, an answer is sent instead.
        """
        chain = self._chain
        assert chain is not None, "this call is not running in a policy chain"
        try:
            chain._resumed(answer, self, self._next)
        except Exception:
            chain._crashed(Failure(), self, chain.policies[self._next - 1])

    def resume_failed(self, failure: Failure) -> None:
        """The running policy, which returned L{LATER}, failed: answer 500."""
        chain = self._chain
        assert chain is not None, "this call is not running in a policy chain"
        chain._crashed(failure, self, chain.policies[self._next - 1])

    def later_policies(self) -> tuple[IPolicy, ...]:
        """
        The policies that run after the running one for this request (a
        cache asks a later compress policy which coding it will choose, so
        as to key the variants it stores by that coding).
        """
        chain = self._chain
        return chain.policies[self._next :] if chain is not None else ()

    def subrequest(self, request: Request, stream: Any) -> None:
        """
        Send C{request}, a request of the running policy's own (a cache
        refreshing an entry in the background), through the rest of this
        chain: the policies after the running one, then the route's action,
        which answer on C{stream}. Call it from C{on_request}, or before
        the C{Deferred} that returned has fired.
        """
        chain = self._chain
        if chain is None:
            raise RuntimeError("this call is not running in a policy chain")
        call = PolicyCall(request, stream)
        call.identity = self.identity
        call.session = self.session
        call._chain = chain
        chain._run(call, self._next)

    def outgoing_stream(self) -> Any:
        """
        The stream the action (or an answer) writes to, wrappers applied: the
        last policy's wrapper is outermost, so the response passes through the
        policies in reverse order (as Envoy's encoder filters do).
        """
        stream = self.stream
        for wrap in self._wrappers:
            stream = wrap(stream)
        self._wrappers = []
        self.stream = stream
        return stream


@implementer(IRouteAction)
class PolicyChain:
    """A route's policies, then its action."""

    def __init__(self, policies: Sequence[IPolicy], action: IRouteAction) -> None:
        self.policies = tuple(policies)
        self.action = action

    def handle(self, request: Request, stream: Any) -> None:
        call = PolicyCall(request, stream)
        call._chain = self
        tls = request.tls
        if tls is not None and tls.client_cert is not None:
            # A verified client certificate is who the request is from,
            # until an authentication policy says otherwise.
            call.identity = tls.client_cert.identity()
        self._run(call, 0)

    def _run(self, call: PolicyCall, index: int) -> None:
        policies = self.policies
        while index < len(policies):
            policy = policies[index]
            index += 1
            call._next = index
            try:
                result = policy.on_request(call)
            except Exception:
                self._crashed(Failure(), call, policy)
                return
            if result is None:
                continue
            if result is LATER:
                return
            # Deferred is an ABC (Awaitable): its isinstance is the slow
            # kind, so an answer written by itself (a cache hit) is told first.
            if not hasattr(result, "write_to") and isinstance(result, Deferred):
                result.addCallbacks(
                    self._resumed,
                    self._crashed,
                    callbackArgs=(call, index),
                    errbackArgs=(call, policy),
                )
                return
            self._answer(call, result)
            return
        self.action.handle(call.request, call.outgoing_stream())

    def _resumed(self, result: Any, call: PolicyCall, index: int) -> None:
        if call.stream.lost:
            return
        if result is None:
            self._run(call, index)
        else:
            self._answer(call, result)

    def _answer(self, call: PolicyCall, answer: Any) -> None:
        stream = call.outgoing_stream()
        if isinstance(answer, GatewayError):
            stream.send_error(answer)
        elif isinstance(answer, Response):
            fields = list(answer.fields)
            if not any(name.lower() == b"x-request-id" for name, _ in fields):
                fields.append((b"X-Request-ID", call.request.request_id.encode("ascii")))
            stream.respond(answer.status, fields, answer.body)
        elif hasattr(answer, "write_to"):
            answer.write_to(stream)
        else:
            raise TypeError(f"a policy answered {answer!r}, not a GatewayError or Response")

    def _crashed(self, failure: Failure, call: PolicyCall, policy: IPolicy) -> None:
        log.failure(
            "policy {policy} failed on {request!r}",
            failure,
            policy=getattr(policy, "name", policy),
            request=call.request,
        )
        stream = call.stream
        if not stream.lost and not stream.finished:
            stream.send_error(
                GatewayError(500, "internal_error", "the gateway failed on this request")
            )
