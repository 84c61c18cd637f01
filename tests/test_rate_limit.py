"""
Tests for L{gatewaykit.policies.rate_limit}: decisions, keys, the RateLimit
fields, the 429 problem and what happens when the store is unavailable.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from attrs import evolve
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit import gateway as gateway_module
from gatewaykit.config import parse_config
from gatewaykit.config.errors import ConfigError
from gatewaykit.config.model import PolicyConfig, RedisConfig, RespondAction
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IStateStore
from gatewaykit.policies.chain import Identity, PolicyCall
from gatewaykit.policies.rate_limit import (
    QUOTA_EXCEEDED,
    REMEMBERED_KEYS,
    KeyPart,
    RateLimit,
    RateLimitFactory,
    RateLimitOptions,
)
from gatewaykit.state import Decision, StoreUnavailable
from gatewaykit.state.memory import MemoryStore
from gatewaykit.testing import GatewayHarness, Response, make_config, parse_response, route

GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n%s\r\n"


def get(path: str = "", **fields: str) -> bytes:
    """A GET request for C{/path} with header C{fields} (C{X_Key} -> C{X-Key})."""
    head = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in fields.items())
    return GET % (path.encode(), head.encode())


def options(limit: int = 3, window: float = 60.0, **kwargs: Any) -> RateLimitOptions:
    if "key" in kwargs:
        kwargs["key"] = tuple(KeyPart.parse(part) for part in kwargs["key"])
    return RateLimitOptions(limit=limit, window=window, **kwargs)


@implementer(IStateStore)
class FlakyStore:
    """A shared store that is up (a MemoryStore underneath) or unavailable."""

    shared = True

    def __init__(self, clock: Any) -> None:
        self.memory = MemoryStore(clock)
        self.up = True
        self.calls = 0

    def rate_limit(self, key: str, limit: int, window: float, burst: int, algorithm: str) -> Any:
        self.calls += 1
        if not self.up:
            return fail(StoreUnavailable("Redis is away"))
        return self.memory.rate_limit(key, limit, window, burst, algorithm)

    def get(self, key: str) -> Any:
        return self.memory.get(key)

    def set(self, key: str, value: bytes, ttl: float) -> Any:
        return self.memory.set(key, value, ttl)

    def delete(self, key: str) -> Any:
        return self.memory.delete(key)

    def close(self) -> Any:
        return self.memory.close()


@implementer(IPolicy)
class HeaderIdentity:
    """Sets C{call.identity} from C{X-Kind}, C{X-Subject} and C{X-Claims} (JSON)."""

    name = "identity"

    def on_request(self, call: PolicyCall) -> None:
        kind = call.request.headers.get("x-kind")
        if kind is not None:
            claims = json.loads(call.request.headers.get("x-claims") or b"{}")
            subject = (call.request.headers.get("x-subject") or b"").decode()
            call.identity = Identity(kind.decode(), subject, claims=claims)


@implementer(IPolicyFactory)
class HeaderIdentityFactory:
    name = "test.identity"
    options = None

    def build(self, name: str, options: Any, context: Any) -> IPolicy:
        return HeaderIdentity()


class Gateway:
    """A gateway whose routes use rate-limit policies, on a fake clock."""

    def __init__(
        self,
        test_case: SynchronousTestCase,
        policies: dict[str, RateLimitOptions],
        routes: Optional[dict[str, tuple[str, ...]]] = None,
        redis: Optional[RedisConfig] = None,
        fields: tuple[tuple[str, str], ...] = (),
    ) -> None:
        routes = routes or {"/": tuple(policies)}
        config = make_config(
            routes=[
                route(
                    f"r{index}",
                    index=index,
                    path_prefix=prefix,
                    respond=RespondAction(200, "ok", fields),
                    policies=names,
                )
                for index, (prefix, names) in enumerate(routes.items())
            ],
            policies=[PolicyConfig("identity", "test.identity")]
            + [PolicyConfig(name, "rate_limit", value) for name, value in policies.items()],
        )
        self.store: Optional[FlakyStore] = None
        if redis is not None:
            config = evolve(config, gateway=evolve(config.gateway, redis=redis))
            # Never a real Redis in unit tests: the "Redis" store is a fake.
            test_case.patch(gateway_module, "open_store", self._open_store)
        self.harness = GatewayHarness(
            config,
            policy_types={
                "rate_limit": RateLimitFactory(),
                "test.identity": HeaderIdentityFactory(),
            },
        )

    def _open_store(self, config: Any, reactor: Any) -> FlakyStore:
        self.store = FlakyStore(reactor)
        return self.store

    def policy(self, name: str) -> RateLimit:
        policy = self.harness.gateway.policies[name]
        assert isinstance(policy, RateLimit)
        return policy

    def request(self, data: bytes = get(), client: str = "10.0.0.1") -> Response:
        protocol, transport = self.harness.connect(client=client)
        protocol.dataReceived(data)
        return parse_response(transport.value())

    def advance(self, seconds: float) -> None:
        self.harness.reactor.advance(seconds)


def field(response: Response, name: str) -> Optional[str]:
    """The one field C{name} of C{response} as text (failing on a repeated one)."""
    values = response.headers.get_all(name)
    assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
    return values[0].decode("latin-1") if values else None


def remaining(response: Response) -> int:
    """The C{r} of the (single-member) RateLimit field."""
    match = re.search(r";r=(\d+)", field(response, "RateLimit") or "")
    assert match is not None, response
    return int(match.group(1))


class RateLimitFieldsTests(SynchronousTestCase):
    """What an allowed response carries."""

    def test_fields(self) -> None:
        """RateLimit-Policy names the quota and window; RateLimit the remaining and reset."""
        gateway = Gateway(self, {"per-ip": options(limit=3, window=60)})
        response = gateway.request()
        self.assertEqual(response.status, 200)
        self.assertEqual(field(response, "RateLimit-Policy"), '"per-ip";q=3;w=60')
        # gcra: one request costs 60/3 = 20 s of the quota.
        self.assertEqual(field(response, "RateLimit"), '"per-ip";r=2;t=20')

    def test_never_old_forms(self) -> None:
        """No X-RateLimit-* nor RateLimit-Limit/-Remaining/-Reset fields."""
        response = Gateway(self, {"p": options()}).request()
        names = {name.lower() for name, _ in response.headers}
        self.assertFalse({n for n in names if n.startswith(b"x-ratelimit")}, names)
        self.assertFalse(names & {b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset"})

    def test_fixed_window_counts_down(self) -> None:
        """fixed_window: r counts down within a window and starts over in the next."""
        gateway = Gateway(self, {"p": options(limit=4, window=10, algorithm="fixed_window")})
        gateway.advance(2)
        seen = [gateway.request() for _ in range(5)]
        self.assertEqual([remaining(r) for r in seen], [3, 2, 1, 0, 0])
        self.assertEqual([r.status for r in seen], [200, 200, 200, 200, 429])
        self.assertEqual(field(seen[0], "RateLimit"), '"p";r=3;t=8')
        gateway.advance(8)
        self.assertEqual(remaining(gateway.request()), 3)

    def test_sliding_window(self) -> None:
        """sliding_window: the previous window's requests weigh as it slides out."""
        gateway = Gateway(self, {"p": options(limit=4, window=10, algorithm="sliding_window")})
        for _ in range(4):
            self.assertEqual(gateway.request().status, 200)
        # Half-way through the next window, half of the 4 still count.
        gateway.advance(15)
        self.assertEqual([gateway.request().status for _ in range(3)], [200, 200, 429])

    def test_burst(self) -> None:
        """burst adds capacity on top of the limit; q still says the limit."""
        gateway = Gateway(self, {"p": options(limit=2, window=10, burst=3)})
        statuses = [gateway.request().status for _ in range(6)]
        self.assertEqual(statuses, [200] * 5 + [429])
        self.assertEqual(field(gateway.request(), "RateLimit-Policy"), '"p";q=2;w=10')

    def test_gcra_refills(self) -> None:
        """gcra gives one request back every window / limit seconds."""
        gateway = Gateway(self, {"p": options(limit=2, window=10)})
        self.assertEqual([gateway.request().status for _ in range(3)], [200, 200, 429])
        gateway.advance(5)
        self.assertEqual([gateway.request().status for _ in range(2)], [200, 429])

    def test_window_rounded_up(self) -> None:
        """w is whole seconds, rounded up."""
        gateway = Gateway(self, {"p": options(limit=5, window=1.5)})
        self.assertEqual(field(gateway.request(), "RateLimit-Policy"), '"p";q=5;w=2')

    def test_merges_upstream_fields(self) -> None:
        """RateLimit fields the action already sends get our members added."""
        gateway = Gateway(
            self,
            {"p": options()},
            fields=(("RateLimit-Policy", '"app";q=9;w=1'), ("RateLimit", '"app";r=8;t=1')),
        )
        response = gateway.request()
        self.assertEqual(field(response, "RateLimit-Policy"), '"app";q=9;w=1, "p";q=3;w=60')
        self.assertEqual(field(response, "RateLimit"), '"app";r=8;t=1, "p";r=2;t=20')


