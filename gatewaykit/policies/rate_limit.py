"""
The C{rate_limit} policy (SPEC section 4, "Rate limits"): C{limit}
requests per C{window} (plus C{burst}) for each value of a composed key,
decided by the state store in one round trip, advertised with the IETF
httpapi C{RateLimit-Policy} and C{RateLimit} fields (draft 11), and refused
with 429 and a C{quota-exceeded} problem.

When Redis cannot answer (L{StoreUnavailable}), C{gateway.redis.on_error}
says what happens: C{open} lets the request through (without RateLimit
fields: there is no count to show), C{closed} answers 503 C{unavailable},
C{local} decides in this process with C{local_share} of the limit and marks
the response with C{X-Gatewaykit-Degraded: ratelimit-local}. The store
itself fails fast while Redis is away and probes it every second, so those
requests don't each wait for the timeout and decisions go back to Redis
soon after it answers again.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Optional

from attrs import frozen
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.model import RedisConfig
from gatewaykit.config.schema import (
    Key,
    Section,
    converted,
    did_you_mean,
    duration,
    integer,
    list_of,
    one_of,
)
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IStateStore
from gatewaykit.policies.chain import LATER, PolicyCall, PolicyContext
from gatewaykit.state import Decision, StoreUnavailable
from gatewaykit.state.memory import MemoryStore

KEY_PREFIX = "gk:rl:"
"""Store keys of rate limits: C{gk:rl:<policy>:<sha256 of the key parts>}."""

# Key values whose store keys a policy remembers (then it starts over).
REMEMBERED_KEYS = 4096

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The problem type of a 429 from a rate limit (the RateLimit draft's)."""

POLICY_FIELD = b"RateLimit-Policy"
STATE_FIELD = b"RateLimit"
DEGRADED_FIELD = b"X-Gatewaykit-Degraded"
DEGRADED_LOCAL = b"ratelimit-local"

ALGORITHMS = ("gcra", "sliding_window", "fixed_window")

# Whole seconds for the fields: a float a hair over an integer is that integer.
_EPSILON = 1e-6


@frozen
class KeyPart:
    """
    One part of a rate-limit key: C{ip}, C{route}, C{api_key},
    C{header:NAME} or C{jwt:CLAIM}.
    """

    kind: str
    name: Optional[str] = None

    SIMPLE = ("ip", "route", "api_key")
    NAMED = ("header", "jwt")

    @classmethod
    def parse(cls, text: str) -> "KeyPart":
        """The part C{text} names; raises C{ValueError} with the problem."""
        kind, sep, name = text.partition(":")
        if kind in cls.SIMPLE:
            if sep:
                raise ValueError(f"key part {kind!r} takes no name")
            return cls(kind)
        if kind in cls.NAMED:
            if not name:
                raise ValueError(f"key part {kind!r} needs a name: {kind}:NAME")
            return cls(kind, name.lower() if kind == "header" else name)
        forms = ("ip", "route", "api_key", "header:NAME", "jwt:CLAIM")
        raise ValueError(
            f"unknown key part {text!r}; expected one of: {', '.join(forms)}"
            + did_you_mean(kind, cls.SIMPLE + cls.NAMED)
        )

    def value(self, call: PolicyCall) -> Any:
        """This part's value for C{call}, or C{None} when the request has none."""
        request = call.request
        kind = self.kind
        if kind == "ip":
            return request.client_ip
        if kind == "route":
            return request.route
        if kind == "header":
            raw = request.headers.get(self.name or "")
            return None if raw is None else raw.decode("latin-1")
        identity = call.identity
        if identity is None:
            return None
        if kind == "api_key":
            return identity.subject if identity.kind == "api_key" else None
        return identity.claims.get(self.name or "") if identity.kind == "jwt" else None

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}:{self.name}"


@frozen
class RateLimitOptions:
    """A C{rate_limit} policy's keys."""

    limit: int
    window: float
    key: tuple[KeyPart, ...] = (KeyPart("ip"),)
    burst: int = 0
    algorithm: str = "gcra"


