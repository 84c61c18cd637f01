"""
Tests for L{gatewaykit.policies.session}: the signed cookie, the session in
the state store (new, reused, tampered, expired, sliding), saving only what
changed, cookie attributes, values to and from other parties, and a state
store that is down.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Optional

from attrs import evolve
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.config.model import PolicyConfig, RespondAction
from gatewaykit.http.message import Response
from gatewaykit.interfaces import IPolicy, IPolicyFactory, IStateStore
from gatewaykit.policies.chain import PolicyContext
from gatewaykit.policies.session import (
    KEY_PREFIX,
    Session,
    SessionFactory,
    SessionOptions,
    SessionPolicy,
    sign,
    unsign,
)
from gatewaykit.state import StoreUnavailable
from gatewaykit.state.memory import MemoryStore
from gatewaykit.testing import GatewayHarness, make_config, parse_response, route, upstream
from gatewaykit.testing import Response as Received

SECRET = "correct horse battery staple 1234"
OLD_SECRET = "the secret we used last year, ok"
NEW_SECRET = "a brand new secret of 32 bytes!!"


@implementer(IPolicy)
class Probe:
    """
    Runs after the session policy: changes the session as the query says
    (C{set=key:value}, C{delete=key}, C{invalidate}) and answers with what
    it saw, or lets the request go on with C{pass}.
    """

    name = "probe"

    def on_request(self, call: Any) -> Optional[Response]:
        params = call.request.query_params
        session = call.session
        if session is not None:
            for item in params.get("set", ()):
                key, _, value = item.partition(":")
                session.set(key, value)
            for key in params.get("delete", ()):
                session.delete(key)
            if "invalidate" in params:
                session.invalidate()
        if "pass" in params:
            return None
        seen = {
            "session": None
            if session is None
            else {"id": session.id, "is_new": session.is_new, "data": session.data},
            "x_user": [v.decode() for v in call.request.headers.get_all("x-user")],
            "cookie": [v.decode() for v in call.request.headers.get_all("cookie")],
        }
        return Response(200, [(b"Content-Type", b"application/json")], json.dumps(seen).encode())


@implementer(IPolicy)
class ForwardAuthStub:
    """Puts the auth service's copied headers where forward_auth does."""

    name = "fa"

    def on_request(self, call: Any) -> None:
        user = call.request.query_param("fa")
        if user is not None:
            call.values["forward_auth"] = {"x-user": user, "X-Other": "ignored"}
        user = call.request.query_param("fa-answer")
        if user is not None:
            call.values["forward_auth"] = AuthAnswer([(b"X-USER", user.encode())])


class AuthAnswer:
    """The auth service's answer as forward_auth may keep it: get(name) -> bytes."""

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.fields = fields

    def get(self, name: str) -> Optional[bytes]:
        values = [v for n, v in self.fields if n.lower() == name.lower().encode()]
        return b", ".join(values) if values else None


@implementer(IPolicyFactory)
class Fixed:
    """A policy type that always builds the same object."""

    options = None

    def __init__(self, name: str, policy: Any) -> None:
        self.name = name
        self.policy = policy

    def build(self, name: str, options: Any, context: Any) -> Any:
        return self.policy


@implementer(IStateStore)
class RecordingStore(MemoryStore):
    """The memory store, remembering the writes it was asked for."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.writes: list[tuple[str, str]] = []

    def set(self, key: str, value: bytes, ttl: float) -> Deferred[None]:
        self.writes.append(("set", key))
        return super().set(key, value, ttl)

    def delete(self, key: str) -> Deferred[None]:
        self.writes.append(("delete", key))
        return super().delete(key)


@implementer(IStateStore)
class DownStore:
    """A store that cannot answer, as Redis when it is away."""

    shared = True

    def rate_limit(self, key: str, limit: int, window: float, burst: int, algorithm: str) -> Any:
        return fail(StoreUnavailable("down"))

    def get(self, key: str) -> Any:
        return fail(StoreUnavailable("down"))

    def set(self, key: str, value: bytes, ttl: float) -> Any:
        return fail(StoreUnavailable("down"))

    def delete(self, key: str) -> Any:
        return fail(StoreUnavailable("down"))

    def close(self) -> Any:
        return None


class SessionFactoryWithStore(SessionFactory):
    """Builds the session policy on a store of the test's choosing."""

    def __init__(self, store: Any = None) -> None:
        self.store = store

    def build(self, name: str, options: SessionOptions, context: Any) -> SessionPolicy:
        store = context.store if self.store is None else self.store(context.reactor)
        return super().build(name, options, PolicyContext(context.reactor, store, context.config))


