"""
Writing to TCP transports without the reactor's write-interest dance.

A Twisted TCP transport buffers every write and asks the reactor for write
events (an C{epoll_ctl}), sends when the socket is reported writable, and
stops asking (a second C{epoll_ctl}). On the proxy path nearly every write
finds room in the kernel's socket buffer, so L{write} puts the bytes in the
transport's own buffer without asking for write events, and at the end of
the reactor iteration (a C{callLater(0)} shared by every write made in it)
sends each buffered transport's bytes at once. Only what a socket does not
take is left to the transport, which then asks for write events as usual.
Sends stay batched after the events of one poll, as Twisted's are, so the
peers are woken once per batch rather than once per write.

The bytes go through the transport's own buffer, so any other write to the
same transport (C{transport.write} by other code) stays in order, a
registered producer is paused when the buffer fills, and a broken connection
is reported by the transport as always. Only plain TCP transports are
written this way (a TLS transport encrypts first, a test's C{StringTransport}
just records); a transport closing is left to the transport.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection

__all__ = ["send_now", "write"]

_pending: list[Any] = []  # transports with bytes buffered by write(), in order


def _plain(transport: Any) -> bool:
    """Whether C{transport} is a plain TCP one, open for writing."""
    return bool(
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._aborting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
    )


def write(transport: Any, data: bytes) -> None:
    """Write C{data} to C{transport}, sent at the end of this reactor iteration."""
    if not data:
        return
    if not _plain(transport):
        transport.write(data)
        return
    if not transport._tempDataLen and not transport.dataBuffer:
        if not _pending:
            from twisted.internet import reactor

            reactor.callLater(0, _flush)
        _pending.append(transport)
    transport._tempDataBuffer.append(data)
    transport._tempDataLen += len(data)
    transport._maybePauseProducer()


def _flush() -> None:
    """Send what each pending transport buffered; leave the rest to the reactor."""
    pending = _pending[:]
    del _pending[:]
    for transport in pending:
        if not transport._tempDataLen and not transport.dataBuffer:
            continue  # already sent (the transport wrote it itself)
        if not transport.connected or transport.disconnecting or transport._writeDisconnecting:
            continue  # gone, or its close asked for write events: the reactor's job
        if transport.doWrite() is not None or transport._tempDataLen or transport.dataBuffer:
            # An error (the reactor meets it again and reports the loss) or
            # a full socket buffer: write events from here on.
            transport.startWriting()


def send_now(transport: Any) -> None:
    """
    Send what C{transport} buffered from writes made by others (a library's
    own C{transport.write}) now, rather than when the reactor next polls and
    finds the socket writable: the C{epoll_wait} in between may bring a whole
    batch of other events to handle first. What the socket does not take
    stays with the transport, which already asked for write events.
    """
    if _plain(transport) and (transport._tempDataLen or transport.dataBuffer):
        transport.doWrite()
