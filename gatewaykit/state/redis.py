"""
The Redis state store (C{gateway.redis}): rate limits, sessions and sticky
affinity shared by every worker and gateway node, on txredisapi.

Every call is bounded by C{gateway.redis.timeout}: txredisapi queues
commands while it reconnects and would otherwise make them wait forever.
A call that times out or finds the connection broken fails with
L{StoreUnavailable}; the store then answers L{StoreUnavailable} at once,
without asking Redis, until a background C{PING} (one every
L{RedisStore.probe_interval} seconds) is answered again. So during an
outage requests don't each pay the timeout, and decisions go back to Redis
within about a second of it coming back.

Rate limits run as Lua scripts (C{state/lua/*.lua}) with C{EVALSHA}: one
round trip per decision, atomic, on Redis's clock so that every node agrees.
The decisions asked for in one reactor iteration share that round trip: they
go as one C{EVALSHA} of L{BATCH_SCRIPT} (each algorithm's script as a Lua
function, run once per decision, in order), because txredisapi's cost per
command, not Redis, is what limits a busy gateway (docs/performance.md).

Keys are used as given: callers namespace them (C{gk:rl:...} for rate
limits, C{gk:session:...}, C{gk:sticky:...}).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
from functools import partial
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

import txredisapi
from attrs import frozen
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit import batched_write
from gatewaykit.config.model import RedisConfig
from gatewaykit.interfaces import IStateStore
from gatewaykit.state import Decision, StoreUnavailable

log = Logger()

ALGORITHMS = ("gcra", "fixed_window", "sliding_window")

# Seconds a connection attempt may take (a host that drops SYNs); commands
# are bounded by gateway.redis.timeout whatever this is.
CONNECT_TIMEOUT = 2.0

# Error replies that mean "Redis cannot serve this now" rather than a bug.
_UNAVAILABLE_REPLIES = ("LOADING", "BUSY", "READONLY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN")

# Twisted and txredisapi failures that mean the connection is not usable.
# (A caller cancelling its own call is not one.)
_CONNECTION_FAILURES = (txredisapi.ConnectionError, ConnectError, ConnectionClosed)


# Decisions sent in one EVALSHA at most (more in one iteration: several).
BATCH_LIMIT = 64

# Values of a decision's reply (see the scripts' headers).
REPLY_LENGTH = 7

# Distinct (algorithm, limit, window, burst) kept formatted (then it starts over).
REMEMBERED_SPECS = 256


def _lua_source(name: str) -> bytes:
    """The script C{state/lua/NAME.lua} of this package."""
    return importlib.resources.files("gatewaykit.state").joinpath(f"lua/{name}.lua").read_bytes()


def _batch_source() -> bytes:
    """
    One script running any number of decisions: KEYS are their keys, ARGV[1]
    four words per decision (algorithm, limit, window, burst; one argument
    for them all, as txredisapi encodes each argument in Python); the reply
    is one string of each decision's reply, one after the other, integers
    separated by spaces (one string is one C{split}; without hiredis,
    txredisapi would read an array of integers one line at a time in Python).
    """
    functions = b"".join(
        b"algorithms['%s'] = function(KEYS, ARGV)\n%s\nend\n"
        % (name.encode("ascii"), _lua_source(name))
        for name in ALGORITHMS
    )
    return (
        b"local algorithms = {}\n"
        + functions
        + b"""local replies, i = {}, 0
for algorithm, limit, window, burst in string.gmatch(ARGV[1], '(%S+) (%S+) (%S+) (%S+)') do
  i = i + 1
  local reply = algorithms[algorithm]({KEYS[i]}, {limit, window, burst})
  for j, value in ipairs(reply) do
    reply[j] = string.format('%.0f', value)
  end
  replies[i] = table.concat(reply, ' ')