def options(**overrides: Any) -> SessionOptions:
    defaults: dict[str, Any] = {
        "secret": SECRET,
        "ttl": 100.0,
        "forward": (("user", "X-User"),),
        "from_response": (("X-Session-User", "user"),),
        "from_forward_auth": (("X-User", "user"),),
    }
    return SessionOptions(**{**defaults, **overrides})


class Gateway:
    """A gateway with a session policy on a few routes, and a cookie jar of one."""

    def __init__(self, store: Any = None, trusted: tuple = (), **overrides: Any) -> None:
        respond = RespondAction(200, "ok")
        config = make_config(
            routes=[
                route("probe", 0, path="/", policies=("session", "probe"), respond=respond),
                route(
                    "login",
                    1,
                    path="/login",
                    policies=("session",),
                    respond=RespondAction(200, "hi", (("X-Session-User", "alice"),)),
                ),
                route(
                    "logout",
                    5,
                    path="/logout",
                    policies=("session",),
                    respond=RespondAction(200, "bye", (("X-Session-User", ""),)),
                ),
                route(
                    "fa-first", 2, path="/fa-first", policies=("fa", "session", "probe"),
                    respond=respond,
                ),
                route(
                    "fa-later", 3, path="/fa-later", policies=("session", "fa", "probe"),
                    respond=respond,
                ),
                route("app", 4, path="/app", policies=("session",), upstream="app"),
            ],
            upstreams=[upstream("app", "10.0.0.1:8000")],
            policies=[
                PolicyConfig("session", "session", options(**overrides)),
                PolicyConfig("probe", "test.probe"),
                PolicyConfig("fa", "test.fa"),
            ],
            trusted_proxies=trusted,
        )
        self.harness = GatewayHarness(
            config,
            policy_types={
                "session": SessionFactoryWithStore(store),
                "test.probe": Fixed("test.probe", Probe()),
                "test.fa": Fixed("test.fa", ForwardAuthStub()),
            },
        )
        self.policy: SessionPolicy = self.harness.gateway.policies["session"]  # type: ignore
        self.store: Any = self.policy._store
        self.cookie: Optional[str] = None

    def get(self, target: str = "/", *fields: str, client: str = "127.0.0.1") -> Received:
        """GET C{target} with the jar's cookie; a Set-Cookie fills the jar."""
        lines = [f"GET {target} HTTP/1.1", "Host: a", *fields]
        if self.cookie is not None:
            lines.append(f"Cookie: other=1; {self.cookie}")
        protocol, transport = self.harness.connect(client=client)
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = parse_response(transport.value())
        for value in response.headers.get_all("set-cookie"):
            self.cookie = value.decode().split(";")[0]
        return response

    def seen(self, target: str = "/", *fields: str) -> dict[str, Any]:
        """What the probe saw for C{target}."""
        return json.loads(self.get(target, *fields).body)

    def record(self, session_id: str) -> Optional[dict[str, Any]]:
        """The stored record of a session, if any (the memory store answers at once)."""
        found: list[Optional[bytes]] = []
        self.store.get(KEY_PREFIX + session_id).addCallback(found.append)
        return None if found[0] is None else json.loads(found[0])

    def plant(self, data: dict[str, Any], secret: str = SECRET) -> str:
        """Store a session holding C{data} and put its cookie in the jar; its id."""
        session_id = "planted-session-id"
        record = json.dumps({"at": self.harness.reactor.seconds(), "data": data})
        self.store.set(KEY_PREFIX + session_id, record.encode(), 100.0)
        self.cookie = "gk_session=" + sign(session_id, secret, purpose="session")
        return session_id


