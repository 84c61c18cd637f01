#!/usr/bin/env python3
"""
Soak test: gatewaykit under mixed traffic for a bounded time; is memory flat, any errors?

One gatewaykit (twistd, as bench/run.py starts it) with, on loopback only:

plain: a proxied route (Host plain.soak) to run.py's nginx upstream (/1k).
cached: the same behind a `cache` policy (Host cached.soak); the upstream
    says max-age=3600, wrk asks for --cache-keys URLs at random and the cache
    holds fewer (--cache-bytes), so it hits, misses and evicts all the time.
limited: the same behind a `rate_limit` (Host limited.soak, key [ip],
    --limit per second) kept in a redis-server started here (gateway.redis,
    on_error: closed); it is offered more, so 429s are expected.
websocket: a `websocket: true` route (/echo) to bench/websocket.py's echo
    upstream.
tunnel: a `tcp` listener to a TCP echo server (this file, --serve-tcp-echo).
admin: the admin API, read for /metrics.

For --duration seconds all of them are driven at once: one wrk per HTTP
route (-t1, --wrk-connections each, paced by a Lua delay() to about the
route's rate), --ws-clients WebSockets exchanging random messages (and
pings) for the whole run, --ws-churners opening a WebSocket, exchanging a
few messages and closing it again and again, --tcp-clients opening tunnels,
verifying random bytes echoed, half-closing. Every --sample seconds the
gateway's RSS and open fds (its process and any children) and its /metrics
counters are recorded. At the end: a table of samples, the memory verdict,
counts by kind and every unexplained error (anything but the expected 429s).
Exit status 0: memory flat and no unexplained error; 1: not; 2: could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import http.client
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle import rss_bytes  # noqa: E402  (bench/ is not a package)
from policies import start_redis  # noqa: E402
from run import (  # noqa: E402
    HOST,
    MIB,
    SIZES,
    BenchError,
    Processes,
    add_output_options,
    free_port,
    gatewaykit_http_config,
    in_temp_dir,
    progress,
    save_json,
    start_gatewaykit,
    start_upstream,
    tail,
    with_processes,
)
from websocket import (  # noqa: E402
    FIN,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    accept_key,
    frame,
    head_fields,
    xor_mask,
)
from websocket import THIS as WEBSOCKET_PY  # noqa: E402

THIS = Path(__file__).resolve()
TIMEOUT = 10.0  # seconds any one client step may take before it is an error
WS_PATH = "/echo"
CLOSE_PAYLOAD = (1000).to_bytes(2, "big") + b"soak done"
LOG_TROUBLE = re.compile(r"Traceback|Unhandled")


@dataclass(frozen=True)
class HttpLoad:
    """One wrk-driven HTTP route: its Host, offered rate and the statuses expected."""

    route: str
    host: str
    rate: float
    expected: frozenset[int]


# One wrk per HTTP route. Globals `statuses` and `caches` live in the
# thread's Lua state; done() (in the main state) reads them with thread:get.
WRK_SCRIPT = string.Template("""\
local threads = {}
local prepared = {}
statuses = {}
caches = {}

setup = function(thread)
   table.insert(threads, thread)
end

init = function(args)
   for i = 1, $keys do
      prepared[i] = wrk.format("GET", "/1k?k=" .. i, {["Host"] = "$host"})
   end
end

