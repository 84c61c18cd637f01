"""
gatewaykit's reactor: Twisted's epoll reactor without the legacy log
context it sets around every event.

For each ready descriptor, L{EPollReactor.doPoll} calls the handler
through C{twisted.python.log.callWithLogger}, which builds a context
dictionary and pushes and pops it on a thread-local stack so that legacy
log messages name the connection (C{[HTTP11ServerProtocol,5,127.0.0.1]}).
On the proxy path that is several events per request and showed as 4-7%
of the gateway's time in profiles (docs/performance.md). gatewaykit's own
log lines say which request, connection or upstream they are about, so
this reactor calls the handler directly; lines logged from event handlers
show C{[-]} as their system.

C{twistd gatewaykit} installs it unless another reactor was asked for
(C{twistd --reactor NAME gatewaykit ...}), and workers run on the reactor
their supervisor runs on; it is also registered as the reactor plugin
C{gatewaykit}.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Optional

from twisted.internet.epollreactor import EPollReactor

__all__ = ["GatewayReactor", "install", "install_if_none", "install_named", "name_of"]


class GatewayReactor(EPollReactor):
    """L{EPollReactor} calling event handlers without a log context."""

    def doPoll(self, timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            # Limit the number of events to the number of io objects we're
            # currently tracking (because that's maybe a good heuristic).
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)

    doIteration = doPoll


def install() -> None:
    """Install L{GatewayReactor} as Twisted's reactor."""
    from twisted.internet.main import installReactor

    installReactor(GatewayReactor())


def name_of(reactor: Any) -> Optional[str]:
    """The reactor plugin name of C{reactor}'s kind (C{None} if no plugin names it)."""
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for plugin in getReactorTypes():
        if getattr(plugin, "moduleName", None) == module:
            return str(plugin.shortName)
    return None


def install_named(name: Optional[str]) -> None:
    """Install the reactor plugin C{name}, or L{GatewayReactor} for C{None}."""
    if name is None:
        install_if_none()
        return
    from twisted.application.reactors import installReactor

    installReactor(name)


def install_if_none() -> None:
    """Install L{GatewayReactor} unless a reactor is installed already."""
    if "twisted.internet.reactor" not in sys.modules and sys.platform.startswith("linux"):
        install()