def set_cookie(response: Received) -> Optional[str]:
    values = response.headers.get_all("set-cookie")
    return values[0].decode() if values else None


class SigningTests(SynchronousTestCase):
    """L{sign} and L{unsign}, which sticky affinity reuses."""

    def test_round_trip(self) -> None:
        """A signed value comes back from unsign under the same secret."""
        token = sign("abc", SECRET)
        self.assertTrue(token.startswith("abc."))
        self.assertEqual(unsign(token, SECRET), "abc")

    def test_other_secret(self) -> None:
        """A token signed under another secret does not verify."""
        self.assertIsNone(unsign(sign("abc", OLD_SECRET), SECRET))

    def test_older_secrets(self) -> None:
        """Older secrets passed after the current one still verify."""
        self.assertEqual(unsign(sign("abc", OLD_SECRET), SECRET, OLD_SECRET), "abc")

    def test_purpose(self) -> None:
        """A token signed for one purpose does not verify for another."""
        token = sign("127.0.0.1:9001", SECRET, purpose="sticky")
        self.assertIsNone(unsign(token, SECRET, purpose="session"))
        self.assertEqual(unsign(token, SECRET, purpose="sticky"), "127.0.0.1:9001")

    def test_tampered(self) -> None:
        """A changed value or signature does not verify."""
        value, _, mac = sign("abc", SECRET).partition(".")
        self.assertIsNone(unsign("abd." + mac, SECRET))
        self.assertIsNone(unsign("abc." + mac[:-1] + ("A" if mac[-1] != "A" else "B"), SECRET))

    def test_garbage(self) -> None:
        """Tokens without a signature, or with odd characters, are just refused."""
        for token in ("", "abc", ".abc", "abc.", "abc.\u00e9\u2603", "a.b.c"):
            self.assertIsNone(unsign(token, SECRET))