request = function()
   return prepared[math.random(#prepared)]
end

delay = function()
   return $delay_ms
end

response = function(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   for name, value in pairs(headers) do
      if string.lower(name) == "x-cache" then
         caches[value] = (caches[value] or 0) + 1
      end
   end
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "SOAK_WRK requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f"
      .. " err_connect=%.0f err_read=%.0f err_write=%.0f err_timeout=%.0f\\n",
      summary.requests, summary.duration, latency:percentile(50),
      latency:percentile(99), e.connect, e.read, e.write, e.timeout))
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         io.write(string.format("SOAK_STATUS %s %.0f\\n", status, count))
      end
      for value, count in pairs(thread:get("caches")) do
         io.write(string.format("SOAK_CACHE %s %.0f\\n", value, count))
      end
   end
end
""")


class Unexpected(Exception):
    """A client saw something wrong; the message is the error's kind."""


def error_kind(exc: BaseException) -> str:
    """A short, countable name for what went wrong."""
    if isinstance(exc, Unexpected):
        return str(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed early"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"socket error {errno.errorcode.get(exc.errno, exc.errno)}"
    return type(exc).__name__


# -- the TCP echo upstream (a child process of this file) ------------------------------


async def serve_tcp_echo(port: int) -> None:
    """Echo every byte back (with backpressure); close after the client's EOF."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- starting everything ---------------------------------------------------------------


@dataclass
class Ports:
    """Where everything listens."""

    redis: int = 0
    http: int = 0  # the nginx upstream
    websocket: int = 0  # the WebSocket echo upstream
    echo: int = 0  # the TCP echo upstream
    admin: int = 0
    tunnel: int = 0  # the gateway's tcp listener
    web: int = 0  # the gateway's http listener


def gateway_config(args: argparse.Namespace, ports: Ports, web: int) -> dict:
    """run.py's one-route config grown to every route, listener and policy the soak drives."""
    config = gatewaykit_http_config(web, [ports.http])
    config["gateway"]["admin"] = {"bind": f"{HOST}:{ports.admin}"}
    config["gateway"]["redis"] = {"url": f"redis://{HOST}:{ports.redis}/0",
                                  "timeout": args.redis_timeout, "on_error": "closed"}
    config["listeners"]["tunnel"] = {"protocol": "tcp", "bind": f"{HOST}:{ports.tunnel}",
                                     "upstream": "echo"}
    config["upstreams"]["websocket"] = {"targets": [f"{HOST}:{ports.websocket}"]}
    config["upstreams"]["echo"] = {"targets": [f"{HOST}:{ports.echo}"]}
    config["policies"] = {
        "cache": {"type": "cache", "max_bytes": args.cache_bytes},
        "limit": {"type": "rate_limit", "key": ["ip"], "limit": args.limit, "window": "1s"},
    }
    config["routes"] = [
        {"name": "plain", "match": {"hosts": ["plain.soak"], "path_prefix": "/"},
         "upstream": "bench"},
        {"name": "cached", "match": {"hosts": ["cached.soak"], "path_prefix": "/"},
         "policies": ["cache"], "upstream": "bench"},
        {"name": "limited", "match": {"hosts": ["limited.soak"], "path_prefix": "/"},
         "policies": ["limit"], "upstream": "bench"},
        {"name": "websocket", "match": {"path_prefix": WS_PATH}, "upstream": "websocket",
         "websocket": True},
    ]
    return config


def start_servers(args: argparse.Namespace, procs: Processes,
                  tmp: Path) -> tuple[Ports, dict[str, subprocess.Popen]]:
    """Redis, the three upstreams and gatewaykit; their ports and processes by name."""
    ports = Ports()
    servers: dict[str, subprocess.Popen] = {}
    ports.redis = start_redis(procs, args, tmp)
    servers["redis"] = procs.running[-1]
    ports.http = start_upstream(procs, args, tmp, 1, {},
                                '\n        add_header Cache-Control "max-age=3600";')[0]
    servers["upstream-nginx"] = procs.running[-1]
    ports.websocket = free_port()
    servers["upstream-websocket"] = procs.start(
        "upstream-websocket",
        [sys.executable, str(WEBSOCKET_PY), "upstream", "--port", str(ports.websocket)],
        ports.websocket, None)
    ports.echo = free_port()
    servers["upstream-echo"] = procs.start(
        "upstream-echo", [sys.executable, str(THIS), "--serve-tcp-echo", str(ports.echo)],
        ports.echo, None)
    ports.admin, ports.tunnel = free_port(), free_port()
    ports.web = start_gatewaykit(procs, args, tmp, "gatewaykit",
                                 lambda web: gateway_config(args, ports, web))
    servers["gatewaykit"] = procs.running[-1]
    return ports, servers


# -- reading the gateway ---------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (worker processes, if any)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                parent = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_and_fds(pid: int) -> tuple[int, int]:
    """Summed VmRSS (bytes) and open file descriptors of pid's process tree."""
    rss = fds = 0
    for member in process_tree(pid):
        try:
            rss += rss_bytes(member)
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except (OSError, BenchError):
            continue  # exited meanwhile
    return rss, fds


METRIC_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def fetch_metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics on the admin API: family -> [(labels, value)]."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT, source_address=(HOST, 0))
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"/metrics answered {response.status}")
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            labels = dict(LABEL.findall(match.group(2) or ""))
            families.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return families


def total(families: dict, name: str, **wanted: str) -> float:
    """The sum of a family's series whose labels include wanted."""
    return sum(value for labels, value in families.get(name, [])
               if all(labels.get(key) == want for key, want in wanted.items()))


def by_label(families: dict, name: str, *keys: str) -> dict[str, int]:
    """A family's values summed by the given labels, joined with '/'."""
    sums: Counter[str] = Counter()
    for labels, value in families.get(name, []):
        sums["/".join(labels.get(key, "") for key in keys)] += int(value)
    return dict(sorted(sums.items()))


def log_trouble(tmp: Path) -> list[str]:
    """The gateway log's Traceback / Unhandled lines (twistd -n logs to its output)."""
    lines = []
    for log in (tmp / "gatewaykit.log", tmp / "gatewaykit" / "twistd.log"):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        lines += [line for line in text.splitlines() if LOG_TROUBLE.search(line)]
    return lines


# -- clients ---------------------------------------------------------------------------


@dataclass
class Tally:
    """What the WebSocket and TCP clients did and saw."""

    ws_opened: int = 0
    ws_closed: int = 0  # with a close handshake
    ws_echoed: int = 0
    ws_bytes: int = 0
    ws_pongs: int = 0
    ws_mismatches: int = 0
    tcp_opened: int = 0
    tcp_closed: int = 0  # half-closed and the echo's EOF seen
    tcp_bytes: int = 0  # echoed and equal
    tcp_mismatches: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def counters(self) -> dict[str, int]:
        """Every count but the errors."""
        return {key: value for key, value in asdict(self).items() if key != "errors"}


async def open_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from 127.0.0.1 to 127.0.0.1:port."""
    return await asyncio.open_connection(HOST, port, local_addr=(HOST, 0))


async def ws_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket to WS_PATH through the gateway, its handshake checked."""
    reader, writer = await open_connection(port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n"
                 % (WS_PATH.encode(), HOST.encode(), port, key))
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status, fields = head_fields(head[:-4])
        if not status.startswith(b"HTTP/1.1 101"):
            raise Unexpected(f"handshake answered {status[9:12].decode(errors='replace')}")
        if fields.get(b"sec-websocket-accept") != accept_key(key):
            raise Unexpected("wrong Sec-WebSocket-Accept")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def ws_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One whole frame: (first byte, unmasked payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if second & 0x80 else None
    payload = await reader.readexactly(length)
    return first, xor_mask(payload, mask) if mask else payload


async def ws_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      rng: random.Random, max_size: int, tally: Tally) -> None:
    """One random binary message (one in 20: a ping), its echo checked."""
    if rng.random() < 0.05:
        opcode, reply, payload = OP_PING, OP_PONG, rng.randbytes(8)
    else:
        opcode = reply = OP_BINARY
        payload = rng.randbytes(rng.randint(1, max_size))
    writer.write(frame(opcode, payload, os.urandom(4)))
    first, echoed = await ws_read(reader)
    if first != FIN | reply or echoed != payload:
        tally.ws_mismatches += 1
        raise Unexpected("echo mismatch")
    if opcode == OP_PING:
        tally.ws_pongs += 1
    else:
        tally.ws_echoed += 1
        tally.ws_bytes += len(payload)


async def ws_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The close handshake: our close frame returned, then the connection's end."""
    writer.write(frame(OP_CLOSE, CLOSE_PAYLOAD, os.urandom(4)))
    first, echoed = await ws_read(reader)
    if first != FIN | OP_CLOSE or echoed != CLOSE_PAYLOAD:
        raise Unexpected("close frame not returned")
    if await reader.read():
        raise Unexpected("bytes after the close frame")


async def websocket_client(port: int, tally: Tally, stop: asyncio.Event, rng: random.Random,
                           args: argparse.Namespace, churn: bool) -> None:
    """
    Messages on one WebSocket until stop (churn: 1-5 messages per WebSocket,
    then close and open another), reconnecting after an error.
    """
    name = "ws churn" if churn else "ws"
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.wait_for(ws_open(port), TIMEOUT)
            tally.ws_opened += 1
            left = rng.randint(1, 5) if churn else -1
            while left and not stop.is_set():
                await asyncio.wait_for(
                    ws_exchange(reader, writer, rng, args.ws_max_message, tally), TIMEOUT)
                left -= 1
                await asyncio.sleep(args.ws_interval)
            await asyncio.wait_for(ws_close(reader, writer), TIMEOUT)
            tally.ws_closed += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, Unexpected) as exc:
            tally.errors[f"{name}: {error_kind(exc)}"] += 1
            await asyncio.sleep(1.0)
        finally:
            if writer is not None:
                writer.close()


