"""
Tests for L{gatewaykit.policies.basic_auth}: htpasswd users, passwords
verified off the reactor thread, successes cached briefly.
"""

import base64
import json
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from gatewaykit.config.errors import ConfigError
from gatewaykit.http.message import Headers, Request
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies import basic_auth
from gatewaykit.policies.basic_auth import (
    BasicAuthFactory,
    BasicAuthPolicy,
    ThreadedBasicAuthPolicy,
    parse_htpasswd,
)
from gatewaykit.policies.chain import PolicyCall
from gatewaykit.testing import parse_response
from tests.fixtures.auth import echoed, harness, htpasswd, parse_options, request, write

# Test-only users and passwords.
USERS = {
    "alice": ("bcrypt", "alice-test-pw"),
    "bob": ("sha256_crypt", "bob-test-pw"),
    "carol": ("sha512_crypt", "carol-test-pw"),
    "dave": ("apr_md5_crypt", "dave-test-pw"),
    "erin": ("bcrypt", "e" * 80),
}


def basic(user: str, password: str) -> str:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {encoded}"


class ManualRunner:
    """Stands in for the thread pool: runs each check when the test says."""

    def __init__(self, at_once: bool = False) -> None:
        self.at_once = at_once
        self.waiting: list[tuple[Deferred, object, tuple]] = []
        self.calls = 0

    def __call__(self, f, *args) -> Deferred:
        self.calls += 1
        if self.at_once:
            return maybeDeferred(f, *args)
        d: Deferred = Deferred()
        self.waiting.append((d, f, args))
        return d

    def run(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, f, args in waiting:
            d.callback(f(*args))


class BasicCase(SynchronousTestCase):
    """Builds gateways with one basic_auth policy over L{USERS}."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        write(self.directory, "htpasswd", htpasswd(USERS))
        self.runner = ManualRunner(at_once=True)

    def gateway(self, extra: str = ""):
        text = "{htpasswd: htpasswd, realm: staff" + (", " + extra if extra else "") + "}"
        options = parse_options(BasicAuthFactory(), text, self.directory)
        gateway = harness({"basic_auth": BasicAuthFactory(self.runner)}, [("basic", "basic_auth", options)])
        self.addCleanup(gateway.gateway.close)
        return gateway


class BasicAuthTests(BasicCase):
    """Users and passwords."""

    def test_hashes(self):
        """bcrypt ($2y$), SHA-256 crypt, SHA-512 crypt and apr1 users pass."""
        gateway = self.gateway()
        for user in ("alice", "bob", "carol", "dave"):
            response = gateway.request(request(basic(user, USERS[user][1])))
            self.assertEqual(response.status, 200, user)
            identity = echoed(response)["identity"]
            self.assertEqual((identity["kind"], identity["subject"]), ("basic", user))

    def test_long_bcrypt_password(self):
        """bcrypt reads 72 bytes of a longer password, as htpasswd does."""
        response = self.gateway().request(request(basic("erin", "e" * 80)))
        self.assertEqual(response.status, 200)

    def test_wrong_password(self):
        """A wrong password: 401 with the Basic challenge."""
        response = self.gateway().request(request(basic("alice", "nope")))
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.headers.get("www-authenticate"), b'Basic realm="staff", charset="UTF-8"'
        )
        self.assertEqual(json.loads(response.body)["detail"], "wrong user name or password")

    def test_unknown_user(self):
        """An unknown user is refused the same way, after the same work."""
        response = self.gateway().request(request(basic("mallory", "alice-test-pw")))
        self.assertEqual(response.status, 401)
        self.assertEqual(json.loads(response.body)["detail"], "wrong user name or password")
        self.assertEqual(self.runner.calls, 1)

    def test_missing(self):
        """No credentials, or not Basic ones, or broken base64: 401."""
        gateway = self.gateway()
        for fields in ((), ("Authorization: Bearer x",), ("Authorization: Basic %%%",)):
            response = gateway.request(request(*fields))
            self.assertEqual(response.status, 401)
            self.assertEqual(json.loads(response.body)["detail"], "a user name and password are required")

    def test_stripped(self):
        """The Authorization field does not go upstream by default."""
        fields = echoed(self.gateway().request(request(basic("bob", "bob-test-pw"))))["fields"]
        self.assertNotIn("authorization", fields)

    def test_forward_subject(self):
        """forward_subject names the user upstream; a client's copy is dropped."""
        gateway = self.gateway("forward_subject: X-User, strip: false")
        response = gateway.request(request(basic("bob", "bob-test-pw"), "X-User: alice"))
        fields = echoed(response)["fields"]
        self.assertEqual(fields["x-user"], ["bob"])
        self.assertIn("authorization", fields)


class VerificationTests(BasicCase):
    """When hashes are computed."""

    def setUp(self) -> None:
        super().setUp()
        self.runner = ManualRunner()

    def send(self, gateway, *fields):
        protocol, transport = gateway.connect()
        protocol.dataReceived(request(*fields))
        return transport

    def test_off_reactor(self):
        """The check is handed to the runner; the answer waits for it."""
        gateway = self.gateway()
        transport = self.send(gateway, basic("alice", "alice-test-pw"))
        self.assertEqual((transport.value(), len(self.runner.waiting)), (b"", 1))
        _, f, _ = self.runner.waiting[0]
        self.assertIs(f, basic_auth.verify_password)
        self.runner.run()
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_cached(self):
        """A verified password is not hashed again within cache_ttl."""
        gateway = self.gateway("cache_ttl: 60s")
        self.send(gateway, basic("alice", "alice-test-pw"))
        self.runner.run()
        transport = self.send(gateway, basic("alice", "alice-test-pw"))
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertEqual(self.runner.calls, 1)
        gateway.reactor.advance(60)
        self.send(gateway, basic("alice", "alice-test-pw"))
        self.assertEqual(self.runner.calls, 2)

    def test_failures_not_cached(self):
        """A wrong password is hashed every time."""
        gateway = self.gateway()
        for _ in range(2):
            self.send(gateway, basic("alice", "wrong"))
            self.runner.run()
        self.assertEqual(self.runner.calls, 2)

    def test_cache_needs_same_password(self):
        """A cached success does not let another password in."""
        gateway = self.gateway()
        self.send(gateway, basic("alice", "alice-test-pw"))
        self.runner.run()
        transport = self.send(gateway, basic("alice", "other"))
        self.runner.run()
        self.assertEqual(parse_response(transport.value()).status, 401)

    def test_shared_check(self):
        """Concurrent requests with the same credentials share one check."""
        gateway = self.gateway()
        transports = [self.send(gateway, basic("bob", "bob-test-pw")) for _ in range(3)]
        self.assertEqual(self.runner.calls, 1)
        self.runner.run()
        for transport in transports:
            self.assertEqual(parse_response(transport.value()).status, 200)

    def test_too_many_waiting(self):
        """Beyond MAX_WAITING distinct checks waiting, new ones get 503."""
        self.patch(basic_auth, "MAX_WAITING", 2)
        gateway = self.gateway()
        self.send(gateway, basic("alice", "guess-1"))
        self.send(gateway, basic("alice", "guess-2"))
        transport = self.send(gateway, basic("alice", "guess-3"))
        self.assertEqual(parse_response(transport.value()).status, 503)
        self.assertEqual(self.runner.calls, 2)


class CloseTests(SynchronousTestCase):
    """Retiring the policy (reload, shutdown) with checks in flight."""

    def setUp(self) -> None:
        directory = self.mktemp()
        write(directory, "htpasswd", htpasswd({"alice": USERS["alice"]}))
        options = parse_options(BasicAuthFactory(), "{htpasswd: htpasswd}", directory)
        self.runner = ManualRunner()
        self.policy = BasicAuthPolicy("basic", options, Clock(), self.runner)
        self.released = []
        self.policy._release = lambda: self.released.append(True)

    def call(self, password: str) -> PolicyCall:
        headers = Headers([(b"Authorization", basic("alice", password)[15:].encode())])
        return PolicyCall(Request("GET", b"/", "/", headers=headers), None)

    def test_waits_for_checks(self):
        """Checks already waiting are answered before the threads stop."""
        pending = self.policy.on_request(self.call("alice-test-pw"))
        self.policy.close()
        self.assertEqual(self.released, [])
        self.runner.run()
        self.assertIsNone(self.successResultOf(pending))
        self.assertEqual(self.released, [True])

    def test_no_new_checks(self):
        """After close, a check that would need a thread gets 503."""
        self.policy.close()
        self.assertEqual(self.released, [True])
        self.assertEqual(self.policy.on_request(self.call("alice-test-pw")).status, 503)


class ThreadPoolTests(TestCase):
    """The real thread pool, on the real reactor."""

    @inlineCallbacks
    def test_verified_on_another_thread(self):
        """Passwords are checked on the policy's threads, not the reactor's."""
        directory = self.mktemp()
        write(directory, "htpasswd", htpasswd({"alice": USERS["alice"]}))
        options = parse_options(BasicAuthFactory(), "{htpasswd: htpasswd}", directory)
        threads = []

        def recording(password, hashed):
            threads.append(threading.current_thread())
            return original(password, hashed)

        original = basic_auth.verify_password
        self.patch(basic_auth, "verify_password", recording)
        policy = ThreadedBasicAuthPolicy("basic", options, reactor)
        self.addCleanup(policy.close)
        headers = Headers([(b"Authorization", basic("alice", "alice-test-pw")[15:].encode())])
        call = PolicyCall(Request("GET", b"/", "/", headers=headers), None)
        verdict = yield policy.on_request(call)
        self.assertIsNone(verdict)
        self.assertEqual(call.identity.subject, "alice")
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())
        policy.close()
        self.assertTrue(policy._pool.joined)