class TooManyRequestsTests(SynchronousTestCase):
    """What a refused request gets."""

    def setUp(self) -> None:
        self.gateway = Gateway(self, {"per-ip": options(limit=2, window=60)})
        self.gateway.request()
        self.gateway.request()
        self.response = self.gateway.request()

    def test_status_and_retry_after(self) -> None:
        """429 with Retry-After in whole seconds, and the RateLimit fields."""
        response = self.response
        self.assertEqual(response.status, 429)
        self.assertEqual(field(response, "Retry-After"), "30")
        self.assertEqual(field(response, "RateLimit-Policy"), '"per-ip";q=2;w=60')
        # The reset names the same moment as Retry-After.
        self.assertEqual(field(response, "RateLimit"), '"per-ip";r=0;t=30')

    def test_problem(self) -> None:
        """The body is the draft's quota-exceeded problem naming the violated policy."""
        self.assertEqual(field(self.response, "Content-Type"), "application/problem+json")
        problem = json.loads(self.response.body)
        self.assertEqual(problem["type"], QUOTA_EXCEEDED)
        self.assertEqual(problem["status"], 429)
        self.assertEqual(problem["title"], "Too Many Requests")
        self.assertEqual(problem["violated-policies"], ["per-ip"])
        self.assertIn("request_id", problem)

    def test_retry_after_rounded_up(self) -> None:
        """A fractional wait becomes the next whole second."""
        self.gateway.advance(0.5)
        self.assertEqual(field(self.gateway.request(), "Retry-After"), "30")
        self.gateway.advance(29.4)
        self.assertEqual(field(self.gateway.request(), "Retry-After"), "1")

    def test_counters(self) -> None:
        """The policy counts what it allowed and what it refused."""
        policy = self.gateway.policy("per-ip")
        self.assertEqual((policy.allowed, policy.limited, policy.degraded), (2, 1, 0))