async def tcp_client(port: int, tally: Tally, stop: asyncio.Event, rng: random.Random,
                     args: argparse.Namespace) -> None:
    """Tunnels: 1-20 random chunks echoed and compared, then half-close and EOF, again."""
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.wait_for(open_connection(port), TIMEOUT)
            tally.tcp_opened += 1
            for _ in range(rng.randint(1, 20)):
                payload = rng.randbytes(rng.randint(1, args.tcp_max_chunk))
                writer.write(payload)
                echoed = await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
                if echoed != payload:
                    tally.tcp_mismatches += 1
                    raise Unexpected("data mismatch")
                tally.tcp_bytes += len(payload)
                if stop.is_set():
                    break
                await asyncio.sleep(args.tcp_interval)
            writer.write_eof()
            if await asyncio.wait_for(reader.read(), TIMEOUT):
                raise Unexpected("bytes after the echo")
            tally.tcp_closed += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, Unexpected) as exc:
            tally.errors[f"tcp: {error_kind(exc)}"] += 1
            await asyncio.sleep(1.0)
        finally:
            if writer is not None:
                writer.close()


# -- wrk -------------------------------------------------------------------------------


def http_loads(args: argparse.Namespace) -> list[HttpLoad]:
    return [HttpLoad("plain", "plain.soak", args.plain_rate, frozenset({200})),
            HttpLoad("cached", "cached.soak", args.cached_rate, frozenset({200})),
            HttpLoad("limited", "limited.soak", args.limited_rate, frozenset({200, 429}))]


