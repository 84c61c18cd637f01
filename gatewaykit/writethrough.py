"""
Writing to a TCP transport at once when nothing is queued on it.

A Twisted TCP transport buffers every write and sends it only when the
reactor next reports the socket writable. Each write that finds the buffer
empty so costs an C{epoll_ctl} to ask for write events, a pass through the
reactor loop for the event, the C{send}, and a second C{epoll_ctl} to stop
asking. On the proxy path nearly every write finds the buffer empty and
room in the kernel's socket buffer (a request head upstream, a response to
the client), so L{write} tries the C{send} first and leaves to the transport
only what the socket did not take. That is what the transport itself would
do a moment later, minus the round trip through the reactor.

Only plain TCP transports are written through (a TLS transport encrypts
first, a test's C{StringTransport} just records). Anything unusual (data
queued, a connection closing or aborted, a send error) goes the ordinary way
through C{transport.write}, which keeps the order of the bytes, pauses a
registered producer when its buffer fills and reports a broken connection
as it always does.
"""

from __future__ import annotations

from errno import EAGAIN, EINTR, ENOBUFS, EWOULDBLOCK
from typing import Any

from twisted.internet.tcp import Connection

__all__ = ["write"]

_RETRY_LATER = frozenset({EAGAIN, EWOULDBLOCK, ENOBUFS, EINTR})


def _sendable(transport: Any) -> bool:
    """Whether C{transport} is a plain TCP one with nothing queued, open for writing."""
    return bool(
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._aborting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and not transport.dataBuffer
    )


def write(transport: Any, data: bytes) -> None:
    """Write C{data} to C{transport}, sending what the socket takes now."""
    if data and _sendable(transport):
        try:
            sent = transport.socket.send(data)
        except OSError as exc:
            if exc.errno not in _RETRY_LATER:
                # Let the transport meet the error itself, as it would
                # have: it reports the connection lost from its doWrite.
                transport.write(data)
                return
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