OPTIONS = Section(
    {
        "key": list_of(
            converted(KeyPart.parse, "a key part"), non_empty=True, unique=str, what="key part"
        ),
        "limit": Key(integer(minimum=1), required=True),
        "window": Key(duration(), required=True),
        "burst": integer(minimum=0),
        "algorithm": one_of(*ALGORITHMS, what="algorithm"),
    }
).into(RateLimitOptions)


def _seconds(value: float) -> int:
    """Whole seconds, rounded up, for the fields (never negative)."""
    return max(0, math.ceil(value - _EPSILON))


def _merge(fields: list[tuple[bytes, bytes]], name: bytes, member: bytes) -> None:
    """Add C{member} to the list field C{name}, after any members already there."""
    wanted = name.lower()
    size = len(wanted)
    for index, (field, value) in enumerate(fields):
        # (The length first: most fields differ in it, and lower() copies.)
        if len(field) == size and field.lower() == wanted:
            fields[index] = (field, value + b", " + member)
            return
    fields.append((name, member))


def _resume_with(call: PolicyCall, answer_of: Callable[..., Any], *args: Any) -> None:
    """Resume C{call} with C{answer_of(*args)}, or answer 500 if that raises."""
    try:
        answer = answer_of(*args)
    except Exception:
        call.resume_failed(Failure())
    else:
        call.resume(answer)


def _mark_degraded(fields: list[tuple[bytes, bytes]]) -> None:
    wanted = DEGRADED_FIELD.lower()
    for field, value in fields:
        if field.lower() == wanted and value == DEGRADED_LOCAL:
            return
    fields.append((DEGRADED_FIELD, DEGRADED_LOCAL))