class LifecycleTests(SynchronousTestCase):
    """A session from its first write to its expiry."""

    def test_untouched_new_session_not_kept(self) -> None:
        """A new session nobody wrote to sets no cookie and stores nothing."""
        gateway = Gateway()
        response = gateway.get()
        seen = json.loads(response.body)
        self.assertEqual(seen["session"]["is_new"], True)
        self.assertIsNone(set_cookie(response))
        self.assertIsNone(gateway.record(seen["session"]["id"]))

    def test_first_write(self) -> None:
        """A write to a new session stores it and sends a signed cookie."""
        gateway = Gateway()
        response = gateway.get("/?set=cart:3")
        session_id = json.loads(response.body)["session"]["id"]
        cookie = set_cookie(response)
        assert cookie is not None
        name, _, token = cookie.split(";")[0].partition("=")
        self.assertEqual(name, "gk_session")
        self.assertEqual(unsign(token, SECRET, purpose="session"), session_id)
        record = gateway.record(session_id)
        assert record is not None
        self.assertEqual(record["data"], {"cart": "3"})

    def test_reused(self) -> None:
        """The cookie brings back the same session, with its data, without a new cookie."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")
        response = gateway.get()
        second = json.loads(response.body)["session"]
        self.assertEqual(
            (second["id"], second["is_new"], second["data"]),
            (first["session"]["id"], False, {"cart": "3"}),
        )
        self.assertIsNone(set_cookie(response))

    def test_tampered_cookie(self) -> None:
        """A cookie whose signature does not verify starts a new session."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")["session"]["id"]
        assert gateway.cookie is not None
        gateway.cookie = gateway.cookie[:-2] + ("xx" if not gateway.cookie.endswith("xx") else "yy")
        second = gateway.seen()["session"]
        self.assertNotEqual(second["id"], first)
        self.assertEqual((second["is_new"], second["data"]), (True, {}))

    def test_unsigned_cookie(self) -> None:
        """A bare session id (even a real one) is not accepted without its signature."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")["session"]["id"]
        gateway.cookie = f"gk_session={first}"
        self.assertNotEqual(gateway.seen()["session"]["id"], first)

    def test_expired(self) -> None:
        """After ttl without use the session is gone; a new one gets a new id."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")["session"]["id"]
        gateway.harness.reactor.advance(101)
        second = gateway.seen()["session"]
        self.assertNotEqual(second["id"], first)
        self.assertEqual(second["data"], {})

    def test_sliding(self) -> None:
        """Each use pushes the expiry back: a session used often outlives its ttl."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")["session"]["id"]
        for _ in range(3):
            gateway.harness.reactor.advance(60)
            self.assertEqual(gateway.seen()["session"]["id"], first)

    def test_invalidate(self) -> None:
        """An invalidated session is deleted and its cookie expired."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")["session"]["id"]
        response = gateway.get("/?invalidate")
        self.assertIn("Max-Age=0", set_cookie(response) or "")
        self.assertIsNone(gateway.record(first))

    def test_previous_secret(self) -> None:
        """A cookie signed with a retiring secret is accepted and signed anew."""
        gateway = Gateway(secret=NEW_SECRET, previous_secrets=(SECRET,))
        planted = gateway.plant({"cart": "3"}, secret=SECRET)
        response = gateway.get()
        self.assertEqual(json.loads(response.body)["session"]["data"], {"cart": "3"})
        token = (set_cookie(response) or "").split(";")[0].partition("=")[2]
        self.assertEqual(unsign(token, NEW_SECRET, purpose="session"), planted)

    def test_unreadable_record(self) -> None:
        """A stored record that is not a session's is ignored: a new session starts."""
        gateway = Gateway()
        planted = gateway.plant({})
        gateway.store.set(KEY_PREFIX + planted, b"[1, 2", 100.0)
        seen = gateway.seen()["session"]
        self.assertEqual((seen["is_new"], seen["id"] != planted), (True, True))


class SavingTests(SynchronousTestCase):
    """What is written to the store, and when."""

    def setUp(self) -> None:
        self.gateway = Gateway(store=RecordingStore)
        self.session_id = self.gateway.seen("/?set=cart:3")["session"]["id"]
        self.key = KEY_PREFIX + self.session_id
        self.gateway.store.writes.clear()

    def test_unchanged_not_written(self) -> None:
        """A session used but not changed is not written again right away."""
        self.gateway.get()
        self.assertEqual(self.gateway.store.writes, [])

    def test_changed_written(self) -> None:
        """A changed session is written."""
        self.gateway.get("/?set=cart:4")
        self.assertEqual(self.gateway.store.writes, [("set", self.key)])
        record = self.gateway.record(self.session_id)
        assert record is not None
        self.assertEqual(record["data"], {"cart": "4"})

    def test_same_value_not_written(self) -> None:
        """Setting a value to what it already was is no change."""
        self.gateway.get("/?set=cart:3")
        self.assertEqual(self.gateway.store.writes, [])

    def test_refreshed_after_a_while(self) -> None:
        """An unchanged session is written back once a tenth of its ttl has passed."""
        self.gateway.harness.reactor.advance(10)
        self.gateway.get()
        self.assertEqual(self.gateway.store.writes, [("set", self.key)])

    def test_untouched_new_session(self) -> None:
        """A new session nobody wrote to costs no write."""
        self.gateway.cookie = None
        self.gateway.get()
        self.assertEqual(self.gateway.store.writes, [])


