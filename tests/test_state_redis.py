"""
Tests for L{gatewaykit.state.redis}: the Redis store against a real
C{redis-server} started by each test on a free port (never a shared one).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from gatewaykit.config.model import RedisConfig, SentinelConfig
from gatewaykit.interfaces import IStateStore
from gatewaykit.state import Decision, StoreUnavailable
from gatewaykit.state.memory import MemoryStore
from gatewaykit.state.redis import BATCH_LIMIT, RedisAddress, RedisStore
from tests.integration import support
from tests.integration.support import RedisServer, Steps

TIMEOUT = 0.25
# What a call may take beyond the timeout on a busy machine.
MARGIN = 0.25


def open_store(test_case: TestCase, server: RedisServer, **config: Any) -> RedisStore:
    """A L{RedisStore} on C{server}, closed on cleanup."""
    settings = {"url": f"redis://127.0.0.1:{server.port}/0", "timeout": TIMEOUT, **config}
    store = RedisStore(RedisConfig(**settings), reactor)
    test_case.addCleanup(store.close)
    return store


@defer.inlineCallbacks
def first_answer(call: Any, within: float) -> Steps:
    """C{call()}'s first result that is not L{StoreUnavailable}, trying for C{within} seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = yield call()
            return result
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
        yield support.sleep(0.05)


class RedisAddressTests(SynchronousTestCase):
    """C{gateway.redis.url} as the store reads it."""

    def test_defaults(self) -> None:
        """Host, port 6379, database 0, no password, no TLS."""
        self.assertEqual(
            RedisAddress.parse("redis://cache.internal"),
            RedisAddress("cache.internal", 6379, 0, None, None, False),
        )

    def test_everything(self) -> None:
        """User, password (percent-decoded), port, database and rediss:// for TLS."""
        self.assertEqual(
            RedisAddress.parse("rediss://gk:p%40ss@10.0.0.5:6380/3"),
            RedisAddress("10.0.0.5", 6380, 3, "gk", "p@ss", True),
        )

    def test_password_only(self) -> None:
        """C{redis://:secret@host} has a password and no user name."""
        address = RedisAddress.parse("redis://:secret@127.0.0.1/1")
        self.assertEqual((address.username, address.password, address.db), (None, "secret", 1))

    def test_bad_database(self) -> None:
        """A path that is not a database number is refused."""
        self.assertRaises(ValueError, RedisAddress.parse, "redis://127.0.0.1/zero")