end
return table.concat(replies, ' ')
"""
    )


@frozen
class Script:
    """A Lua script and its SHA-1 (what C{EVALSHA} names it by)."""

    source: bytes
    sha: str

    @classmethod
    def of(cls, source: bytes) -> "Script":
        """The script of C{source}."""
        return cls(source, hashlib.sha1(source).hexdigest())


BATCH_SCRIPT = Script.of(_batch_source())


Decided = Callable[[Decision, float, Any], None]
"""Called as C{decided(decision, server_time, context)}."""
Failed = Callable[[Failure, Any], None]
"""Called as C{failed(failure, context)}."""


class _Waiting:
    """A decision asked for in this reactor iteration, not yet answered."""

    __slots__ = ("key", "arguments", "decided", "failed", "context")

    def __init__(
        self, key: str, arguments: str, decided: Decided, failed: Failed, context: Any
    ) -> None:
        self.key = key
        self.arguments = arguments
        self.decided = decided
        self.failed = failed
        self.context = context


def _fire_decision(decision: Decision, at: float, answer: defer.Deferred[Any]) -> None:
    answer.callback(decision)


def _fire_timed(decision: Decision, at: float, answer: defer.Deferred[Any]) -> None:
    answer.callback((decision, at))


def _fire_failure(failure: Failure, answer: defer.Deferred[Any]) -> None:
    answer.errback(failure)


@frozen
class RedisAddress:
    """What a C{redis://} or C{rediss://} URL says."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> "RedisAddress":
        """C{redis[s]://[[user]:password@]host[:port][/db]}; raises C{ValueError}."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"expected a redis:// or rediss:// URL, got {url!r}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"expected a database number after the host, got {path!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
        )


class _Watched:
    """
    A txredisapi pool that says when its last connection is gone, so the
    store fails fast at once instead of after a timed-out command.
    """

    def __init__(self, *args: Any, lost_all: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost_all = lost_all
        # Nobody waits for a lazy pool to be complete, and txredisapi logs
        # why it failed (refused credentials...): don't leave it unhandled.
        self.deferred.addErrback(lambda _: None)  # type: ignore[attr-defined]

    def delConnection(self, connection: Any) -> None:
        super().delConnection(connection)  # type: ignore[misc]
        if not self.size and not self.disconnectCalled:  # type: ignore[attr-defined]
            self._lost_all()


class _Connections(_Watched, txredisapi.RedisFactory):
    """
    txredisapi's connection pool with a short reconnection backoff: the
    default grows to 10 s, so a restarted Redis could go unused that long.
    """

    initialDelay = 0.25
    maxDelay = 1.0


class _SentinelConnections(_Watched, txredisapi.SentinelConnectionFactory):
    """The same for a master found through Sentinel."""

    maxDelay = 1.0


def _as_bytes(value: Any) -> Optional[bytes]:
    """A stored value as it was: txredisapi decodes the ones that are valid UTF-8."""
    return value.encode("utf-8") if isinstance(value, str) else value


def _parse_reply(reply: list[int], start: int = 0) -> tuple[Decision, float]:
    """
    The decision of a script's reply at C{start} as a L{Decision} and the
    server time it was made at.
    """
    allowed, capacity, remaining, reset_after, retry_after, sec, usec = reply[
        start : start + REPLY_LENGTH
    ]
    decision = Decision(
        allowed == 1,
        capacity,
        remaining,
        reset_after / 1e9,  # the scripts count durations in nanoseconds
        retry_after / 1e9,
    )
    # The same arithmetic as the script's, so a test can replay it exactly.
    return decision, sec + usec / 1000000


@implementer(IStateStore)
class RedisStore:
    """
    State in Redis, shared by every process using the same server.

    @ivar available: C{False} from a failed call until a probe succeeds.
    """

    shared = True
    pool_size = 2
    probe_interval = 1.0

    def __init__(self, config: RedisConfig, reactor: Any) -> None:
        self._reactor = reactor
        self._timeout = config.timeout
        self._waiting: list[_Waiting] = []
        # Each policy's decision spec as the batch script reads it.
        self._specs: dict[tuple[str, int, float, int], str] = {}
        self._redis, self._disconnect = _connect(
            config, reactor, self.pool_size, lambda: self._went_away("connection lost")
        )
        self.available = True
        self._closed = False
        self._probe = LoopingCall(self._ping)
        self._probe.clock = reactor

    # -- IStateStore -----------------------------------------------------

    def rate_limit(
        self, key: str, limit: int, window: float, burst: int, algorithm: str
    ) -> defer.Deferred[Decision]:
        answer: defer.Deferred[Decision] = defer.Deferred()
        self.decide_then(
            key, limit, window, burst, algorithm, _fire_decision, _fire_failure, answer
        )
        return answer

    def evaluate(
        self, key: str, limit: int, window: float, burst: int, algorithm: str
    ) -> defer.Deferred[tuple[Decision, float]]:
        """
        As L{rate_limit}, also giving the Redis server time the decision was
        made at (for diagnostics, and for tests comparing with the memory
        store's arithmetic).

        The decision waits for the end of this reactor iteration, and goes
        to Redis with the others asked for in it.
        """
        answer: defer.Deferred[tuple[Decision, float]] = defer.Deferred()
        self.decide_then(key, limit, window, burst, algorithm, _fire_timed, _fire_failure, answer)
        return answer

    def decide_then(
        self,
        key: str,
        limit: int,
        window: float,
        burst: int,
        algorithm: str,
        decided: Decided,
        failed: Failed,
        context: Any = None,
    ) -> None:
        """
        As L{rate_limit}, answering with plain calls instead of a
        C{Deferred} (the cost of one showed in the rate-limit profile):
        C{decided(decision, server_time, context)} or, with
        L{StoreUnavailable} or another failure, C{failed(failure, context)};
        exactly one of them, once, maybe before this returns.
        """
        spec = (algorithm, limit, window, burst)
        arguments = self._specs.get(spec)
        if arguments is None:  # (a spec is checked once, when first formatted)
            if algorithm not in ALGORITHMS:
                failed(Failure(ValueError(f"unknown rate-limit algorithm {algorithm!r}")), context)
                return
            if len(self._specs) >= REMEMBERED_SPECS:
                self._specs.clear()
            arguments = self._specs[spec] = f"{algorithm} {limit:d} {float(window)!r} {burst:d}"
        refusal = self._refusal()
        if refusal is not None:
            failed(Failure(refusal), context)
            return
        if not self._waiting:
            self._reactor.callLater(0, self._send_waiting)
        self._waiting.append(_Waiting(key, arguments, decided, failed, context))

    def get(self, key: str) -> defer.Deferred[Optional[bytes]]:
        d = self._call(lambda: self._redis.get(key))
        return d.addCallback(_as_bytes)

    def set(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        milliseconds = max(1, math.ceil(ttl * 1000))
        d = self._call(lambda: self._redis.set(key, value, pexpire=milliseconds))
        return d.addCallback(lambda _: None)

    def delete(self, key: str) -> defer.Deferred[None]:
        d = self._call(lambda: self._redis.delete(key))
        return d.addCallback(lambda _: None)

    def close(self) -> defer.Deferred[None]:
        self._closed = True
        if self._probe.running:
            self._probe.stop()
        d = defer.maybeDeferred(self._disconnect)
        return d.addCallback(lambda _: None)

    # -- calls -----------------------------------------------------------

    def _send_waiting(self) -> None:
        """Send the decisions asked for in the iteration that ended."""
        pending, self._waiting = self._waiting, []
        connection = self._connection()
        for start in range(0, len(pending), BATCH_LIMIT):
            batch = pending[start : start + BATCH_LIMIT]
            keys = [waiting.key for waiting in batch]
            arguments = " ".join([waiting.arguments for waiting in batch])
            d = self._call(partial(self._run, BATCH_SCRIPT, keys, [arguments], connection))
            # (A reply that cannot be read fails all of the batch's decisions.)
            d.addCallback(self._decided, batch).addErrback(self._undecided, batch)
        if connection is not self._redis:
            # On the wire now: txredisapi's write would wait for the
            # reactor's next poll, and the events that brings (each a
            # request to handle) would go first, the decisions after.
            batched_write.send_now(connection.transport)

    def _connection(self) -> Any:
        """
        Where this turn's decisions go: one connected connection of the
        pool, so that Redis runs the batches in the order they were asked
        for (txredisapi would pick one at random for each command); while
        none is connected, the pool itself, which waits for one.
        """
        for connection in self._redis._factory.pool:
            if connection.connected and connection.transport is not None:
                return connection
        return self._redis

    @staticmethod
    def _decided(reply: str, batch: list[_Waiting]) -> None:
        values = list(map(int, reply.split()))
        if len(values) != len(batch) * REPLY_LENGTH:
            raise ValueError(f"a batch of {len(batch)} decisions was answered {reply!r}")
        # Every decision is answered from here on: a caller's failure is its own.
        for index, waiting in enumerate(batch):
            decision, at = _parse_reply(values, index * REPLY_LENGTH)
            try:
                waiting.decided(decision, at, waiting.context)
            except Exception:
                log.failure("answering a rate-limit decision failed")

    @staticmethod
    def _undecided(failure: Failure, batch: list[_Waiting]) -> None:
        for waiting in batch:
            try:
                waiting.failed(failure, waiting.context)
            except Exception:
                log.failure("answering a failed rate-limit decision failed")

    def _refusal(self) -> Optional[StoreUnavailable]:
        """Why a call must fail at once, if it must."""
        if self._closed:
            return StoreUnavailable("the store is closed")
        if not self.available:
            return StoreUnavailable("Redis is unavailable (probing)")
        return None

    def _call(self, command: Callable[[], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        """Run C{command} within the timeout, or fail at once while Redis is away."""
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        d = defer.maybeDeferred(command)
        # A timed-out command keeps its place in txredisapi's reply queue,
        # so its late reply is dropped there instead of answering the next.
        d.addTimeout(self._timeout, self._reactor)
        return d.addErrback(self._failed)

    def _run(
        self, script: Script, keys: list[str], args: list[Any], redis: Any
    ) -> defer.Deferred[Any]:
        """
        C{EVALSHA} on C{redis} (a connection, or the pool); when Redis lost
        the script (a restart, a flush), load it and retry once.
        """

        def reload(failure: Failure) -> defer.Deferred[Any]:
            failure.trap(txredisapi.ScriptDoesNotExist)
            d = redis.script_load(script.source)
            return d.addCallback(lambda _: redis.evalsha(script.sha, keys, args))

        return redis.evalsha(script.sha, keys, args).addErrback(reload)

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(defer.TimeoutError):
            reason = f"no answer within {self._timeout:g}s"
        elif failure.check(*_CONNECTION_FAILURES) or (
            failure.check(txredisapi.ResponseError)
            and str(failure.value).startswith(_UNAVAILABLE_REPLIES)
        ):
            reason = failure.getErrorMessage() or failure.type.__name__
        else:
            return failure
        self._went_away(reason)
        return Failure(StoreUnavailable(reason))

    def _went_away(self, reason: str) -> None:
        if not self.available or self._closed:
            return
        self.available = False
        log.warn(
            "Redis unavailable ({reason}); answering without it, probing every {interval}s",
            reason=reason,
            interval=self.probe_interval,
        )
        self._probe.start(self.probe_interval, now=False)

    def _ping(self) -> defer.Deferred[None]:
        d = defer.maybeDeferred(self._redis.ping)
        d.addTimeout(self._timeout, self._reactor)
        d.addCallbacks(self._came_back, lambda _: None)
        return d

    def _came_back(self, _: Any) -> None:
        if self.available or self._closed:
            return
        self.available = True
        if self._probe.running:
            self._probe.stop()
        log.info("Redis is answering again")


def _connect(
    config: RedisConfig, reactor: Any, pool_size: int, lost_all: Callable[[], None]
) -> tuple[Any, Callable[[], defer.Deferred[Any]]]:
    """
    A lazy, self-reconnecting txredisapi pool calling C{lost_all()} when its
    last connection is gone, and how to close it.
    """
    address = RedisAddress.parse(config.url)
    options: dict[str, Any] = dict(
        dbid=address.db or None,
        poolsize=pool_size,
        password=address.password,
        username=address.username,
        # Values stay as they were stored ("10" is not turned into 10).
        convertNumbers=False,
        lost_all=lost_all,
    )
    if config.sentinel is not None:
        # txredisapi's Sentinel endpoint has no TLS: rediss:// only names
        # the password and database here.
        sentinel = txredisapi.Sentinel(list(config.sentinel.addresses))
        sentinel.discovery_timeout = max(config.timeout, 1.0)
        redis = sentinel.master_for(
            config.sentinel.master, factory_class=_SentinelConnections, **options
        )

        def disconnect() -> defer.Deferred[Any]:
            return defer.gatherResults(
                [redis.disconnect(), sentinel.disconnect()], consumeErrors=True
            )

        return redis, disconnect
    factory = _Connections(
        f"{address.host}:{address.port}",
        options.pop("dbid"),
        options.pop("poolsize"),
        isLazy=True,
        **options,
    )
    endpoint: Any = HostnameEndpoint(reactor, address.host, address.port, timeout=CONNECT_TIMEOUT)
    if address.tls:
        # Imported only when needed: it loads pyOpenSSL.
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    factory.startConnecting(endpoint)
    return factory.handler, factory.disconnect