class CookieAttributeTests(SynchronousTestCase):
    """The Set-Cookie attributes."""

    def cookie(self, *fields: str, **overrides: Any) -> list[str]:
        gateway = Gateway(**overrides)
        return [
            part.strip()
            for part in (set_cookie(gateway.get("/?set=a:1", *fields)) or "").split(";")
        ][1:]

    def test_defaults(self) -> None:
        """Path=/, HttpOnly and SameSite=Lax; no Secure on plain http; no Max-Age."""
        self.assertEqual(self.cookie(), ["Path=/", "HttpOnly", "SameSite=Lax"])

    def test_configured(self) -> None:
        """Domain, path, SameSite, HttpOnly and Secure follow the options."""
        attributes = self.cookie(
            domain="example.com", path="/app", same_site="Strict", http_only=False, secure=True
        )
        self.assertEqual(
            attributes, ["Path=/app", "Domain=example.com", "SameSite=Strict", "Secure"]
        )

    def test_secure_behind_trusted_tls_proxy(self) -> None:
        """With secure: auto, a trusted proxy's X-Forwarded-Proto: https makes it Secure."""
        trusted = (ipaddress.ip_network("127.0.0.0/8"),)
        self.assertIn("Secure", self.cookie("X-Forwarded-Proto: https", trusted=trusted))

    def test_forwarded_proto_untrusted(self) -> None:
        """An untrusted client's X-Forwarded-Proto changes nothing."""
        self.assertNotIn("Secure", self.cookie("X-Forwarded-Proto: https"))

    def test_cookie_name(self) -> None:
        """The cookie's name is the option's."""
        gateway = Gateway(cookie="sid")
        self.assertTrue((set_cookie(gateway.get("/?set=a:1")) or "").startswith("sid="))


class ValuesTests(SynchronousTestCase):
    """Values forwarded upstream, and copied in from forward_auth and responses."""

    def test_forwarded(self) -> None:
        """A session value is sent upstream under its header."""
        gateway = Gateway()
        gateway.get("/?set=user:alice")
        self.assertEqual(gateway.seen()["x_user"], ["alice"])

    def test_client_copy_removed(self) -> None:
        """A client's own X-User never goes on, with or without a session value."""
        gateway = Gateway()
        self.assertEqual(gateway.seen("/", "X-User: mallory")["x_user"], [])
        gateway.get("/?set=user:alice")
        self.assertEqual(gateway.seen("/", "X-User: mallory")["x_user"], ["alice"])

    def test_cookie_stripped(self) -> None:
        """The session cookie is not sent on; other cookies are."""
        gateway = Gateway()
        gateway.get("/?set=user:alice")
        self.assertEqual(gateway.seen()["cookie"], ["other=1"])

    def test_cookie_kept_when_asked(self) -> None:
        """With strip_cookie: false the cookie goes on."""
        gateway = Gateway(strip_cookie=False)
        gateway.get("/?set=user:alice")
        self.assertIn("gk_session=", gateway.seen()["cookie"][0])

    def test_upstream_head(self) -> None:
        """On the wire to the upstream: the session's X-User, even if the client's Connection named it."""
        gateway = Gateway()
        gateway.get("/?set=user:alice")
        protocol, _ = gateway.harness.connect()
        protocol.dataReceived(
            b"GET /app HTTP/1.1\r\nHost: a\r\nConnection: X-User\r\nX-User: mallory\r\n"
            b"Cookie: " + (gateway.cookie or "").encode() + b"\r\n\r\n"
        )
        _, transport = gateway.harness.accept_upstream()
        head = transport.value()
        self.assertIn(b"X-User: alice\r\n", head)
        self.assertNotIn(b"mallory", head)
        self.assertNotIn(b"gk_session", head)

    def test_from_response(self) -> None:
        """A from_response field is kept in the session and removed from the response."""
        gateway = Gateway()
        response = gateway.get("/login")
        self.assertIsNone(response.headers.get("x-session-user"))
        self.assertIsNotNone(set_cookie(response))
        self.assertEqual(gateway.seen()["session"]["data"], {"user": "alice"})

    def test_login_rotates_id(self) -> None:
        """A new identity on an existing session gets a new id; the old one is deleted."""
        gateway = Gateway()
        first = gateway.seen("/?set=cart:3")["session"]["id"]
        response = gateway.get("/login")
        self.assertIsNotNone(set_cookie(response))
        second = gateway.seen()["session"]
        self.assertNotEqual(second["id"], first)
        self.assertEqual(second["data"], {"cart": "3", "user": "alice"})
        self.assertIsNone(gateway.record(first))

    def test_logout_by_empty_value(self) -> None:
        """An empty from_response value deletes the key, under a new id."""
        gateway = Gateway()
        gateway.get("/login")
        before = gateway.seen()["session"]
        gateway.get("/logout")
        after = gateway.seen()["session"]
        self.assertEqual((before["data"], after["data"]), ({"user": "alice"}, {}))
        self.assertNotEqual(after["id"], before["id"])
        self.assertEqual(after["is_new"], False)

    def test_from_forward_auth_before(self) -> None:
        """forward_auth listed first: its header lands in the session and goes upstream at once."""
        gateway = Gateway()
        seen = gateway.seen("/fa-first?fa=bob")
        self.assertEqual((seen["session"]["data"], seen["x_user"]), ({"user": "bob"}, ["bob"]))
        self.assertEqual(gateway.seen()["session"]["data"], {"user": "bob"})

    def test_from_forward_auth_after(self) -> None:
        """forward_auth listed after: its header is kept when the response goes out."""
        gateway = Gateway()
        gateway.get("/fa-later?fa=carol")
        self.assertEqual(gateway.seen()["session"]["data"], {"user": "carol"})

    def test_from_forward_auth_answer(self) -> None:
        """forward_auth's whole answer (an object with get) works as well as a dict."""
        gateway = Gateway()
        gateway.get("/fa-first?fa-answer=dave")
        self.assertEqual(gateway.seen()["session"]["data"], {"user": "dave"})

    def test_forwarded_json(self) -> None:
        """A value that is not text goes upstream as JSON."""
        gateway = Gateway()
        gateway.plant({"user": ["a", 1]})
        self.assertEqual(gateway.seen()["x_user"], ['["a", 1]'])

    def test_line_breaks_not_forwarded(self) -> None:
        """A value with a line break is not forwarded (it would split the header)."""
        gateway = Gateway()
        gateway.plant({"user": "a\r\nX-Evil: 1"})
        self.assertEqual(gateway.seen()["x_user"], [])