@implementer(IPolicy)
class RateLimit:
    """
    One named C{rate_limit} policy.

    @ivar allowed: requests let through (by the store, locally or by C{open}).
    @ivar limited: requests refused with 429.
    @ivar degraded: requests decided without the store (any C{on_error} mode).
    """

    def __init__(
        self,
        name: str,
        options: RateLimitOptions,
        store: IStateStore,
        clock: Any,
        redis: Optional[RedisConfig] = None,
    ) -> None:
        self.name = name
        self.options = options
        self._store = store
        # The in-process store answers at once, and the Redis store can
        # answer with plain calls: skip the Deferred for both.
        self._memory = store if isinstance(store, MemoryStore) else None
        self._decide_then = getattr(store, "decide_then", None)
        self._clock = clock
        # Without gateway.redis the in-process store never fails; a store
        # given some other way gets the defaults.
        settings = redis if redis is not None else RedisConfig()
        self._on_error = settings.on_error
        self._local_limit = math.ceil(options.limit * settings.local_share)
        self._local_burst = math.ceil(options.burst * settings.local_share)
        self._local: Optional[MemoryStore] = None
        quoted = json.dumps(name).encode("ascii")  # an sf-string: quotes and escapes
        self._quoted = quoted
        window = _seconds(options.window) or 1
        self._policy_member = b"%s;q=%d;w=%d" % (quoted, options.limit, window)
        self._local_policy_member = b"%s;q=%d;w=%d" % (quoted, self._local_limit, window)
        # The store keys of recent key values: a JSON dump and a SHA-256
        # per request showed in profiles.
        self._keys: dict[tuple[Any, ...], str] = {}
        self.allowed = 0
        self.limited = 0
        self.degraded = 0

    def key_for(self, call: PolicyCall) -> str:
        """
        The store key of C{call}: C{gk:rl:}, the policy's name and the
        SHA-256 of its key parts (a part the request lacks counts as one
        shared value).
        """
        values = tuple([part.value(call) for part in self.options.key])
        try:
            return self._keys[values]
        except KeyError:
            pass
        except TypeError:  # a claim that is a list or an object
            return self._store_key(values)
        if len(self._keys) >= REMEMBERED_KEYS:
            self._keys.clear()
        key = self._keys[values] = self._store_key(values)
        return key

    def _store_key(self, values: tuple[Any, ...]) -> str:
        composed = json.dumps(values, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(composed.encode("utf-8")).hexdigest()
        return f"{KEY_PREFIX}{self.name}:{digest}"

    def on_request(self, call: PolicyCall) -> Any:
        options = self.options
        key = self.key_for(call)
        if self._memory is not None:
            decision = self._memory.decide(
                key, options.limit, options.window, options.burst, options.algorithm
            )
            return self._answer(decision, call)
        if self._decide_then is not None:
            self._decide_then(
                key,
                options.limit,
                options.window,
                options.burst,
                options.algorithm,
                self._decided,
                self._undecided,
                call,
            )
            return LATER
        d = self._store.rate_limit(
            key, options.limit, options.window, options.burst, options.algorithm
        )
        return d.addCallbacks(
            self._answer,
            self._store_failed,
            callbackArgs=(call,),
            errbackArgs=(call, key),
        )

    # The answers of decide_then: the chain goes on (or fails) from here.

    def _decided(self, decision: Decision, at: float, call: PolicyCall) -> None:
        _resume_with(call, self._answer, decision, call)

    def _undecided(self, failure: Failure, call: PolicyCall) -> None:
        _resume_with(call, self._store_failed, failure, call, self.key_for(call))

    def _answer(self, decision: Decision, call: PolicyCall, local: bool = False) -> Any:
        if decision.allowed:
            self.allowed += 1
            reset = _seconds(decision.reset_after)
        else:
            self.limited += 1
            # RateLimit's reset names the same moment as Retry-After.
            reset = max(1, _seconds(decision.retry_after))
        policy = self._local_policy_member if local else self._policy_member
        state = b"%s;r=%d;t=%d" % (self._quoted, decision.remaining, reset)

        def add_fields(status: int, fields: list[tuple[bytes, bytes]]) -> None:
            _merge(fields, POLICY_FIELD, policy)
            _merge(fields, STATE_FIELD, state)
            if local:
                _mark_degraded(fields)

        call.on_response(add_fields)
        if decision.allowed:
            return None
        options = self.options
        limit = self._local_limit if local else options.limit
        return GatewayError(
            429,
            "rate_limited",
            f"rate limit {self.name!r} exceeded ({limit} per {options.window:g}s);"
            f" retry in {reset}s",
            headers=((b"Retry-After", b"%d" % reset),),
            problem_type=QUOTA_EXCEEDED,
            extensions={"violated-policies": [self.name]},
        )

    def _store_failed(self, failure: Failure, call: PolicyCall, key: str) -> Any:
        failure.trap(StoreUnavailable)
        self.degraded += 1
        if self._on_error == "closed":
            return GatewayError(
                503,
                "unavailable",
                f"rate limit {self.name!r} cannot be checked: the state store is unavailable",
                headers=((b"Retry-After", b"1"),),
            )
        if self._on_error == "local":
            options = self.options
            decision = self._local_store().decide(
                key, self._local_limit, options.window, self._local_burst, options.algorithm
            )
            return self._answer(decision, call, local=True)
        self.allowed += 1
        return None

    def _local_store(self) -> MemoryStore:
        if self._local is None:
            self._local = MemoryStore(self._clock)
        return self._local

    def close(self) -> None:
        """Drop the local fallback's counters (on shutdown or reload)."""
        if self._local is not None:
            self._local.close()
            self._local = None


@implementer(IPolicyFactory)
class RateLimitFactory:
    """The C{rate_limit} policy type."""

    name = "rate_limit"
    options = staticmethod(OPTIONS)

    def build(self, name: str, options: RateLimitOptions, context: PolicyContext) -> RateLimit:
        return RateLimit(
            name,
            options,
            context.store,
            context.reactor,
            context.config.gateway.redis,
        )