class RedisStoreTests(TestCase):
    """The store's calls against a real redis-server."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Steps:
        self.server = yield RedisServer(self).start()
        self.store = open_store(self, self.server)

    def test_provides_interface(self) -> None:
        """RedisStore provides IStateStore and says it is shared."""
        verifyObject(IStateStore, self.store)
        self.assertTrue(self.store.shared)

    @defer.inlineCallbacks
    def test_set_get_delete(self) -> Steps:
        """Bytes go in and come back as they were; delete removes them."""
        value = b"\xff\x00 not utf-8"
        yield self.store.set("gk:session:a", value, 60)
        yield self.store.set("gk:session:b", b"text", 60)
        got = yield defer.gatherResults(
            [
                self.store.get("gk:session:a"),
                self.store.get("gk:session:b"),
                self.store.get("nope"),
            ]
        )
        self.assertEqual(got, [value, b"text", None])
        # Keys are the callers' own: nothing is added to them.
        self.assertEqual((yield self.server.command("GET", "gk:session:b")), b"text")
        yield self.store.delete("gk:session:a")
        self.assertIsNone((yield self.store.get("gk:session:a")))

    @defer.inlineCallbacks
    def test_ttl(self) -> Steps:
        """set() stores with a PX expiry and the value is gone after it."""
        yield self.store.set("short", b"v", 0.2)
        ttl = yield self.server.command("PTTL", "short")
        self.assertTrue(0 < ttl <= 200, ttl)
        yield support.sleep(0.3)
        self.assertIsNone((yield self.store.get("short")))

    @defer.inlineCallbacks
    def test_rate_limit_key_and_ttl(self) -> Steps:
        """A limiter lives under the key it is given, with an expiry, so nothing lingers."""
        for algorithm, longest in (
            ("gcra", 2000),
            ("fixed_window", 2000),
            ("sliding_window", 3000),
        ):
            yield self.store.rate_limit(f"gk:rl:p:{algorithm}", 5, 1.0, 0, algorithm)
            ttl = yield self.server.command("PTTL", f"gk:rl:p:{algorithm}")
            self.assertTrue(0 < ttl <= longest, (algorithm, ttl))

    @defer.inlineCallbacks
    def test_unknown_algorithm(self) -> Steps:
        """An unknown algorithm is a programming error, not an outage."""
        yield self.assertFailure(self.store.rate_limit("k", 1, 1.0, 0, "leaky"), ValueError)
        self.assertTrue(self.store.available)

    @defer.inlineCallbacks
    def test_one_round_trip_per_iteration(self) -> Steps:
        """
        Decisions asked for in one reactor iteration go in one EVALSHA
        (BATCH_LIMIT at most each), in order, each with its own algorithm,
        key and limit, and each gets its own answer.
        """
        yield self.store.rate_limit("warm", 1, 1.0, 0, "gcra")  # connected, script loaded
        before = yield self.evalsha_calls()
        asked = [
            (f"batch:{algorithm}:{index % 3}", limit, algorithm)
            for index in range(BATCH_LIMIT + 6)
            for algorithm, limit in (("gcra", 5), ("fixed_window", 7), ("sliding_window", 9))
            if index % 3 == 0 or algorithm == "gcra"
        ]
        decisions = yield defer.gatherResults(
            [
                self.store.rate_limit(key, limit, 3600.0, 0, algorithm)
                for key, limit, algorithm in asked
            ]
        )
        self.assertEqual((yield self.evalsha_calls()) - before, 2)
        # Each key counted down by itself, in the order asked, to 0 and refusals.
        seen: dict[str, int] = {}
        for (key, limit, _), decision in zip(asked, decisions, strict=True):
            seen[key] = seen.get(key, 0) + 1
            expected = max(0, limit - seen[key])
            self.assertEqual(
                (decision.limit, decision.remaining, decision.allowed),
                (limit, expected, seen[key] <= limit),
                key,
            )

    @defer.inlineCallbacks
    def test_unreadable_reply(self) -> Steps:
        """
        A batch reply that cannot be read, or answers fewer decisions than
        asked, fails them all: none is left waiting or half-answered.
        """
        for reply in ("1 5 4 not-a-number", "1 5 4 0 0 1 2"):
            self.patch(self.store, "_run", lambda *_, reply=reply: defer.succeed(reply))
            first = self.store.rate_limit("a", 5, 1.0, 0, "gcra")
            second = self.store.rate_limit("b", 5, 1.0, 0, "gcra")
            yield self.assertFailure(first, ValueError)
            yield self.assertFailure(second, ValueError)

    @defer.inlineCallbacks
    def test_decide_then(self) -> Steps:
        """
        decide_then answers with plain calls, with the caller's context and
        Redis's time; a caller whose call raises is logged and the others
        in its batch are still answered.
        """
        yield self.store.rate_limit("warm", 1, 1.0, 0, "gcra")
        answers: list[tuple[str, int, float]] = []
        done: defer.Deferred[None] = defer.Deferred()

        def decided(decision: Decision, at: float, context: str) -> None:
            answers.append((context, decision.remaining, at))
            if context == "broken":
                raise RuntimeError("the caller's own bug")
            if len(answers) == 3:
                done.callback(None)

        def failed(failure: Any, context: str) -> None:
            done.errback(failure)

        for context in ("first", "broken", "second"):
            self.store.decide_then("then", 3, 60.0, 0, "gcra", decided, failed, context)
        self.assertEqual(answers, [])  # answered once Redis has replied
        yield done
        self.assertEqual([(c, r) for c, r, _ in answers], [("first", 2), ("broken", 1), ("second", 0)])
        self.assertLess(abs(answers[0][2] - time.time()), 60)  # Redis's clock, in seconds
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_decide_then_refused(self) -> None:
        """Asked while Redis is away or with a bad algorithm, decide_then fails at once."""
        failures: list[tuple[Any, str]] = []
        self.store.decide_then("x", 1, 1.0, 0, "leaky", None, lambda f, c: failures.append((f, c)), "bad")
        self.store.available = False
        self.store.decide_then("x", 1, 1.0, 0, "gcra", None, lambda f, c: failures.append((f, c)), "away")
        self.assertEqual([context for _, context in failures], ["bad", "away"])
        self.assertTrue(failures[0][0].check(ValueError))
        self.assertTrue(failures[1][0].check(StoreUnavailable))

    @defer.inlineCallbacks
    def evalsha_calls(self) -> Steps:
        info = yield self.server.command("INFO", "commandstats")
        for line in info.decode().splitlines():
            if line.startswith("cmdstat_evalsha:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    @defer.inlineCallbacks
    def test_script_flush(self) -> Steps:
        """After SCRIPT FLUSH, a decision reloads its script (NOSCRIPT) and still counts."""
        first = yield self.store.rate_limit("flush", 3, 60.0, 0, "fixed_window")
        yield self.server.command("SCRIPT", "FLUSH")
        second = yield self.store.rate_limit("flush", 3, 60.0, 0, "fixed_window")
        self.assertEqual((first.remaining, second.remaining), (2, 1))

    @defer.inlineCallbacks
    def test_restart(self) -> Steps:
        """After a Redis restart the store reconnects and reloads its scripts by itself."""
        yield self.store.rate_limit("restart", 3, 60.0, 0, "gcra")
        started = time.monotonic()
        yield self.server.restart()
        decision = yield first_answer(
            lambda: self.store.rate_limit("restart", 3, 60.0, 0, "gcra"), within=5
        )
        # A new, empty Redis: the key starts over.
        self.assertEqual(decision.remaining, 2)
        self.assertLess(time.monotonic() - started, 5)

    @defer.inlineCallbacks
    def test_killed(self) -> Steps:
        """With Redis killed, calls fail with StoreUnavailable within the timeout."""
        yield self.store.rate_limit("dead", 3, 60.0, 0, "gcra")
        yield self.server.kill()
        started = time.monotonic()
        yield self.assertFailure(
            self.store.rate_limit("dead", 3, 60.0, 0, "gcra"), StoreUnavailable
        )
        self.assertLess(time.monotonic() - started, TIMEOUT + MARGIN)
        yield self.assertFailure(self.store.get("dead"), StoreUnavailable)

    @defer.inlineCallbacks
    def test_hung(self) -> Steps:
        """
        A hung Redis (SIGSTOP): the first call times out, later ones fail at
        once while it is away, and after SIGCONT late replies to the timed-out
        commands answer nothing: every later command gets its own reply.
        """
        yield self.store.set("a", b"1", 60)
        self.server.signal("STOP")
        self.addCleanup(self._continue)
        started = time.monotonic()
        yield self.assertFailure(self.store.get("a"), StoreUnavailable)
        timed_out = time.monotonic() - started
        self.assertTrue(TIMEOUT - 0.01 <= timed_out < TIMEOUT + MARGIN, timed_out)
        self.assertFalse(self.store.available)
        started = time.monotonic()
        yield self.assertFailure(self.store.rate_limit("k", 1, 1.0, 0, "gcra"), StoreUnavailable)
        self.assertLess(time.monotonic() - started, 0.05)
        # Let a probe or two time out as well before Redis wakes up.
        yield support.sleep(1.5)
        self.server.signal("CONT")
        yield support.wait_for(lambda: self.store.available, timeout=3, what="Redis to be back")
        # One after another: commands in flight together may take different
        # connections of the pool.
        values = []
        for call in (lambda: self.store.get("a"), lambda: self.store.set("b", b"2", 60)):
            values.append((yield call()))
        values.append((yield self.store.get("b")))
        self.assertEqual(values, [b"1", None, b"2"])

    def _continue(self) -> None:
        if not self.server.ended.happened:
            self.server.signal("CONT")

    @defer.inlineCallbacks
    def test_caller_cancels(self) -> Steps:
        """A call its caller cancels is not an outage, and the next call gets its own reply."""
        yield self.store.set("gk:c", b"1", 60)
        cancelled = self.store.get("gk:c")
        cancelled.cancel()
        yield self.assertFailure(cancelled, defer.CancelledError)
        self.assertTrue(self.store.available)
        yield self.store.set("gk:d", b"2", 60)
        self.assertEqual((yield self.store.get("gk:d")), b"2")

    @defer.inlineCallbacks
    def test_user_password_database(self) -> Steps:
        """A URL's user, password and database number are used."""
        yield self.server.command("ACL", "SETUSER", "gk", "on", ">s3cret", "~*", "+@all")
        store = open_store(
            self, self.server, url=f"redis://gk:s3cret@127.0.0.1:{self.server.port}/3"
        )
        yield store.set("gk:x", b"1", 60)
        keyspace = yield self.server.command("INFO", "keyspace")
        self.assertIn(b"db3:keys=1", keyspace)

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Steps:
        """Refused credentials make the store unavailable (and are logged)."""
        yield self.server.command("ACL", "SETUSER", "gk", "on", ">s3cret", "~*", "+@all")
        store = open_store(self, self.server, url=f"redis://gk:wrong@127.0.0.1:{self.server.port}")
        yield self.assertFailure(store.get("gk:x"), StoreUnavailable)

    @defer.inlineCallbacks
    def test_close(self) -> Steps:
        """After close() calls fail with StoreUnavailable and the connections are gone."""
        yield self.store.get("x")
        yield self.store.close()
        yield self.assertFailure(self.store.get("x"), StoreUnavailable)
        clients = yield self.server.command("CLIENT", "LIST")
        # Only the connection asking is left.
        self.assertEqual(len(clients.strip().splitlines()), 1, clients)