class SessionObjectTests(SynchronousTestCase):
    """L{Session}, as other policies use it."""

    def test_changes(self) -> None:
        """set, delete and direct changes to data all count as changes."""
        session = Session("id", {"a": 1}, is_new=False)
        self.assertFalse(session.changed)
        session.set("a", 1)
        self.assertFalse(session.changed)
        session.data["b"] = 2
        self.assertTrue(session.changed)
        session.delete("b")
        self.assertFalse(session.changed)

    def test_set_refuses_what_json_cannot_hold(self) -> None:
        """set() refuses a value that could not be stored, at once."""
        with self.assertRaises(TypeError):
            Session("id").set("a", object())

    def test_rotate(self) -> None:
        """rotate() gives an existing session a new id and remembers the old one."""
        session = Session("old", is_new=False)
        session.rotate()
        self.assertEqual((session.replaced, session.id != "old"), ("old", True))
        fresh = Session("new")
        fresh.rotate()
        self.assertEqual((fresh.id, fresh.replaced), ("new", None))


class StoreDownTests(SynchronousTestCase):
    """A state store that cannot answer."""

    def test_goes_on_without_session(self) -> None:
        """The request goes on with call.session None; no cookie, no error."""
        gateway = Gateway(store=lambda clock: DownStore())
        gateway.cookie = "gk_session=" + sign("abc", SECRET, purpose="session")
        response = gateway.get("/", "X-User: mallory")
        self.assertEqual(response.status, 200)
        seen = json.loads(response.body)
        self.assertEqual((seen["session"], seen["x_user"]), (None, []))
        self.assertIsNone(set_cookie(response))

    def test_response_fields_still_removed(self) -> None:
        """from_response fields never leak to the client, store or not."""
        gateway = Gateway(store=lambda clock: DownStore())
        gateway.cookie = "gk_session=" + sign("abc", SECRET, purpose="session")
        response = gateway.get("/login")
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.headers.get("x-session-user"))

    def test_failed_save_logged(self) -> None:
        """A save that fails is logged, and the response still goes out."""

        class SaveFails(MemoryStore):
            def set(self, key: str, value: bytes, ttl: float) -> Any:
                return fail(StoreUnavailable("down"))

        gateway = Gateway(store=SaveFails)
        self.assertEqual(gateway.get("/?set=a:1").status, 200)