def start_wrk(procs: Processes, args: argparse.Namespace, tmp: Path, port: int,
              load: HttpLoad) -> tuple[subprocess.Popen, Path]:
    """One wrk on load's route for the whole run, paced to about its rate; its output file."""
    delay_ms = max(0, round(1000 * args.wrk_connections / load.rate))
    keys = args.cache_keys if load.route == "cached" else 1
    script = tmp / f"wrk-{load.route}.lua"
    script.write_text(WRK_SCRIPT.substitute(keys=keys, host=load.host, delay_ms=delay_ms))
    argv = ["wrk", "-t1", f"-c{args.wrk_connections}", f"-d{round(args.duration)}s",
            "--timeout", f"{TIMEOUT:g}s", "-s", str(script), f"http://{HOST}:{port}/"]
    output = tmp / f"wrk-{load.route}.log"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    procs.running.append(proc)  # stopped with everything else
    return proc, output


@dataclass
class WrkOutcome:
    """What one wrk reported."""

    route: str
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    reported: bool = False


def read_wrk(route: str, output: Path) -> WrkOutcome:
    """Parse one wrk's done() lines."""
    outcome = WrkOutcome(route)
    statuses: Counter[int] = Counter()
    cache: Counter[str] = Counter()
    for line in output.read_text(errors="replace").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "SOAK_WRK":
            values = {key: float(value) for key, value in
                      (word.split("=") for word in words[1:])}
            outcome.requests = int(values["requests"])
            outcome.seconds = values["duration_us"] / 1e6
            outcome.p50_ms, outcome.p99_ms = values["p50_us"] / 1e3, values["p99_us"] / 1e3
            outcome.errors = {key[4:]: int(value) for key, value in values.items()
                              if key.startswith("err_")}
            outcome.reported = True
        elif words[0] == "SOAK_STATUS":
            statuses[int(words[1])] += int(float(words[2]))
        elif words[0] == "SOAK_CACHE":
            cache[words[1]] += int(float(words[2]))
    outcome.statuses, outcome.cache = dict(statuses), dict(cache)
    return outcome


# -- checks before the load ------------------------------------------------------------


def fetch(port: int, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET with a Host: status, lower-cased fields, body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT, source_address=(HOST, 0))
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET {path} (Host {host}) failed: {exc!r}") from exc
    finally:
        conn.close()