class KeyTests(SynchronousTestCase):
    """Which requests share a counter."""

    def statuses(self, gateway: Gateway, *requests: tuple[bytes, str]) -> list[int]:
        return [gateway.request(data, client).status for data, client in requests]

    def test_ip(self) -> None:
        """key [ip]: each client address has its own counter."""
        gateway = Gateway(self, {"p": options(limit=1, key=["ip"])})
        self.assertEqual(
            self.statuses(gateway, (get(), "10.0.0.1"), (get(), "10.0.0.2"), (get(), "10.0.0.1")),
            [200, 200, 429],
        )

    def test_header(self) -> None:
        """key [header:X-Key]: one counter per value; requests without it share one."""
        gateway = Gateway(self, {"p": options(limit=1, key=["header:X-Key"])})
        self.assertEqual(
            self.statuses(
                gateway,
                (get(X_Key="a"), "10.0.0.1"),
                (get(X_Key="b"), "10.0.0.1"),
                (get(x_key="a"), "10.0.0.2"),
                (get(), "10.0.0.3"),
                (get(), "10.0.0.4"),
            ),
            [200, 200, 429, 200, 429],
        )

    def test_composed(self) -> None:
        """Parts compose: [ip, header:X-Key] counts each pair."""
        gateway = Gateway(self, {"p": options(limit=1, key=["ip", "header:X-Key"])})
        self.assertEqual(
            self.statuses(
                gateway,
                (get(X_Key="a"), "10.0.0.1"),
                (get(X_Key="a"), "10.0.0.2"),
                (get(X_Key="a"), "10.0.0.1"),
            ),
            [200, 200, 429],
        )

    def test_route(self) -> None:
        """key [route] counts per route; one policy keyed by ip counts across routes."""
        gateway = Gateway(
            self,
            {"by-route": options(limit=1, key=["route"]), "by-ip": options(limit=2, key=["ip"])},
            routes={"/a": ("by-route",), "/b": ("by-route",), "/c": ("by-ip",), "/d": ("by-ip",)},
        )
        self.assertEqual(
            self.statuses(
                gateway, (get("a"), "10.0.0.1"), (get("b"), "10.0.0.2"), (get("a"), "10.0.0.3")
            ),
            [200, 200, 429],
        )
        self.assertEqual(
            self.statuses(
                gateway, (get("c"), "10.0.0.9"), (get("d"), "10.0.0.9"), (get("c"), "10.0.0.9")
            ),
            [200, 200, 429],
        )

    def test_api_key(self) -> None:
        """key [api_key]: the key name an api_key policy recognised."""
        gateway = Gateway(
            self, {"p": options(limit=1, key=["api_key"])}, routes={"/": ("identity", "p")}
        )
        self.assertEqual(
            self.statuses(
                gateway,
                (get(X_Kind="api_key", X_Subject="alice"), "10.0.0.1"),
                (get(X_Kind="api_key", X_Subject="bob"), "10.0.0.1"),
                (get(X_Kind="api_key", X_Subject="alice"), "10.0.0.2"),
            ),
            [200, 200, 429],
        )

    def test_jwt_claim(self) -> None:
        """key [jwt:CLAIM]: a claim of the token a jwt policy accepted."""
        gateway = Gateway(
            self, {"p": options(limit=1, key=["jwt:sub"])}, routes={"/": ("identity", "p")}
        )
        alice = get(X_Kind="jwt", X_Claims='{"sub": "alice"}')
        self.assertEqual(
            self.statuses(
                gateway,
                (alice, "10.0.0.1"),
                (get(X_Kind="jwt", X_Claims='{"sub": "bob"}'), "10.0.0.1"),
                (alice, "10.0.0.2"),
            ),
            [200, 200, 429],
        )

    def test_missing_identity_shares_a_counter(self) -> None:
        """Requests without the identity a part needs share one counter (not unlimited)."""
        gateway = Gateway(
            self, {"p": options(limit=1, key=["jwt:sub"])}, routes={"/": ("identity", "p")}
        )
        self.assertEqual(
            self.statuses(
                gateway,
                (get(), "10.0.0.1"),
                # An identity of another kind has no JWT claims.
                (get(X_Kind="api_key", X_Subject="alice", X_Claims='{"sub": "x"}'), "10.0.0.2"),
            ),
            [200, 429],
        )

    def test_store_key(self) -> None:
        """The store key is gk:rl:, the policy's name and a SHA-256: policies never share one."""
        gateway = Gateway(self, {"one": options(), "two": options()})
        one, two = gateway.policy("one"), gateway.policy("two")
        call = PolicyCall(Request("GET", b"/", "/", client_host="10.0.0.1"), None)  # type: ignore[arg-type]
        self.assertRegex(one.key_for(call), r"^gk:rl:one:[0-9a-f]{64}$")
        self.assertEqual(one.key_for(call)[10:], two.key_for(call)[10:])
        self.assertNotEqual(one.key_for(call), two.key_for(call))

    def test_store_key_remembered(self) -> None:
        """
        Store keys are remembered per key value, up to REMEMBERED_KEYS, and
        are the same as computed afresh; list claims (unhashable) are keyed too.
        """
        gateway = Gateway(self, {"one": options()})
        policy = gateway.policy("one")

        def call_from(ip: str) -> PolicyCall:
            request = Request("GET", b"/", "/", client_host=ip)
            return PolicyCall(request, None)  # type: ignore[arg-type]

        first = policy.key_for(call_from("10.0.0.1"))
        self.assertEqual(policy.key_for(call_from("10.0.0.1")), first)
        self.assertEqual(policy._store_key(("10.0.0.1",)), first)
        self.assertNotEqual(policy.key_for(call_from("10.0.0.2")), first)
        for index in range(REMEMBERED_KEYS + 10):
            policy.key_for(call_from(f"10.1.{index // 256}.{index % 256}"))
        self.assertLessEqual(len(policy._keys), REMEMBERED_KEYS)
        self.assertEqual(policy.key_for(call_from("10.0.0.1")), first)

    def test_list_claim(self) -> None:
        """A claim that is a list (not hashable) keys its own counter too."""
        gateway = Gateway(
            self, {"p": options(limit=1, key=["jwt:groups"])}, routes={"/": ("identity", "p")}
        )
        admins = get(X_Kind="jwt", X_Claims='{"groups": ["admin", "ops"]}')
        self.assertEqual(
            self.statuses(
                gateway,
                (admins, "10.0.0.1"),
                (get(X_Kind="jwt", X_Claims='{"groups": ["ops"]}'), "10.0.0.1"),
                (admins, "10.0.0.2"),
            ),
            [200, 200, 429],
        )