CONFIG = """\
listeners: {web: {protocol: http, bind: "127.0.0.1:0"}}
policies:
  session: %s
routes:
  - {name: r, respond: {status: 200}, policies: [session]}
"""


class OptionsTests(SynchronousTestCase):
    """The policy's keys in a config file."""

    def parse(self, body: str, **environ: str) -> SessionOptions:
        return parse_config(CONFIG % body, environ=environ).policies["session"].options

    def error(self, body: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.parse(body)
        return str(caught.exception)

    def test_spec_example(self) -> None:
        """The SPEC's example parses, the secret from the environment."""
        options = self.parse(
            '{type: session, cookie: gk_session, ttl: 30m, secret: "${SESSION_SECRET}"}',
            SESSION_SECRET=SECRET,
        )
        self.assertEqual((options.cookie, options.ttl, options.secret), ("gk_session", 1800.0, SECRET))

    def test_secret_hidden(self) -> None:
        """The secret does not show in the options' repr (logs, admin)."""
        self.assertNotIn(SECRET, repr(options()))
        self.assertNotIn(OLD_SECRET, repr(evolve(options(), previous_secrets=(OLD_SECRET,))))

    def test_short_secret(self) -> None:
        """A secret under 16 bytes is an error."""
        self.assertIn("at least 16 bytes", self.error("{type: session, secret: tooshort}"))

    def test_secret_required(self) -> None:
        """secret must be given."""
        self.assertIn("missing required key 'secret'", self.error("{type: session}"))

    def test_same_site_none_needs_secure(self) -> None:
        """SameSite=None without Secure is refused, as browsers would refuse the cookie."""
        self.assertIn(
            "needs secure: true",
            self.error(f'{{type: session, secret: "{SECRET}", same_site: none}}'),
        )

    def test_host_prefix(self) -> None:
        """A __Host- cookie needs Secure, Path=/ and no Domain."""
        self.assertIn(
            "__Host- cookie",
            self.error(f'{{type: session, secret: "{SECRET}", cookie: __Host-s, secure: true, path: /a}}'),
        )

    def test_reserved_forward_header(self) -> None:
        """A session value cannot be forwarded as a header the gateway sets itself."""
        self.assertIn(
            "set by the gateway",
            self.error(f'{{type: session, secret: "{SECRET}", forward: {{user: X-Forwarded-For}}}}'),
        )

    def test_copied_forms(self) -> None:
        """from_forward_auth takes a list (kept under the header name) or a mapping."""
        listed = self.parse(f'{{type: session, secret: "{SECRET}", from_forward_auth: [X-User]}}')
        mapped = self.parse(
            f'{{type: session, secret: "{SECRET}", from_forward_auth: {{X-User: user}}}}'
        )
        self.assertEqual(listed.from_forward_auth, (("X-User", "X-User"),))
        self.assertEqual(mapped.from_forward_auth, (("X-User", "user"),))

    def test_secure_auto(self) -> None:
        """secure takes true, false or auto (the default)."""
        self.assertEqual(self.parse(f'{{type: session, secret: "{SECRET}"}}').secure, "auto")
        self.assertIn(
            "true, false or auto", self.error(f'{{type: session, secret: "{SECRET}", secure: yes-please}}')
        )

    def test_provides_interfaces(self) -> None:
        """The factory and the policy provide their interfaces."""
        verifyObject(IPolicyFactory, SessionFactory())
        verifyObject(IPolicy, Gateway().policy)
