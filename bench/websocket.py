#!/usr/bin/env python3
"""
WebSocket round trips and bulk throughput: gatewaykit vs nginx vs direct.

One upstream WebSocket server (this file, `upstream` role: the RFC 6455
handshake and frames done here, an epoll loop for echo connections and a
thread per bulk connection) is reached three ways in one run:

direct: the client straight to the upstream.
gatewaykit: `twistd -n gatewaykit` with one route, `websocket: true`.
nginx: one worker, `proxy_http_version 1.1`, `Upgrade $http_upgrade`,
    `Connection "upgrade"`: the reference.
nginx-64k: the same with `proxy_buffer_size 64k` (and `proxy_buffers 4 64k`,
    which nginx requires beside it): nginx tunnels an upgraded connection
    through buffers of proxy_buffer_size, one page by default.

Three loads, each run by a client process (this file, `client` role):

echo: N connections (50) each sending a 64-byte binary message and waiting
    for its echo, for T seconds: round trips/s, p50/p99 round-trip time.
download: one connection receiving 1 GiB in 1 MiB binary frames: MiB/s.
upload: one connection sending 1 GiB in masked 1 MiB frames: MiB/s.

The client and the upstream share CPU 0; the proxy under test runs alone on
CPU 1 (as bench/run.py pins). Targets run interleaved for several rounds;
the tables report medians and ratios to nginx and to direct, and the share
of a CPU the proxy used while measured. Standard library only; process
handling, pinning and tables come from bench/run.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402  (bench/ is not a package)
    GIB,
    HOST,
    MIB,
    BenchError,
    Processes,
    TransferBench,
    TransferResult,
    WrkBench,
    WrkResult,
    add_output_options,
    add_pinning_options,
    check_pinning,
    environment,
    format_ms,
    free_port,
    gatewaykit_http_config,
    in_temp_dir,
    markdown_table,
    pinned,
    progress,
    save_json,
    start_gatewaykit,
    start_nginx,
    summarise,
)

THIS = Path(__file__).resolve()

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
FIN = 0x80

ECHO_LOADS = ("echo",)
BULK_LOADS = ("download", "upload")
LOADS = ECHO_LOADS + BULK_LOADS

NGINX_WS_SERVER = """\
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://{host}:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;{extra}
        }}
    }}"""


# -- RFC 6455 frames -------------------------------------------------------------

def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame_header(first: int, length: int, mask: bytes | None = None) -> bytes:
    """A frame's header: first byte (FIN | opcode), length, optional mask."""
    bit = 0x80 if mask else 0
    if length < 126:
        head = bytes((first, bit | length))
    elif length < 65536:
        head = bytes((first, bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + length.to_bytes(8, "big")
    return head + (mask or b"")


def xor_mask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Mask or unmask a payload: one XOR of two big integers."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")


def frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A whole final frame, masked when mask is given (client to server)."""
    body = xor_mask(payload, mask) if mask else payload
    return frame_header(FIN | opcode, len(payload), mask) + body


def parse_header(buf: bytes | bytearray | memoryview, start: int = 0
                 ) -> tuple[int, int, int, bytes | None] | None:
    """
    The frame header at buf[start:]: (first byte, where the payload starts,
    payload length, mask), or None while incomplete.
    """
    have = len(buf) - start
    if have < 2:
        return None
    second = buf[start + 1]
    length = second & 0x7F
    pos = start + 2
    if length == 126:
        if have < 4:
            return None
        length = int.from_bytes(buf[pos:pos + 2], "big")
        pos += 2
    elif length == 127:
        if have < 10:
            return None
        length = int.from_bytes(buf[pos:pos + 8], "big")
        pos += 8
    mask = None
    if second & 0x80:
        if len(buf) < pos + 4:
            return None
        mask = bytes(buf[pos:pos + 4])
        pos += 4
    return buf[start], pos, length, mask


class PayloadCounter:
    """Counts payload bytes of a frame stream fed in chunks (not unmasked)."""

    def __init__(self) -> None:
        self.payload = 0
        self.frames = 0
        self.remaining = 0
        self.head = bytearray()

    def feed(self, view: memoryview | bytes) -> None:
        """Account for the next chunk of the stream."""
        i, size = 0, len(view)
        while i < size:
            if self.remaining:
                take = min(self.remaining, size - i)
                self.remaining -= take
                self.payload += take
                i += take
                continue
            before = len(self.head)
            taken = view[i:i + 14 - before]
            self.head += taken
            parsed = parse_header(self.head)
            if parsed is None:
                i += len(taken)
                continue
            _, body, length, _ = parsed
            i += body - before
            self.head.clear()
            self.frames += 1
            self.remaining = length


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read an HTTP head from sock: (head without the blank line, what follows)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed during the handshake: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def head_fields(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The first line and the (lower-cased) fields of an HTTP head."""
    first, *lines = head.split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return first, fields


def handshake(port: int, path: str, timeout: float = 30.0
              ) -> tuple[socket.socket, bytes]:
    """Open a WebSocket to path on HOST:port: the socket and bytes read past the 101."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n"
                 % (path.encode(), HOST.encode(), port, key))
    head, rest = read_head(sock)
    status, fields = head_fields(head)
    if not status.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise BenchError(f"handshake for {path} answered {status!r}")
    if fields.get(b"sec-websocket-accept") != accept_key(key):
        sock.close()
        raise BenchError(f"handshake for {path}: wrong Sec-WebSocket-Accept "
                         f"{fields.get(b'sec-websocket-accept')!r}")
    return sock, rest


def read_frame(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """Read one whole frame: (first byte, unmasked payload, bytes after it)."""
    while True:
        parsed = parse_header(buf)
        if parsed is not None and len(buf) >= parsed[1] + parsed[2]:
            first, body, length, mask = parsed
            payload = buf[body:body + length]
            return (first, xor_mask(payload, mask) if mask else payload,
                    buf[body + length:])
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise BenchError("connection closed in the middle of a frame")
        buf += chunk


# -- the upstream server -----------------------------------------------------------

class EchoConnection:
    """One WebSocket of the upstream's epoll loop: handshake, then echo."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.out = b""
        self.open = False
        self.closing = False
        self.writing = False  # EPOLLOUT asked for

    def received(self, data: bytes) -> None:
        """Echo every whole frame in the buffer (pings are ponged, close returned)."""
        buf = self.buf
        buf += data
        pos, out = 0, []
        while not self.closing:
            parsed = parse_header(buf, pos)
            if parsed is None or len(buf) < parsed[1] + parsed[2]:
                break
            first, body, length, mask = parsed
            payload = buf[body:body + length]
            if mask:
                payload = xor_mask(payload, mask)
            opcode = first & 0x0F
            if opcode == OP_PING:
                out.append(frame(OP_PONG, bytes(payload)))
            elif opcode == OP_CLOSE:
                out.append(frame(OP_CLOSE, bytes(payload)))
                self.closing = True
            elif opcode != OP_PONG:
                out.append(frame_header(first, length) + payload)
            pos = body + length
        del buf[:pos]
        if out:
            self.out += b"".join(out)


class Upstream:
    """The WebSocket server: /echo in an epoll loop, /download and /upload in threads."""

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.poll = select.epoll()
        self.poll.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, EchoConnection] = {}

    def serve(self) -> None:
        """Run forever."""
        listen_fd = self.listener.fileno()
        while True:
            for fd, events in self.poll.poll():
                if fd == listen_fd:
                    self.accept()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if events & select.EPOLLOUT:
                    self.flush(fd, conn)
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self.read(fd, conn)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = EchoConnection(sock)
            self.poll.register(sock.fileno(), select.EPOLLIN)

    def drop(self, fd: int, conn: EchoConnection) -> None:
        self.poll.unregister(fd)
        del self.conns[fd]
        conn.sock.close()

    def read(self, fd: int, conn: EchoConnection) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(fd, conn)
            return
        if conn.open:
            conn.received(data)
        else:
            conn.buf += data
            if b"\r\n\r\n" not in conn.buf:
                return
            head, _, rest = bytes(conn.buf).partition(b"\r\n\r\n")
            conn.buf.clear()
            if not self.upgrade(fd, conn, head, rest):
                return
        self.flush(fd, conn)

    def upgrade(self, fd: int, conn: EchoConnection, head: bytes,
                rest: bytes) -> bool:
        """Answer the handshake; True when the connection stays in the loop."""
        first, fields = head_fields(head)
        parts = first.split()
        key = fields.get(b"sec-websocket-key")
        if (len(parts) != 3 or parts[0] != b"GET" or key is None
                or fields.get(b"upgrade", b"").lower() != b"websocket"):
            conn.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0"
                              b"\r\nConnection: close\r\n\r\n")
            self.drop(fd, conn)
            return False
        target = urlsplit(parts[1].decode("latin-1"))
        query = {name: int(values[0])
                 for name, values in parse_qs(target.query).items()}
        answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                  % accept_key(key))
        if target.path in ("/download", "/upload"):
            self.poll.unregister(fd)
            del self.conns[fd]
            conn.sock.setblocking(True)
            conn.sock.sendall(answer)
            work = stream_out if target.path == "/download" else sink
            threading.Thread(target=work, args=(conn.sock, rest, query),
                             daemon=True).start()
            return False
        conn.open = True
        conn.out = answer
        if rest:
            conn.received(rest)
        return True

    def flush(self, fd: int, conn: EchoConnection) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.drop(fd, conn)
                return
            conn.out = conn.out[sent:]
        if conn.out:
            if not conn.writing:
                self.poll.modify(fd, select.EPOLLIN | select.EPOLLOUT)
                conn.writing = True
        elif conn.closing:
            self.drop(fd, conn)
        elif conn.writing:
            self.poll.modify(fd, select.EPOLLIN)
            conn.writing = False