class SeveralPoliciesTests(SynchronousTestCase):
    """Two rate limits on one route."""

    def setUp(self) -> None:
        self.gateway = Gateway(
            self,
            {
                "per-ip": options(limit=5, window=60),
                "per-key": options(limit=1, window=10, key=["header:X-Key"]),
            },
        )

    def test_members_in_order(self) -> None:
        """Each field is one list, a member per policy, as the response passes them."""
        response = self.gateway.request(get(X_Key="a"))
        # The response goes back through the policies in reverse route order.
        self.assertEqual(
            field(response, "RateLimit-Policy"), '"per-key";q=1;w=10, "per-ip";q=5;w=60'
        )
        self.assertEqual(field(response, "RateLimit"), '"per-key";r=0;t=10, "per-ip";r=4;t=12')

    def test_violated_policy_named(self) -> None:
        """A 429 names only the policy that refused, and carries both members."""
        self.gateway.request(get(X_Key="a"))
        response = self.gateway.request(get(X_Key="a"))
        self.assertEqual(response.status, 429)
        self.assertEqual(json.loads(response.body)["violated-policies"], ["per-key"])
        self.assertEqual(field(response, "RateLimit"), '"per-key";r=0;t=10, "per-ip";r=3;t=24')


class StoreUnavailableTests(SynchronousTestCase):
    """gateway.redis.on_error when the store cannot answer."""

    def gateway(self, on_error: str, share: float = 1.0, **policy: Any) -> Gateway:
        redis = RedisConfig(on_error=on_error, local_share=share)
        gateway = Gateway(self, {"p": options(**policy)}, redis=redis)
        assert gateway.store is not None
        gateway.store.up = False
        return gateway

    def test_open(self) -> None:
        """open: the request goes through, without RateLimit fields."""
        gateway = self.gateway("open", limit=1)
        responses = [gateway.request() for _ in range(3)]
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        self.assertEqual([field(r, "RateLimit") for r in responses], [None] * 3)
        self.assertIsNone(field(responses[0], "X-Gatewaykit-Degraded"))
        policy = gateway.policy("p")
        self.assertEqual((policy.allowed, policy.degraded), (3, 3))

    def test_closed(self) -> None:
        """closed: 503 unavailable."""
        response = self.gateway("closed").request()
        self.assertEqual(response.status, 503)
        self.assertEqual(json.loads(response.body)["type"], "urn:gatewaykit:error:unavailable")
        self.assertEqual(field(response, "Retry-After"), "1")

    def test_local(self) -> None:
        """local: decided in the process at local_share of the limit, marked degraded."""
        gateway = self.gateway("local", share=0.5, limit=4, window=60)
        responses = [gateway.request() for _ in range(3)]
        self.assertEqual([r.status for r in responses], [200, 200, 429])
        for response in responses:
            self.assertEqual(field(response, "X-Gatewaykit-Degraded"), "ratelimit-local")
            self.assertEqual(field(response, "RateLimit-Policy"), '"p";q=2;w=60')
        self.assertEqual(json.loads(responses[2].body)["type"], QUOTA_EXCEEDED)

    def test_local_share_rounds_up(self) -> None:
        """The local limit and burst are the shares rounded up (never 0 for a limit)."""
        gateway = self.gateway("local", share=0.1, limit=3, burst=1)
        self.assertEqual([gateway.request().status for _ in range(3)], [200, 200, 429])

    def test_back_to_store(self) -> None:
        """Once the store answers again, decisions are its own: no degraded mark."""
        gateway = self.gateway("local", limit=5)
        self.assertEqual(field(gateway.request(), "X-Gatewaykit-Degraded"), "ratelimit-local")
        assert gateway.store is not None
        gateway.store.up = True
        response = gateway.request()
        self.assertIsNone(field(response, "X-Gatewaykit-Degraded"))
        # The store's own counter: the local request was not counted there.
        self.assertEqual(remaining(response), 4)
        self.assertEqual(gateway.store.calls, 2)

    def test_other_failures_are_errors(self) -> None:
        """A store failure that is not unavailability is a 500, not on_error."""
        gateway = self.gateway("open")
        assert gateway.store is not None
        gateway.store.rate_limit = lambda *args: fail(RuntimeError("bug"))  # type: ignore[method-assign]
        self.assertEqual(gateway.request().status, 500)
        self.flushLoggedErrors(RuntimeError)

    def test_waits_for_store(self) -> None:
        """The chain waits for the store's answer without blocking."""
        gateway = self.gateway("open")
        assert gateway.store is not None
        pending: Deferred[Decision] = Deferred()
        gateway.store.rate_limit = lambda *args: pending  # type: ignore[method-assign]
        protocol, transport = gateway.harness.connect()
        protocol.dataReceived(get())
        self.assertEqual(transport.value(), b"")
        pending.callback(Decision(True, 3, 2, 20.0))
        self.assertEqual(field(parse_response(transport.value()), "RateLimit"), '"p";r=2;t=20')

    def test_close_drops_local_store(self) -> None:
        """close() drops the local fallback's counters."""
        gateway = self.gateway("local", limit=1)
        self.assertEqual([gateway.request().status for _ in range(2)], [200, 429])
        gateway.policy("p").close()
        self.assertEqual(gateway.request().status, 200)


