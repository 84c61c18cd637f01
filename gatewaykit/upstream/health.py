"""
Active health checks: every target of an upstream probed on an interval,
by an HTTP request or a TCP connect, flipping C{Target.healthy} after
enough consecutive results.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import httptools
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from gatewaykit.config.model import HealthCheckConfig
from gatewaykit.upstream.target import Target

USER_AGENT = b"gatewaykit-health-check"

# Wraps a probe's connection factory for a target (e.g. in TLS).
Wrap = Callable[[ClientFactory, Target], Any]


class _ProbeProtocol(Protocol):
    """The connection of one probe: connected is enough, or one HTTP status."""

    def __init__(self, probe: _Probe) -> None:
        self._probe = probe
        self._parser: Optional[httptools.HttpResponseParser] = None

    def connectionMade(self) -> None:
        request = self._probe.request
        if request is None:
            self._probe.finish(True)
            return
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._probe.finish(False)

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._probe.finish(self._probe.expects(self._parser.get_status_code()))
        self._parser = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._probe.finish(False)


class _Probe(ClientFactory):
    """One check of one target; C{result} fires with whether it passed."""

    noisy = False

    def __init__(
        self,
        reactor: Any,
        target: Target,
        config: HealthCheckConfig,
        wrap: Optional[Wrap] = None,
    ) -> None:
        self.result: Deferred[bool] = Deferred()
        self.expects = config.expects
        self.request: Optional[bytes] = None
        if config.path is not None:
            self.request = (
                b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
                % (config.path.encode("ascii"), target.address.encode("ascii"), USER_AGENT)
            )
        self._protocol: Optional[_ProbeProtocol] = None
        self._connecting = True
        self._finished = False
        self._timeout = reactor.callLater(config.timeout, self.finish, False)
        self._connector = reactor.connectTCP(
            target.host,
            target.port,
            self if wrap is None else wrap(self, target),
            timeout=config.timeout,
        )

    def buildProtocol(self, addr: Any) -> _ProbeProtocol:
        self._connecting = False
        self._protocol = _ProbeProtocol(self)
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._connecting = False
        self.finish(False)

    def finish(self, passed: bool) -> None:
        """Settle the result once, and drop the connection."""
        if self._finished:
            return
        # Stopping a connector reports a failure at once, re-entering here.
        self._finished = True
        if self._timeout.active():
            self._timeout.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        elif self._connecting:
            self._connecting = False
            self._connector.stopConnecting()
        self.result.callback(passed)


class _TargetHealth:
    """The running count of consecutive results for one target."""

    __slots__ = ("passes", "fails", "next_check", "probe")

    def __init__(self) -> None:
        self.passes = 0
        self.fails = 0
        self.next_check: Any = None
        self.probe: Optional[_Probe] = None


class HealthChecker:
    """
    Probes each target every C{interval}. A healthy target becomes unhealthy
    after C{unhealthy_threshold} failed checks in a row, and healthy again
    after C{healthy_threshold} passed checks in a row. Targets start healthy,
    so an upstream serves at once (the first check runs immediately).

    @param on_change: called with C{(target, healthy)} when a target flips.
    @param wrap: wraps a probe's factory for its target (TLS, for an
        https upstream).
    """

    def __init__(
        self,
        config: HealthCheckConfig,
        targets: Sequence[Target],
        reactor: Any,
        on_change: Callable[[Target, bool], None],
        wrap: Optional[Wrap] = None,
    ) -> None:
        self.config = config
        self._wrap = wrap
        self._targets = list(targets)
        self._reactor = reactor
        self._on_change = on_change
        self._state = {target: _TargetHealth() for target in self._targets}
        self._running = False

    def start(self) -> None:
        """Check every target now, then on the interval."""
        self._running = True
        for target in self._targets:
            self._check(target)

    def stop(self) -> None:
        """Stop checking; a probe in progress is abandoned."""
        self._running = False
        for state in self._state.values():
            if state.next_check is not None and state.next_check.active():
                state.next_check.cancel()
            state.next_check = None
            probe, state.probe = state.probe, None
            if probe is not None:
                probe.finish(False)

    def _check(self, target: Target) -> None:
        state = self._state[target]
        state.next_check = None
        probe = _Probe(self._reactor, target, self.config, self._wrap)
        state.probe = probe
        probe.result.addCallback(self._checked, target, probe)

    def _checked(self, passed: bool, target: Target, probe: _Probe) -> None:
        state = self._state[target]
        if state.probe is not probe or not self._running:
            return
        state.probe = None
        config = self.config
        if passed:
            state.fails = 0
            state.passes += 1
            if not target.healthy and state.passes >= config.healthy_threshold:
                target.healthy = True
                self._on_change(target, True)
        else:
            state.passes = 0
            state.fails += 1
            if target.healthy and state.fails >= config.unhealthy_threshold:
                target.healthy = False
                self._on_change(target, False)
        state.next_check = self._reactor.callLater(config.interval, self._check, target)