def linger(sock: socket.socket) -> None:
    """Wait (up to a minute) for the client to close, then close."""
    try:
        sock.settimeout(60)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


def stream_out(sock: socket.socket, rest: bytes, query: dict[str, int]) -> None:
    """/download?bytes=N&frame=F: N payload bytes in unmasked binary frames of F."""
    total, size = query.get("bytes", MIB), query.get("frame", MIB)
    try:
        whole = memoryview(frame_header(FIN | OP_BINARY, size) + bytes(size))
        full, left = divmod(total, size)
        for _ in range(full):
            sock.sendall(whole)
        if left:
            sock.sendall(frame_header(FIN | OP_BINARY, left) + bytes(left))
    except OSError:
        sock.close()
        return
    linger(sock)


def sink(sock: socket.socket, rest: bytes, query: dict[str, int]) -> None:
    """/upload?bytes=N: count N payload bytes, then answer a text frame with the count."""
    total = query.get("bytes", MIB)
    counter = PayloadCounter()
    counter.feed(rest)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while counter.payload < total:
            size = sock.recv_into(buf)
            if not size:
                sock.close()
                return
            counter.feed(view[:size])
        sock.sendall(frame(OP_TEXT, b"%d" % counter.payload))
    except OSError:
        sock.close()
        return
    linger(sock)


