"""
The C{basic_auth} policy: HTTP Basic (RFC 7617) against an htpasswd file.

Password hashes are slow on purpose (bcrypt: a tenth of a second or more),
so they are verified on a small thread pool of the policy's own, never on
the reactor thread; a success is remembered for C{cache_ttl} so a client's
next requests cost no hashing, and concurrent requests with the same
credentials share one verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Union

from attrs import field, frozen
from passlib.context import CryptContext
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from gatewaykit.config.schema import Key, Section, boolean, duration, integer, text
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import (
    DEFAULT_REALM,
    challenge,
    config_file,
    set_fields,
    unauthorized,
    unavailable,
    upstream_header,
)
from gatewaykit.policies.chain import Identity, PolicyCall, PolicyContext

log = Logger()

# Hashes htpasswd writes that are still worth accepting: bcrypt (-B), and
# the SHA-256/SHA-512 crypt and Apache MD5 forms. Plain text, DES crypt and
# unsalted {SHA} are refused when the file loads.
HASHES = CryptContext(schemes=["bcrypt", "sha512_crypt", "sha256_crypt", "apr_md5_crypt"])
_BCRYPT_MAX = 72  # bcrypt reads no further; Apache's htpasswd truncates there too
_CACHE_ENTRIES = 4096
# Distinct checks waiting for a thread before new ones are turned away: a
# flood of wrong passwords must not queue unbounded work.
MAX_WAITING = 256

Verdict = Optional[GatewayError]
Run = Callable[..., "Deferred[Any]"]


def parse_htpasswd(content: bytes) -> Mapping[str, str]:
    """The users of an htpasswd file and their hashes; C{ValueError} when wrong."""
    try:
        lines = content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"line {number}: expected user:hash")
        if user in users:
            raise ValueError(f"line {number}: user {user!r} appears twice")
        if HASHES.identify(hashed, required=False) is None:
            raise ValueError(
                f"line {number}: user {user!r} has an unsupported hash; use bcrypt"
                " (htpasswd -B), or $5$/$6$ SHA-crypt or $apr1$"
            )
        users[user] = hashed
    if not users:
        raise ValueError("holds no users")
    return MappingProxyType(users)


def verify_password(password: bytes, hashed: str) -> bool:
    """Whether C{password} matches C{hashed} (slow: run it off the reactor)."""
    if HASHES.identify(hashed) == "bcrypt":
        password = password[:_BCRYPT_MAX]
    try:
        return bool(HASHES.verify(password, hashed))
    except ValueError:
        return False


def credentials(request: Request) -> Optional[tuple[str, bytes]]:
    """The user and password of C{Authorization: Basic ...}, or C{None}."""
    value = request.headers.get(b"authorization")
    if value is None:
        return None
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, UnicodeDecodeError):
        return None


@frozen
class BasicAuthOptions:
    """
    C{type: basic_auth}: the users, the realm browsers show, whether the
    C{Authorization} field is removed before the request goes upstream, the
    field naming the user upstream, how long a verified password is
    remembered and how many threads verify.
    """

    htpasswd: Mapping[str, str] = field(repr=False)
    realm: str = DEFAULT_REALM
    strip: bool = True
    forward_subject: Optional[str] = None
    cache_ttl: float = 60.0
    threads: int = 2


OPTIONS = Section(
    {
        "htpasswd": Key(config_file(parse_htpasswd, "htpasswd file"), required=True),
        "realm": text(),
        "strip": boolean,
        "forward_subject": upstream_header,
        "cache_ttl": duration(positive=False),
        "threads": integer(1, 16),
    }
).into(BasicAuthOptions)


class VerifiedCache:
    """
    Credentials verified lately, for C{ttl} seconds. Keys are an HMAC of
    user and password under a random per-process key, so what is kept is
    no use outside this process.
    """

    def __init__(self, clock: Any, ttl: float, size: int = _CACHE_ENTRIES) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def key(self, user: str, password: bytes) -> bytes:
        """The cache key of these credentials."""
        # A user name holds no ":" (RFC 7617), so "user:password" is unambiguous.
        return hmac.new(self._key, user.encode("utf-8") + b":" + password, hashlib.sha256).digest()

    def __contains__(self, key: bytes) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires <= self._clock.seconds():
            del self._entries[key]
            return False
        return True

    def add(self, key: bytes) -> None:
        """Remember C{key} as verified for C{ttl} seconds."""
        if self._ttl <= 0:
            return
        self._entries[key] = self._clock.seconds() + self._ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


@implementer(IPolicy)
class BasicAuthPolicy:
    """Recognises a request by its user name and password."""

    def __init__(self, name: str, options: BasicAuthOptions, clock: Any, run: Run) -> None:
        self.name = name
        self._options = options
        self._users = options.htpasswd
        self._run = run
        self._cache = VerifiedCache(clock, options.cache_ttl)
        self._pending: dict[bytes, list[Deferred[bool]]] = {}
        self._closed = False
        self._challenge = challenge("Basic", realm=options.realm, charset="UTF-8")
        # Unknown users still cost one hash, so timing does not tell which
        # user names exist.
        self._decoy = next(iter(self._users.values()))

    def _refusal(self, detail: str) -> GatewayError:
        return unauthorized(detail, self._challenge)

    def on_request(self, call: PolicyCall) -> Union[Verdict, Deferred[Verdict]]:
        given = credentials(call.request)
        if given is None:
            return self._refusal("a user name and password are required")
        user, password = given
        key = self._cache.key(user, password)
        if key in self._cache:
            return self._accept(call, user)
        if self._closed:
            return unavailable("this configuration is being retired; try again")
        if key not in self._pending and len(self._pending) >= MAX_WAITING:
            return unavailable("too many password checks are waiting; try again")
        return self._verified(key, user, password).addCallback(self._decided, call, user)

    def _decided(self, ok: bool, call: PolicyCall, user: str) -> Verdict:
        if not ok:
            return self._refusal("wrong user name or password")
        return self._accept(call, user)

    def _verified(self, key: bytes, user: str, password: bytes) -> Deferred[bool]:
        """Fires with whether the password is right, sharing a running check."""
        waiter: Deferred[bool] = Deferred()
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(waiter)
            return waiter
        self._pending[key] = [waiter]
        hashed = self._users.get(user)
        check = self._run(verify_password, password, hashed or self._decoy)
        check.addErrback(self._crashed)
        check.addCallback(self._checked, key, hashed is not None)
        return waiter

    def _crashed(self, failure: Failure) -> bool:
        log.failure("basic_auth {policy}: password check failed", failure, policy=self.name)
        return False

    def _checked(self, matched: bool, key: bytes, known_user: bool) -> None:
        ok = matched and known_user
        if ok:
            self._cache.add(key)
        for waiter in self._pending.pop(key, []):
            waiter.callback(ok)
        if self._closed and not self._pending:
            self._release()

    def _accept(self, call: PolicyCall, user: str) -> Verdict:
        call.identity = Identity("basic", user)
        options = self._options
        headers = call.request.headers
        if options.strip:
            headers.remove(b"authorization")
        if options.forward_subject is not None:
            set_fields(headers, [options.forward_subject], {options.forward_subject: user})
        return None

    def close(self) -> None:
        """
        Take no new checks; release what verifies them once the checks
        already waiting are answered (their requests are still in flight).
        """
        self._closed = True
        if not self._pending:
            self._release()

    def _release(self) -> None:
        """Release what verifies passwords; see L{ThreadedBasicAuthPolicy}."""


class ThreadedBasicAuthPolicy(BasicAuthPolicy):
    """A L{BasicAuthPolicy} verifying on a thread pool it starts and stops."""

    def __init__(self, name: str, options: BasicAuthOptions, reactor: Any) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=options.threads, name=f"basic_auth-{name}")
        self._pool.start()
        # Its threads would keep the process alive if the policy were never
        # closed, so the reactor's shutdown stops them too.
        self._shutdown = reactor.addSystemEventTrigger("during", "shutdown", self._shut_down)

        def run(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            return deferToThreadPool(reactor, self._pool, f, *args)

        super().__init__(name, options, reactor, run)

    def _shut_down(self) -> None:
        self._shutdown = None  # firing: nothing to remove
        self._release()

    def _release(self) -> None:
        """Stop the verification threads (waiting for one running check at most)."""
        if self._shutdown is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown)
            self._shutdown = None
        if self._pool.started:
            self._pool.stop()


@implementer(IPolicyFactory)
class BasicAuthFactory:
    """
    The C{basic_auth} policy type. C{run} replaces the thread pool:
    C{run(f, *args)} returns a C{Deferred} of C{f(*args)} (tests run checks
    when they choose).
    """

    name = "basic_auth"
    options = staticmethod(OPTIONS)

    def __init__(self, run: Optional[Run] = None) -> None:
        self._run = run

    def build(
        self, name: str, options: BasicAuthOptions, context: PolicyContext
    ) -> BasicAuthPolicy:
        if self._run is not None:
            return BasicAuthPolicy(name, options, context.reactor, self._run)
        return ThreadedBasicAuthPolicy(name, options, context.reactor)