class SameDecisionsTests(TestCase):
    """
    The Lua scripts make the decisions memory.py makes: each Redis decision
    is replayed through the MemoryStore at the server time Redis used.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Steps:
        self.server = yield RedisServer(self).start()
        self.store = open_store(self, self.server)

    @defer.inlineCallbacks
    def compare(self, algorithm: str, limit: int, window: float, burst: int) -> Steps:
        """Bursts of requests spread over a few windows, decided by both stores."""
        clock = task.Clock()
        memory = MemoryStore(clock)
        self.addCleanup(memory.close)
        outcomes = set()
        pauses = [0.0] * 6 + [window / 3] + [0.0] * 4 + [window * 0.7, window / 10] * 6
        pauses += [window * 1.5] + [0.0] * 8
        for pause in pauses:
            if pause:
                yield support.sleep(pause)
            redis_decision, now = yield self.store.evaluate(
                algorithm, limit, window, burst, algorithm
            )
            clock.rightNow = now
            expected = memory.decide(algorithm, limit, window, burst, algorithm)
            self.assertSameDecision(redis_decision, expected, now)
            outcomes.add(redis_decision.allowed)
        # The sequence exercised both answers.
        self.assertEqual(outcomes, {True, False})

    def assertSameDecision(self, actual: Decision, expected: Decision, now: float) -> None:
        message = f"at {now!r}: redis {actual} != memory {expected}"
        self.assertEqual(
            (actual.allowed, actual.limit, actual.remaining),
            (expected.allowed, expected.limit, expected.remaining),
            message,
        )
        self.assertAlmostEqual(actual.reset_after, expected.reset_after, places=6, msg=message)
        self.assertAlmostEqual(actual.retry_after, expected.retry_after, places=6, msg=message)

    def test_gcra(self) -> Any:
        """gcra.lua decides as memory.gcra."""
        return self.compare("gcra", 4, 0.4, 2)

    def test_fixed_window(self) -> Any:
        """fixed_window.lua decides as memory.fixed_window."""
        return self.compare("fixed_window", 4, 0.4, 1)

    def test_sliding_window(self) -> Any:
        """sliding_window.lua decides as memory.sliding_window."""
        return self.compare("sliding_window", 5, 0.4, 0)

    def test_fractional_window(self) -> Any:
        """A window that is no whole number of seconds puts requests in the same windows."""
        return self.compare("fixed_window", 3, 0.3, 0)


class SentinelTests(TestCase):
    """The master found through a Sentinel."""

    timeout = 60

    @defer.inlineCallbacks
    def test_master_through_sentinel(self) -> Steps:
        """With sentinel: {master, addresses}, decisions and values go to the master it names."""
        master = yield RedisServer(self).start()
        sentinel = yield start_sentinel(self, master.port)
        # Until the Sentinel has seen the master, txredisapi's discovery
        # waits out its timeout (a timer the test would leave behind).
        deadline = time.monotonic() + 10
        while True:
            reply = yield sentinel.command("SENTINEL", "MASTER", "gkmaster")
            if dict(zip(reply[::2], reply[1::2], strict=True))[b"flags"] == b"master":
                break
            self.assertLess(time.monotonic(), deadline, "the Sentinel never saw its master")
            yield support.sleep(0.1)
        store = open_store(
            self,
            master,
            timeout=2.0,
            sentinel=SentinelConfig("gkmaster", (("127.0.0.1", sentinel.port),)),
        )
        decision = yield first_answer(lambda: store.rate_limit("s", 2, 60.0, 0, "gcra"), 10)
        self.assertEqual((decision.allowed, decision.remaining), (True, 1))
        keys = yield master.command("KEYS", "*")
        self.assertEqual(keys, [b"s"])
        # Both pool connections found the master too. (Closed in the middle
        # of a discovery, txredisapi would leave the discovery's timer behind.)
        deadline = time.monotonic() + 10
        while True:
            clients = yield master.command("CLIENT", "LIST")
            ours = [
                line
                for line in clients.decode().splitlines()
                if "name=sentinel" not in line and "cmd=client" not in line
            ]
            if len(ours) == RedisStore.pool_size:
                break
            self.assertLess(time.monotonic(), deadline, clients)
            yield support.sleep(0.05)


class _Sentinel(RedisServer):
    """C{redis-server --sentinel} watching one master."""

    def __init__(self, test_case: TestCase, master_port: int) -> None:
        super().__init__(test_case)
        self._master_port = master_port

    def spawn_arguments(self, directory: str) -> list[str]:
        path = os.path.join(directory, "sentinel.conf")
        with open(path, "w", encoding="ascii") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor gkmaster 127.0.0.1 {self._master_port} 1\n"
                "sentinel down-after-milliseconds gkmaster 1000\n"
            )
        return [support.REDIS_SERVER, path, "--sentinel"]


def start_sentinel(test_case: TestCase, master_port: int) -> Any:
    """A Sentinel watching the master on C{master_port}; fires once it answers."""
    return _Sentinel(test_case, master_port).start()


class TLSTests(TestCase):
    """rediss:// URLs: TLS, with the server's certificate checked."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Steps:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca = write_certificates(directory, "trusted")
        self.other_ca = write_certificates(directory, "other")
        self.server = yield _TLSRedis(self, directory, "trusted").start()

    def trust(self, ca: str) -> None:
        """Make C{ca} the only trusted CA (OpenSSL reads SSL_CERT_FILE when connecting)."""
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = ca
        self.addCleanup(
            lambda: (
                os.environ.pop("SSL_CERT_FILE")
                if before is None
                else os.environ.__setitem__("SSL_CERT_FILE", before)
            )
        )

    def tls_store(self, host: str) -> RedisStore:
        url = f"rediss://{host}:{self.server.tls_port}/0"
        store = RedisStore(RedisConfig(url=url, timeout=1.0), reactor)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_trusted(self) -> Steps:
        """A server whose certificate names the host (DNS or IP) is used."""
        self.trust(self.ca)
        for host in ("localhost", "127.0.0.1"):
            store = self.tls_store(host)
            decision = yield first_answer(
                lambda store=store, host=host: store.rate_limit(host, 2, 60.0, 0, "gcra"), 5
            )
            self.assertEqual(decision.remaining, 1)

    @defer.inlineCallbacks
    def test_untrusted(self) -> Steps:
        """A certificate from a CA that is not trusted: the store is unavailable."""
        self.trust(self.other_ca)
        store = self.tls_store("localhost")
        yield self.assertFailure(store.rate_limit("k", 2, 60.0, 0, "gcra"), StoreUnavailable)