def upstream_main(argv: list[str]) -> int:
    """The `upstream` role."""
    parser = argparse.ArgumentParser(prog="websocket.py upstream")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    Upstream(args.port).serve()
    return 0


# -- the client --------------------------------------------------------------------

def say(line: str) -> None:
    """A line for the benchmark process reading our stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def percentile(ordered: list[int], share: float) -> float:
    """The share-th value of an ordered list (0.0 when empty)."""
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(share * len(ordered)))])


def echo_load(port: int, connections: int, size: int,
              duration: float) -> dict[str, Any]:
    """
    Ping-pong on `connections` WebSockets for `duration` seconds: each sends a
    masked binary message of `size` bytes and sends the next when the echo is
    back (and equal). Latencies in microseconds.
    """
    payload = os.urandom(size)
    mask = os.urandom(4)
    outgoing = frame(OP_BINARY, payload, mask)
    expected = frame(OP_BINARY, payload)
    whole = len(expected)
    socks = []
    for _ in range(connections):
        sock, rest = handshake(port, "/echo")
        if rest:
            raise BenchError(f"unexpected bytes after the handshake: {rest[:50]!r}")
        sock.setblocking(False)
        socks.append(sock)
    poll = select.epoll()
    index = {}
    for number, sock in enumerate(socks):
        poll.register(sock.fileno(), select.EPOLLIN)
        index[sock.fileno()] = number
    pending = [b""] * connections
    sent_at = [0] * connections
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    clock = time.perf_counter_ns
    say("GO")
    start = clock()
    end = start + int(duration * 1e9)
    for number, sock in enumerate(socks):
        sent_at[number] = clock()
        sock.send(outgoing)
    while True:
        left = (end - clock()) / 1e9
        if left <= 0:
            break
        for fd, _ in poll.poll(left):
            number = index[fd]
            sock = socks[number]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors["read"] += 1
                poll.unregister(fd)
                continue
            if pending[number]:
                data = pending[number] + data
            if len(data) < whole:
                pending[number] = data
                continue
            now = clock()
            pending[number] = b""
            if data != expected:
                errors["status"] += 1
            elif now <= end:
                latencies.append(now - sent_at[number])
            if now < end:
                sent_at[number] = now
                sock.send(outgoing)
    say("DONE")
    # A connection still waiting for an echo sent over a second ago is stuck.
    errors["timeout"] += sum(end - sent > 1e9 for sent in sent_at)
    for sock in socks:
        sock.close()
    latencies.sort()
    micros = [lat // 1000 for lat in latencies]
    return {
        "requests": len(latencies), "duration_us": duration * 1e6,
        "bytes": len(latencies) * (len(outgoing) + whole),
        "p50_us": percentile(micros, 0.50), "p90_us": percentile(micros, 0.90),
        "p99_us": percentile(micros, 0.99), "max_us": percentile(micros, 1.0),
        "mean_us": sum(micros) / len(micros) if micros else 0.0,
        **{f"err_{name}": errors[name]
           for name in ("connect", "read", "write", "status", "timeout")},
    }


def download_one(port: int, total: int, size: int) -> int:
    """Receive total payload bytes in frames of size; the count received."""
    sock, rest = handshake(port, f"/download?bytes={total}&frame={size}")
    counter = PayloadCounter()
    counter.feed(rest)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with sock:
        while counter.payload < total:
            got = sock.recv_into(buf)
            if not got:
                break
            counter.feed(view[:got])
    return counter.payload


def upload_one(port: int, total: int, size: int) -> int:
    """Send total payload bytes in masked frames of size; the count the server acknowledged."""
    sock, rest = handshake(port, f"/upload?bytes={total}")
    mask = os.urandom(4)
    with sock:
        whole = memoryview(frame(OP_BINARY, bytes(size), mask))
        full, left = divmod(total, size)
        for _ in range(full):
            sock.sendall(whole)
        if left:
            sock.sendall(frame(OP_BINARY, bytes(left), mask))
        first, payload, _ = read_frame(sock, rest)
        if first & 0x0F != OP_TEXT:
            raise BenchError(f"upload: expected a text frame, got {first:#x}")
        return int(payload)


def bulk_load(port: int, direction: str, connections: int, total: int,
              size: int) -> dict[str, Any]:
    """
    `connections` parallel downloads (or uploads) of total / connections
    bytes each, one thread each (blocking sockets: the copies run without
    the GIL). Seconds from the first handshake to the last byte.
    """
    each = total // connections
    work = download_one if direction == "download" else upload_one
    outcomes: list[Any] = [None] * connections
    gate = threading.Barrier(connections + 1)
    clock = time.perf_counter

    def one(number: int) -> None:
        gate.wait()
        began = clock()
        try:
            outcomes[number] = (work(port, each, size), began, clock())
        except (OSError, BenchError) as exc:
            outcomes[number] = exc

    threads = [threading.Thread(target=one, args=(number,))
               for number in range(connections)]
    for thread in threads:
        thread.start()
    say("GO")
    gate.wait()
    for thread in threads:
        thread.join()
    say("DONE")
    done = [item for item in outcomes if isinstance(item, tuple)]
    failed = [str(item) for item in outcomes if not isinstance(item, tuple)]
    seconds = (max(end for _, _, end in done) - min(start for _, start, _ in done)
               if done else 0.0)
    return {"bytes": sum(count for count, _, _ in done), "seconds": seconds,
            "expected_bytes": each, "downloads": connections,
            "times": [end - start for _, start, end in done],
            "errors": {"failed": len(failed),
                       "size": sum(count != each for count, _, _ in done)},
            "failures": failed}


def check(port: int) -> dict[str, Any]:
    """
    One of everything through a target, checked: echoes of every length
    encoding, a ping, a close, a small download and upload.
    """
    sock, rest = handshake(port, "/echo")
    mask = os.urandom(4)
    with sock:
        for size in (0, 1, 125, 126, 65535, 65536, MIB + 3):
            payload = os.urandom(size)
            sock.sendall(frame(OP_BINARY, payload, mask))
            first, echoed, rest = read_frame(sock, rest)
            if first != FIN | OP_BINARY or echoed != payload:
                raise BenchError(f"echo of {size} bytes came back wrong")
        sock.sendall(frame(OP_PING, b"ping", mask))
        first, echoed, rest = read_frame(sock, rest)
        if first != FIN | OP_PONG or echoed != b"ping":
            raise BenchError("no pong for a ping")
        close = (1000).to_bytes(2, "big") + b"bye"
        sock.sendall(frame(OP_CLOSE, close, mask))
        first, echoed, rest = read_frame(sock, rest)
        if first != FIN | OP_CLOSE or echoed != close:
            raise BenchError("the close frame was not returned")
    size = 3 * MIB + 1
    if download_one(port, size, MIB) != size:
        raise BenchError("download came short")
    if upload_one(port, size, MIB) != size:
        raise BenchError("upload was not acknowledged in full")
    return {"ok": True}


def client_main(argv: list[str]) -> int:
    """The `client` role: one load (or the check), result as one JSON line."""
    parser = argparse.ArgumentParser(prog="websocket.py client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--load", choices=(*LOADS, "check"), required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--bytes", type=int, default=GIB)
    parser.add_argument("--frame", type=int, default=MIB)
    args = parser.parse_args(argv)
    try:
        if args.load == "check":
            result = check(args.port)
        elif args.load == "echo":
            result = echo_load(args.port, args.connections, args.size,
                               args.duration)
        else:
            result = bulk_load(args.port, args.load, args.connections,
                               args.bytes, args.frame)
    except (OSError, BenchError) as exc:
        print(f"client: {exc!r}", file=sys.stderr)
        return 1
    say("WS_RESULT " + json.dumps(result))
    return 0


# -- targets -----------------------------------------------------------------------

Starter = Callable[[Processes, argparse.Namespace, Path, int], int]


def use_upstream(procs: Processes, args: argparse.Namespace, tmp: Path,
                 upstream_port: int) -> int:
    """direct: no proxy."""
    return upstream_port


def nginx_ws(name: str, extra: str = "") -> Starter:
    """A starter for nginx proxying WebSockets (one worker, as run.py's)."""
    def start(procs: Processes, args: argparse.Namespace, tmp: Path,
              upstream_port: int) -> int:
        port = free_port()
        server = NGINX_WS_SERVER.format(host=HOST, port=port,
                                        upstream_port=upstream_port,
                                        extra=extra)
        start_nginx(procs, name, server, port, args.proxy_cpu, tmp / name)
        return port
    return start


def start_gatewaykit_ws(procs: Processes, args: argparse.Namespace,
                        tmp: Path, upstream_port: int) -> int:
    """gatewaykit: run.py's one-route proxy config with websocket: true."""
    def config(port: int) -> dict:
        made = gatewaykit_http_config(port, [upstream_port])
        made["routes"][0]["websocket"] = True
        return made
    return start_gatewaykit(procs, args, tmp, "gatewaykit", config)


TARGETS: dict[str, Starter] = {
    "gatewaykit": start_gatewaykit_ws,
    "nginx": nginx_ws("nginx"),
    "direct": use_upstream,
    # proxy_buffers only because nginx wants them above proxy_buffer_size.
    "nginx-64k": nginx_ws("nginx-64k", "\n            proxy_buffer_size 64k;"
                          "\n            proxy_buffers 4 64k;"),
}
DEFAULT_TARGETS = ("gatewaykit", "nginx", "nginx-64k", "direct")
REFERENCES = ("nginx", "direct")


# -- measuring ---------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by the processes of a group."""
    if pgid is None:
        return 0.0
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


@dataclass
class EchoResult(WrkResult):
    """One echo run; proxy_cpu: share of a CPU the proxy used (-1: no proxy)."""

    proxy_cpu: float = -1.0


@dataclass
class BulkResult(TransferResult):
    """One bulk transfer; proxy_cpu as in EchoResult."""

    proxy_cpu: float = -1.0


def cpu_cell(row: dict) -> str:
    return "–" if row["proxy_cpu"] < 0 else f"{row['proxy_cpu']:.0%}"


class EchoTable(WrkBench):
    """Columns of the echo table (run.py's summarise and markdown_table)."""

    loads: dict[str, str] = {}
    load_header = "load"
    fields = ("p50_us", "p99_us", "proxy_cpu")
    columns = (("round trips/s (median)", lambda row: f"{row['rps']:,.0f}"),
               ("p50", lambda row: format_ms(row["p50_us"])),
               ("p99", lambda row: format_ms(row["p99_us"])),
               ("proxy CPU", cpu_cell))


class BulkTable(TransferBench):
    """Columns of the bulk table."""

    loads: dict[str, str] = {}
    load_header = "load"
    fields = ("seconds", "proxy_cpu")
    columns = (*TransferBench.columns, ("proxy CPU", cpu_cell))


class Client:
    """Runs the client role on the client CPU and reads its result."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.err = tmp / "client.err"

    def run(self, port: int, load: str, pgid: int | None,
            extra: tuple[str, ...] = ()) -> tuple[dict, float]:
        """The client's JSON result and the proxy's CPU share between GO and DONE."""
        argv = [sys.executable, str(THIS), "client", "--port", str(port),
                "--load", load, *extra]
        with open(self.err, "w") as err:
            proc = subprocess.Popen(pinned(self.args.client_cpu, argv),
                                    stdout=subprocess.PIPE, stderr=err,
                                    text=True)
        result, marks = None, {}
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line in ("GO", "DONE"):
                marks[line] = (time.monotonic(), group_cpu(pgid))
            elif line.startswith("WS_RESULT "):
                result = json.loads(line.split(" ", 1)[1])
        proc.wait()
        if proc.returncode != 0 or result is None:
            raise BenchError(f"client {load} on port {port} failed "
                             f"(exit {proc.returncode}): "
                             f"{self.err.read_text()[-2000:]}")
        share = -1.0
        if pgid is not None and len(marks) == 2:
            wall = marks["DONE"][0] - marks["GO"][0]
            share = (marks["DONE"][1] - marks["GO"][1]) / wall if wall else 0.0
        return result, share

    def measure(self, target: str, port: int, pgid: int | None, load: str,
                round_no: int, warmup: bool = False) -> Any:
        args = self.args
        if load == "echo":
            duration = args.warmup if warmup else args.duration
            raw, share = self.run(port, load, pgid, (
                "--connections", str(args.connections),
                "--size", str(args.message_size),
                "--duration", str(duration)))
            result = WrkBench.result(target, load, round_no, args.connections,
                                     raw)
            return EchoResult(**asdict(result), proxy_cpu=share)
        total = args.bulk_bytes // (8 if warmup else 1)
        raw, share = self.run(port, load, pgid, (
            "--connections", str(args.bulk_connections),
            "--bytes", str(total), "--frame", str(args.frame_size)))
        if raw["failures"]:
            progress(f"{target} {load}: {raw['failures']}")
        seconds = raw["seconds"]
        return BulkResult(
            target=target, size=load, round=round_no,
            downloads=raw["downloads"], expected_bytes=raw["expected_bytes"],
            bytes=raw["bytes"], seconds=seconds,
            mib_s=raw["bytes"] / MIB / seconds if seconds else 0.0,
            times=raw["times"], errors=raw["errors"], proxy_cpu=share)


def describe(result: Any) -> str:
    """One progress line's worth of a result."""
    cpu = ("" if result.proxy_cpu < 0 else f"  proxy CPU {result.proxy_cpu:.0%}")
    if isinstance(result, EchoResult):
        return (f"{result.rps:>10,.0f} round trips/s  p50 "
                f"{format_ms(result.p50_us)}  p99 {format_ms(result.p99_us)}"
                f"  errors {sum(result.errors.values())}{cpu}")
    return result.describe() + cpu


def loadavg() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def run(args: argparse.Namespace, tmp: Path) -> list:
    """Start the upstream and every target, check each, run the rounds."""
    procs = Processes(tmp)
    client = Client(args, tmp)
    results = []
    width = max(len(target) for target in args.targets)
    try:
        upstream_port = free_port()
        procs.start("upstream-ws", [sys.executable, str(THIS), "upstream",
                                    "--port", str(upstream_port)],
                    upstream_port, args.client_cpu)
        ports, groups = {}, {}
        for target in args.targets:
            port = TARGETS[target](procs, args, tmp, upstream_port)
            ports[target] = port
            groups[target] = (None if port == upstream_port
                              else procs.running[-1].pid)
            client.run(port, "check", None)
            progress(f"{target}: listening on {HOST}:{port}, checked")
        if args.warmup > 0:
            progress("warming up")
            for load in args.loads:
                for target in args.targets:
                    client.measure(target, ports[target], groups[target], load,
                                   0, warmup=True)
        for round_no in range(1, args.rounds + 1):
            for load in args.loads:
                for target in args.targets:
                    result = client.measure(target, ports[target],
                                            groups[target], load, round_no)
                    results.append(result)
                    progress(f"round {round_no}/{args.rounds} {load:>8} "
                             f"{target:>{width}}: {describe(result)}")
    finally:
        procs.stop_all()
    return results


def tables(args: argparse.Namespace, results: list) -> tuple[str, list[dict]]:
    """The Markdown tables (echo, bulk) and the summary rows."""
    EchoTable.loads = {"echo": f"echo {args.message_size} B × "
                               f"{args.connections}"}
    size = (f"{args.bulk_bytes // GIB} GiB" if args.bulk_bytes % GIB == 0
            else f"{args.bulk_bytes // MIB} MiB")
    streams = (f" ({args.bulk_connections} connections)"
               if args.bulk_connections > 1 else "")
    BulkTable.loads = {"download": f"download {size}{streams}",
                       "upload": f"upload {size}{streams}"}
    references = tuple(ref for ref in REFERENCES if ref in args.targets)
    out, rows = [], []
    for table, loads in ((EchoTable, ECHO_LOADS), (BulkTable, BULK_LOADS)):
        chosen = [load for load in args.loads if load in loads]
        if not chosen:
            continue
        kind = SimpleNamespace(bench=table, references=references)
        summary = summarise(results, kind, args.targets, chosen)
        rows += summary
        out.append(markdown_table(summary, kind))
    return "\n\n".join(out), rows


# -- command line ------------------------------------------------------------------

def csv_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--targets", type=csv_list,
                        default=list(DEFAULT_TARGETS),
                        help="comma-separated, in run order, of "
                        + ",".join(TARGETS))
    parser.add_argument("--loads", type=csv_list, default=list(LOADS),
                        help="comma-separated, of " + ",".join(LOADS))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over all targets")
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds per echo run")
    parser.add_argument("--connections", type=int, default=50,
                        help="echo: connections, one message in flight each")
    parser.add_argument("--message-size", type=int, default=64,
                        help="echo: bytes per message")
    parser.add_argument("--bulk-bytes", type=int, default=GIB,
                        help="download/upload: payload bytes per run")
    parser.add_argument("--bulk-connections", type=int, default=1,
                        help="download/upload: parallel connections sharing "
                        "--bulk-bytes")
    parser.add_argument("--frame-size", type=int, default=MIB,
                        help="download/upload: payload bytes per frame")
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of unrecorded echo per target before "
                        "round 1, and one unrecorded bulk run of an eighth "
                        "of --bulk-bytes (0: none)")
    parser.add_argument("--gatewaykit-cmd", default=None,
                        help="as bench/run.py's: {config} is the generated "
                        "YAML, {python} this interpreter")
    add_pinning_options(parser, "the client and the upstream")
    add_output_options(parser)
    args = parser.parse_args(argv)
    for option, names, allowed in (("--targets", args.targets, TARGETS),
                                   ("--loads", args.loads, LOADS)):
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            parser.error(f"{option}: choose from {','.join(allowed)}")
    args.targets = list(dict.fromkeys(args.targets))
    args.loads = list(dict.fromkeys(args.loads))
    check_pinning(parser, args)
    if args.rounds < 1 or args.connections < 1 or args.bulk_connections < 1:
        parser.error("--rounds and the connection counts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["upstream"]:
        return upstream_main(argv[1:])
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = parse_args(argv)
    tools = ("nginx", "taskset") if not args.no_pin else ("nginx",)
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        progress(f"missing tools: {', '.join(missing)}")
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    facts = environment(("nginx",)) if args.json else {}
    load_start = loadavg()
    progress(f"load average at start: {load_start}")
    outcome, status = in_temp_dir("gatewaykit-bench-ws-", args.keep_tmp,
                                  lambda tmp: run(args, tmp))
    if status:
        return status
    results = outcome
    load_end = loadavg()
    progress(f"load average at end: {load_end}")
    text, rows = tables(args, results)
    print(text)
    print(f"\nload average (1, 5, 15 min): {load_start} at the start, "
          f"{load_end} at the end")
    if args.json:
        save_json(args.json, {
            "environment": {**facts, "loadavg_end": load_end},
            "settings": {key: (str(value) if isinstance(value, Path) else value)
                         for key, value in vars(args).items()},
            "summary": rows,
            "runs": [asdict(result) for result in results],
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