class HtpasswdTests(SynchronousTestCase):
    """The file is checked when the config loads."""

    def problems(self, content: str) -> str:
        directory = self.mktemp()
        write(directory, "htpasswd", content)
        error = self.assertRaises(
            ConfigError, parse_options, BasicAuthFactory(), "{htpasswd: htpasswd}", directory
        )
        return str(error)

    def test_plain_text_refused(self):
        """Plain-text and {SHA} entries are refused with a hint."""
        self.assertIn("line 1: user 'a' has an unsupported hash; use bcrypt", self.problems("a:secret\n"))
        self.assertIn(
            "line 2: user 'b' has an unsupported hash",
            self.problems("# users\nb:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"),
        )

    def test_duplicate(self):
        """A user listed twice."""
        content = htpasswd({"a": ("bcrypt", "x")})
        self.assertIn("line 2: user 'a' appears twice", self.problems(content + content))

    def test_empty(self):
        """A file without users."""
        self.assertIn("htpasswd file 'htpasswd': holds no users", self.problems("\n# nobody\n"))

    def test_missing_file(self):
        """An unreadable file is an error at htpasswd."""
        error = self.assertRaises(
            ConfigError, parse_options, BasicAuthFactory(), "{htpasswd: nope}", self.mktemp()
        )
        self.assertIn("policy.yaml:1:12: cannot read htpasswd file 'nope'", str(error))

    def test_users(self):
        """Comments and blank lines are skipped."""
        users = parse_htpasswd(("# staff\n\n" + htpasswd({"a": ("bcrypt", "x")})).encode())
        self.assertEqual(list(users), ["a"])


class InterfaceTests(SynchronousTestCase):
    """zope interfaces."""

    def test_provides(self):
        """The factory and policy provide their interfaces."""
        directory = self.mktemp()
        write(directory, "htpasswd", htpasswd({"a": ("bcrypt", "x")}))
        options = parse_options(BasicAuthFactory(), "{htpasswd: htpasswd}", directory)
        verifyObject(IPolicyFactory, BasicAuthFactory())
        verifyObject(IPolicy, BasicAuthPolicy("basic", options, None, ManualRunner()))