async def preflight(ports: Ports) -> None:
    """One of everything, checked, so the counters below mean what they say."""
    for host in ("plain.soak", "limited.soak"):
        status, fields, body = fetch(ports.web, host, "/1k")
        if status != 200 or len(body) != SIZES["1k"]:
            raise BenchError(f"{host}: GET /1k gave {status} with {len(body)} bytes")
        if host == "limited.soak" and "ratelimit-policy" not in fields:
            raise BenchError("limited.soak: no RateLimit-Policy field: is the policy on?")
    seen = [fetch(ports.web, "cached.soak", "/1k?preflight")[1].get("x-cache")
            for _ in range(2)]
    if seen != ["MISS", "HIT"]:
        raise BenchError(f"cached.soak: X-Cache {seen}, expected MISS then HIT")
    tally = Tally()
    reader, writer = await asyncio.wait_for(ws_open(ports.web), TIMEOUT)
    try:
        await asyncio.wait_for(ws_exchange(reader, writer, random.Random(0), 1000, tally),
                               TIMEOUT)
        await asyncio.wait_for(ws_close(reader, writer), TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, Unexpected) as exc:
        raise BenchError(f"websocket check: {error_kind(exc)}") from exc
    finally:
        writer.close()
    reader, writer = await asyncio.wait_for(open_connection(ports.tunnel), TIMEOUT)
    try:
        writer.write(b"soak" * 1000)
        echoed = await asyncio.wait_for(reader.readexactly(4000), TIMEOUT)
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        raise BenchError(f"tcp check: {error_kind(exc)}") from exc
    finally:
        writer.close()
    if echoed != b"soak" * 1000 or rest:
        raise BenchError("tcp check: the echo came back wrong")
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            families = fetch_metrics(ports.admin)
            break
        except (OSError, http.client.HTTPException, BenchError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    if not total(families, "gatewaykit_requests_total", route="cached"):
        raise BenchError("/metrics counted no request on the cached route")


# -- the run ---------------------------------------------------------------------------


@dataclass
class Sample:
    """The gateway at one moment; seconds from the start of the load (-1: after it)."""

    seconds: float
    rss: int
    fds: int
    requests: int
    connections: int
    codes: dict[str, int]  # "route/code" -> requests
    cache: dict[str, int]  # lookup result -> count
    ratelimit: dict[str, int]  # "policy/result" -> decisions
    websocket_bytes: int
    tcp_bytes: int
    cache_bytes: int
    clients: dict[str, int]


async def take_sample(seconds: float, pid: int, admin: int, tally: Tally) -> Sample:
    """RSS, fds and counters now."""
    rss, fds = rss_and_fds(pid)
    families = await asyncio.to_thread(fetch_metrics, admin)
    return Sample(
        seconds=seconds, rss=rss, fds=fds,
        requests=int(total(families, "gatewaykit_requests_total")),
        connections=int(total(families, "gatewaykit_connections_active")),
        codes=by_label(families, "gatewaykit_requests_total", "route", "code"),
        cache=by_label(families, "gatewaykit_cache_lookups_total", "result"),
        ratelimit=by_label(families, "gatewaykit_ratelimit_decisions_total", "policy",
                           "result"),
        websocket_bytes=int(total(families, "gatewaykit_websocket_bytes_total")),
        tcp_bytes=int(total(families, "gatewaykit_tcp_bytes_total")),
        cache_bytes=int(total(families, "gatewaykit_cache_bytes")),
        clients=tally.counters())


def sample_times(duration: float, every: float) -> list[float]:
    """Every `every` seconds up to the end of the load, and the end itself."""
    times = [every * n for n in range(1, int(duration / every) + 1)]
    if not times or times[-1] < duration - 0.5:
        times.append(duration)
    return times


def exited(servers: dict[str, subprocess.Popen]) -> list[str]:
    return [f"{name} exited with status {proc.returncode}"
            for name, proc in servers.items() if proc.poll() is not None]


async def soak(args: argparse.Namespace, procs: Processes, tmp: Path) -> dict:
    """Start everything, drive it for --duration, sample it; the raw results."""
    ports, servers = start_servers(args, procs, tmp)
    pid = servers["gatewaykit"].pid
    progress(f"gatewaykit (pid {pid}) on {HOST}:{ports.web}, tcp listener {ports.tunnel},"
             f" admin {ports.admin}; redis {ports.redis}, upstreams nginx {ports.http},"
             f" websocket {ports.websocket}, tcp echo {ports.echo}")
    await preflight(ports)
    progress("preflight: plain 200, cache MISS then HIT, rate-limit fields, WebSocket echo,"
             " TCP echo and /metrics all good")

    tally = Tally()
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    samples = [await take_sample(0.0, pid, ports.admin, tally)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    wrks = {load.route: start_wrk(procs, args, tmp, ports.web, load)
            for load in http_loads(args)}
    clients = [asyncio.create_task(websocket_client(
                   ports.web, tally, stop, random.Random(rng.random()), args, churn=False))
               for _ in range(args.ws_clients)]
    clients += [asyncio.create_task(websocket_client(
                    ports.web, tally, stop, random.Random(rng.random()), args, churn=True))
                for _ in range(args.ws_churners)]
    clients += [asyncio.create_task(tcp_client(
                    ports.tunnel, tally, stop, random.Random(rng.random()), args))
                for _ in range(args.tcp_clients)]
    progress(f"load started for {args.duration:g} s: {len(wrks)} wrk, {args.ws_clients}"
             f" WebSockets + {args.ws_churners} churning, {args.tcp_clients} TCP clients")
    aborted: list[str] = []
    completed = False
    try:
        for at in sample_times(args.duration, args.sample):
            await asyncio.sleep(max(0.0, started + at - loop.time()))
            aborted = exited(servers)
            if aborted:
                progress("stopping early: " + "; ".join(aborted))
                break
            try:
                samples.append(await take_sample(at, pid, ports.admin, tally))
            except (OSError, http.client.HTTPException, BenchError) as exc:
                tally.errors[f"admin: /metrics failed ({error_kind(exc)})"] += 1
                continue
            progress(describe_sample(samples[-2], samples[-1], tally))
        completed = not aborted
    finally:
        stop.set()
        if not completed:  # a server died, Ctrl-C or an error: stop the load now
            for task in clients:
                task.cancel()
            for proc, _ in wrks.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)  # wrk reports what it has on SIGINT
        _, stuck = await asyncio.wait(clients, timeout=3 * TIMEOUT)
        if stuck:
            tally.errors["clients: did not stop within 30 s"] += len(stuck)
            for task in stuck:
                task.cancel()
        deadline = loop.time() + 30
        while any(proc.poll() is None for proc, _ in wrks.values()) and loop.time() < deadline:
            await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # let the gateway close what the clients left
    after = None if exited(servers) else await take_sample(-1, pid, ports.admin, tally)
    outcomes = {route: read_wrk(route, output) for route, (_, output) in wrks.items()}
    return {"ports": asdict(ports), "samples": samples, "after": after, "tally": tally,
            "wrk": outcomes, "aborted": sorted(set(aborted + exited(servers))),
            "log_trouble": log_trouble(tmp)}


def describe_sample(before: Sample, now: Sample, tally: Tally) -> str:
    """One progress line per sample."""
    span = now.seconds - before.seconds or 1.0
    echoed = now.clients["ws_echoed"] - before.clients["ws_echoed"]
    return (f"{now.seconds:6.0f} s: RSS {now.rss / MIB:6.1f} MiB, {now.fds} fds,"
            f" {(now.requests - before.requests) / span:,.0f} req/s,"
            f" {now.connections} connections, {echoed / span:,.0f} WS msg/s,"
            f" errors so far {sum(tally.errors.values())}")


# -- the report ------------------------------------------------------------------------


def warm_index(samples: list[Sample], warmup: float) -> int:
    """The first sample at or after the warm-up."""
    for index, sample in enumerate(samples):
        if sample.seconds >= warmup:
            return index
    return len(samples) - 1


def trend(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over the samples, MiB per 10 minutes."""
    if len(samples) < 3:
        return 0.0
    xs = [s.seconds for s in samples]
    ys = [s.rss / MIB for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return slope * 600


def unexplained_errors(result: dict, loads: list[HttpLoad]) -> Counter[str]:
    """Everything but the expected 429s, by kind."""
    errors: Counter[str] = Counter(result["tally"].errors)
    outcomes: dict[str, WrkOutcome] = result["wrk"]
    for load in loads:
        outcome = outcomes[load.route]
        if not outcome.reported:
            errors[f"{load.route}: wrk gave no result"] += 1
        for kind, count in outcome.errors.items():
            if count:
                errors[f"{load.route}: wrk {kind} errors"] += count
        for status, count in outcome.statuses.items():
            if status not in load.expected:
                errors[f"{load.route}: status {status}"] += count
    for reason in result["aborted"]:
        errors[reason] += 1
    for line in result["log_trouble"]:
        errors["gateway log: " + LOG_TROUBLE.search(line).group(0)] += 1
    last = result["after"] or result["samples"][-1]
    degraded = sum(n for key, n in last.ratelimit.items() if key.endswith("/degraded"))
    if degraded:
        errors["rate limit decided without Redis (degraded)"] += degraded
    # Traffic the soak claims to drive but did not: the verdict would be hollow.
    tally: Tally = result["tally"]
    limited = outcomes["limited"].statuses
    coverage = {"cached: no cache hit": not outcomes["cached"].cache.get("HIT"),
                "limited: no 429 (limit never exceeded)": not limited.get(429),
                "limited: no 200": not limited.get(200),
                "plain: no 200": not outcomes["plain"].statuses.get(200),
                "ws: no message echoed": not tally.ws_echoed,
                "ws churn: no WebSocket closed": not tally.ws_closed,
                "tcp: no byte echoed": not tally.tcp_bytes}
    for kind, missing in coverage.items():
        if missing:
            errors[f"coverage: {kind}"] += 1
    return errors


def summarise(args: argparse.Namespace, result: dict) -> dict:
    """The verdict and the counts, as saved with --json."""
    samples: list[Sample] = result["samples"]
    loads = http_loads(args)
    warm = samples[warm_index(samples, args.warmup)]
    end = samples[-1]
    growth = (end.rss - warm.rss) / MIB
    percent = 100 * growth / (warm.rss / MIB)
    # A run cut short (or shorter than the warm-up plus a sample) proves nothing.
    judged = not result["aborted"] and end.seconds - warm.seconds >= args.sample
    flat = judged and (growth < args.max_growth_mib or percent < args.max_growth_pct)
    settled = samples[warm_index(samples, args.warmup):]
    tally: Tally = result["tally"]
    outcomes: dict[str, WrkOutcome] = result["wrk"]
    errors = unexplained_errors(result, loads)
    after: Sample | None = result["after"]
    final = after or end  # the gateway's counters once every client is done
    limited = outcomes["limited"]
    return {
        "memory": {
            "warm_seconds": warm.seconds, "warm_rss_mib": warm.rss / MIB,
            "end_seconds": end.seconds, "end_rss_mib": end.rss / MIB,
            "growth_mib": growth, "growth_pct": percent,
            "max_after_warmup_mib": max(s.rss for s in settled) / MIB,
            "trend_mib_per_10min": trend(settled),
            "judged": judged,
            "flat": flat,
            "rule": (f"flat when RSS grows by less than {args.max_growth_mib:g} MiB or less"
                     f" than {args.max_growth_pct:g}% from the first sample at or after"
                     f" {args.warmup:g} s (warm-up) to the last sample under load"),
        },
        "fds": {"warm": warm.fds, "end": end.fds, "after": after.fds if after else None},
        "counts": {
            "plain_2xx": sum(n for s, n in outcomes["plain"].statuses.items()
                             if 200 <= s < 300),
            "cached_hits": outcomes["cached"].cache.get("HIT", 0),
            "cached_misses": outcomes["cached"].cache.get("MISS", 0),
            "limited_200": outcomes["limited"].statuses.get(200, 0),
            "limited_429": outcomes["limited"].statuses.get(429, 0),
            "ws_messages_echoed": tally.ws_echoed,
            "ws_bytes_echoed": tally.ws_bytes,
            "ws_pongs": tally.ws_pongs,
            "ws_mismatches": tally.ws_mismatches,
            "ws_opened": tally.ws_opened,
            "ws_closed_cleanly": tally.ws_closed,
            "tcp_connections": tally.tcp_opened,
            "tcp_closed_cleanly": tally.tcp_closed,
            "tcp_bytes_verified": tally.tcp_bytes,
            "tcp_mismatches": tally.tcp_mismatches,
        },
        "wrk": {route: asdict(outcome) for route, outcome in outcomes.items()},
        "limited_200_per_second": limited.statuses.get(200, 0) / (limited.seconds or 1),
        "gateway": {"requests": final.codes, "cache_lookups": final.cache,
                    "ratelimit_decisions": final.ratelimit,
                    "websocket_bytes": final.websocket_bytes, "tcp_bytes": final.tcp_bytes,
                    "cache_bytes": final.cache_bytes,
                    "connections_after": after.connections if after else None},
        "errors": dict(sorted(errors.items())),
        "unexplained_errors": sum(errors.values()),
        "gateway_log_trouble": result["log_trouble"][:20],
        "passed": flat and not errors,
    }


def memory_word(memory: dict) -> str:
    if not memory["judged"]:
        return "not judged (run cut short)"
    return "flat" if memory["flat"] else "NOT flat"


def report(args: argparse.Namespace, result: dict, summary: dict) -> str:
    """The Markdown table of samples and the summary."""
    samples: list[Sample] = result["samples"]
    lines = ["| time | RSS MiB | fds | req/s | connections | WS msg/s | TCP KiB/s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for before, now in pairwise(samples):
        span = now.seconds - before.seconds or 1.0
        rate = (now.requests - before.requests) / span
        echoed = (now.clients["ws_echoed"] - before.clients["ws_echoed"]) / span
        tunnelled = (now.clients["tcp_bytes"] - before.clients["tcp_bytes"]) / span / 1024
        lines.append(f"| {now.seconds:.0f} s | {now.rss / MIB:.1f} | {now.fds} | {rate:,.0f}"
                     f" | {now.connections} | {echoed:,.0f} | {tunnelled:,.0f} |")
    after: Sample | None = result["after"]
    first = samples[0]
    lines.insert(2, f"| 0 s (idle) | {first.rss / MIB:.1f} | {first.fds} | – |"
                    f" {first.connections} | – | – |")
    if after:
        lines.append(f"| after | {after.rss / MIB:.1f} | {after.fds} | – |"
                     f" {after.connections} | – | – |")
    memory, counts = summary["memory"], summary["counts"]
    wrk = summary["wrk"]
    gateway = summary["gateway"]
    lines += [
        "",
        f"RSS: {memory['warm_rss_mib']:.1f} MiB at {memory['warm_seconds']:.0f} s (after"
        f" warm-up), {memory['end_rss_mib']:.1f} MiB at {memory['end_seconds']:.0f} s:"
        f" {memory['growth_mib']:+.1f} MiB ({memory['growth_pct']:+.1f}%); max after warm-up"
        f" {memory['max_after_warmup_mib']:.1f} MiB; trend"
        f" {memory['trend_mib_per_10min']:+.2f} MiB per 10 min.",
        f"Memory: {memory_word(memory)} ({memory['rule']}).",
        f"Open fds: {summary['fds']['warm']} after warm-up, {summary['fds']['end']} at the end,"
        f" {summary['fds']['after'] if after else '–'} 2 s after the load stopped.",
        "",
        "| kind | count |",
        "| --- | ---: |",
        f"| plain: proxied 2xx | {counts['plain_2xx']:,} |",
        f"| cached: hits (X-Cache: HIT) / misses | {counts['cached_hits']:,} /"
        f" {counts['cached_misses']:,} |",
        f"| limited: 200 / 429 (expected) | {counts['limited_200']:,} /"
        f" {counts['limited_429']:,} |",
        f"| WebSocket: messages echoed (bytes) | {counts['ws_messages_echoed']:,}"
        f" ({counts['ws_bytes_echoed']:,}) |",
        f"| WebSocket: pings answered | {counts['ws_pongs']:,} |",
        f"| WebSocket: mismatches | {counts['ws_mismatches']:,} |",
        f"| WebSocket: opened / closed with a close handshake | {counts['ws_opened']:,} /"
        f" {counts['ws_closed_cleanly']:,} |",
        f"| TCP: tunnels opened / half-closed cleanly | {counts['tcp_connections']:,} /"
        f" {counts['tcp_closed_cleanly']:,} |",
        f"| TCP: bytes verified | {counts['tcp_bytes_verified']:,} |",
        f"| TCP: mismatches | {counts['tcp_mismatches']:,} |",
        "",
        "wrk: " + "; ".join(
            f"{route} {o['requests'] / (o['seconds'] or 1):,.0f} req/s (offered"
            f" {load.rate:g}), p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms"
            for load in http_loads(args) for route, o in [(load.route, wrk[load.route])]) + ".",
        f"Rate limit: {summary['limited_200_per_second']:.1f} requests/s let through on the"
        f" limited route for a limit of {args.limit}/s.",
        "Gateway's /metrics: requests by route/code " + json.dumps(gateway["requests"])
        + "; cache lookups " + json.dumps(gateway["cache_lookups"])
        + "; rate-limit decisions " + json.dumps(gateway["ratelimit_decisions"])
        + f"; WebSocket bytes {gateway['websocket_bytes']:,}; TCP bytes"
        f" {gateway['tcp_bytes']:,}; cache bytes {gateway['cache_bytes']:,}.",
        "",
        f"Unexplained errors: {summary['unexplained_errors']}"
        + ("" if not summary["errors"] else ":"),
    ]
    lines += [f"- {kind}: {count}" for kind, count in summary["errors"].items()]
    if summary["gateway_log_trouble"]:
        lines += ["", "Gateway log lines:"]
        lines += [f"    {line}" for line in summary["gateway_log_trouble"]]
    lines += ["", f"Verdict: {'PASS' if summary['passed'] else 'FAIL'}"
                  f" (memory {memory_word(memory)},"
                  f" {summary['unexplained_errors']} unexplained errors)."]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the reference sample; None: 60, at most a"
                        " quarter of --duration")
    parser.add_argument("--max-growth-mib", type=float, default=5,
                        help="memory is flat when it grows less than this (MiB) ...")
    parser.add_argument("--max-growth-pct", type=float, default=5,
                        help="... or less than this share (%%) after warm-up")
    parser.add_argument("--wrk-connections", type=int, default=8,
                        help="connections of each of the three wrk")
    parser.add_argument("--plain-rate", type=float, default=300,
                        help="requests/s offered to the plain route")
    parser.add_argument("--cached-rate", type=float, default=300,
                        help="requests/s offered to the cached route")
    parser.add_argument("--limited-rate", type=float, default=150,
                        help="requests/s offered to the rate-limited route")
    parser.add_argument("--limit", type=int, default=50,
                        help="the rate limit, requests per second (all clients: one key)")
    parser.add_argument("--redis-timeout", default="1s",
                        help="gateway.redis.timeout (on_error: closed)")
    parser.add_argument("--cache-keys", type=int, default=1000,
                        help="distinct URLs wrk asks the cached route for")
    parser.add_argument("--cache-bytes", default="1MiB",
                        help="the cache policy's max_bytes (below the keys' total: evictions)")
    parser.add_argument("--ws-clients", type=int, default=16,
                        help="WebSockets held for the whole run")
    parser.add_argument("--ws-churners", type=int, default=4,
                        help="clients opening and closing WebSockets")
    parser.add_argument("--ws-interval", type=float, default=0.05,
                        help="seconds each WebSocket client waits between messages")
    parser.add_argument("--ws-max-message", type=int, default=16384,
                        help="largest WebSocket message, bytes")
    parser.add_argument("--tcp-clients", type=int, default=8, help="TCP tunnel clients")
    parser.add_argument("--tcp-interval", type=float, default=0.05,
                        help="seconds each TCP client waits between chunks")
    parser.add_argument("--tcp-max-chunk", type=int, default=65536,
                        help="largest chunk a TCP client sends, bytes")
    parser.add_argument("--max-connections", type=int, default=200,
                        help="cap on client connections open at once")
    parser.add_argument("--seed", type=int, default=None, help="seed of the clients' randomness")
    parser.add_argument("--gatewaykit-cmd", default=None, help="as bench/run.py's")
    add_output_options(parser, "save settings, samples and summary here")
    parser.add_argument("--serve-tcp-echo", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tcp_echo is not None:
        return args
    if args.sample <= 0 or args.duration < 2 * args.sample:
        parser.error("--duration must cover at least two --sample intervals")
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 4)
    if min(args.plain_rate, args.cached_rate, args.limited_rate) <= 0:
        parser.error("rates must be above 0")
    if args.limited_rate <= args.limit:
        parser.error("--limited-rate must exceed --limit, or no 429 is ever seen")
    connections = (3 * args.wrk_connections + args.ws_clients + args.ws_churners
                   + args.tcp_clients + 2)  # + the checks' and /metrics' own
    if connections > args.max_connections:
        parser.error(f"{connections} client connections exceed --max-connections"
                     f" {args.max_connections}")
    args.connections = connections
    args.client_cpu = args.proxy_cpu = None  # not pinned: a soak, not a speed contest
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_tcp_echo is not None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        asyncio.run(serve_tcp_echo(args.serve_tcp_echo))
        return 0
    missing = [tool for tool in ("nginx", "wrk", "redis-server") if shutil.which(tool) is None]
    if missing:
        progress(f"missing tools: {', '.join(missing)}")
        return 2
    # SIGTERM unwinds like Ctrl-C, so every child is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    progress("load average: " + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    result, status = in_temp_dir(
        "gatewaykit-soak-", args.keep_tmp,
        lambda tmp: with_processes(tmp, lambda procs: asyncio.run(soak(args, procs, tmp))),
        failures=(BenchError, OSError, http.client.HTTPException),
        failure_status=2,
        on_failure=lambda tmp: progress(tail(tmp / "gatewaykit.log")))
    if status:
        return status
    summary = summarise(args, result)
    print(report(args, result, summary))
    if args.json:
        settings = {key: (str(value) if isinstance(value, Path) else value)
                    for key, value in vars(args).items() if key != "serve_tcp_echo"}
        save_json(args.json, {
            "settings": settings, "ports": result["ports"],
            "samples": [asdict(sample) for sample in result["samples"]],
            "after": asdict(result["after"]) if result["after"] else None,
            "summary": summary,
        }, "samples and summary")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