class _TLSRedis(RedisServer):
    """A redis-server also listening with TLS on C{tls_port}, with C{NAME.pem}/C{NAME.key}."""

    def __init__(self, test_case: TestCase, directory: str, name: str) -> None:
        super().__init__(test_case)
        self.tls_port = support.free_port()
        self._files = os.path.join(directory, name)

    def spawn_arguments(self, directory: str) -> list[str]:
        return super().spawn_arguments(directory) + [
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", self._files + "-server.pem",
            "--tls-key-file", self._files + "-server.key",
            "--tls-auth-clients", "no",
        ]  # fmt: skip


def write_certificates(directory: str, name: str) -> str:
    """
    A CA (C{NAME-ca.pem}) and a server certificate it signed for
    C{localhost} and C{127.0.0.1} (C{NAME-server.pem}, C{.key}); the CA's path.
    """
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject: str, key: Any, issuer: Any, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = issue(f"{name} test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue("localhost", server_key, ca_name, ca_key, ca=False)
    base = os.path.join(directory, name)
    with open(base + "-ca.pem", "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(base + "-server.pem", "wb") as f:
        f.write(server.public_bytes(serialization.Encoding.PEM))
    with open(base + "-server.key", "wb") as f:
        f.write(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return base + "-ca.pem"