class OptionsTests(SynchronousTestCase):
    """The policy's keys in a config file."""

    def parse(self, body: str) -> Any:
        config = parse_config(
            "listeners: {web: {protocol: http, bind: '127.0.0.1:0'}}\n"
            f"policies:\n  p: {{type: rate_limit, {body}}}\n"
            "routes: [{name: r, match: {path_prefix: /}, respond: {status: 200}, policies: [p]}]\n"
        )
        return config.policies["p"].options

    def problems(self, body: str) -> list[str]:
        try:
            self.parse(body)
        except ConfigError as e:
            return [problem.message for problem in e.problems]
        raise AssertionError("no problem found")

    def test_full(self) -> None:
        """Every key."""
        self.assertEqual(
            self.parse(
                "key: [jwt:sub, header:X-Tenant, ip, route, api_key], limit: 100,"
                " window: 1m, burst: 20, algorithm: sliding_window"
            ),
            RateLimitOptions(
                limit=100,
                window=60.0,
                key=(
                    KeyPart("jwt", "sub"),
                    KeyPart("header", "x-tenant"),
                    KeyPart("ip"),
                    KeyPart("route"),
                    KeyPart("api_key"),
                ),
                burst=20,
                algorithm="sliding_window",
            ),
        )

    def test_defaults(self) -> None:
        """key defaults to [ip], burst to 0, algorithm to gcra."""
        self.assertEqual(self.parse("limit: 20, window: 1s"), options(limit=20, window=1.0))

    def test_mistakes(self) -> None:
        """Each mistake is reported."""
        self.assertEqual(
            self.problems("key: [ipp, 'header', ip, ip], limit: 0, burst: -1, algorithm: leaky"),
            [
                "missing required key 'window'",
                "unknown key part 'ipp'; expected one of: ip, route, api_key, header:NAME,"
                " jwt:CLAIM; did you mean 'ip'?",
                "key part 'header' needs a name: header:NAME",
                "duplicate key part 'ip' (first at 3:46)",
                "expected an integer >= 1, got 0",
                "expected an integer >= 0, got -1",
                "unknown algorithm 'leaky'; expected one of: gcra, sliding_window, fixed_window",
            ],
        )

    def test_interfaces(self) -> None:
        """The factory and its policies provide their interfaces."""
        factory = RateLimitFactory()
        verifyObject(IPolicyFactory, factory)
        verifyObject(IPolicy, Gateway(self, {"p": options()}).policy("p"))
