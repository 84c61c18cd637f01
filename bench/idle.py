#!/usr/bin/env python3
"""
Idle connections and overload: how gatewaykit holds up (issue 9).

Two modes (--mode):

idle (default): gatewaykit in front of one upstream (nginx when installed,
    else a small built-in one). wrk on /1k (50 connections) and a paced
    probe (one connection, 50 requests a second) measure latency with no
    idle connections, then with --connections (default 10,000) idle
    keep-alive connections held open, each having done one request. The
    gateway's RSS before and after gives the memory per idle connection;
    afterwards every idle connection must still answer.
overload: gatewaykit in front of a slow built-in upstream (each answer after
    --delay) behind a circuit breaker (--max-requests in flight); --clients
    connections offer several times what the upstream can take for
    --duration seconds (default 120). Reports the 503s' latency, the RSS
    sampled every second (start, max, end), and recovery: how soon after
    the load stops --max-requests concurrent requests are all served again.

The gateway runs pinned to --proxy-cpu; the upstream, wrk and this script's
clients share --client-cpu. The process handling, nginx upstream, gatewaykit
start and wrk are bench/run.py's. Progress goes to stderr, the Markdown
table to stdout. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # gatewaykit
import run as bench  # noqa: E402  (bench/run.py)

from gatewaykit.runtime import YOUNG_THRESHOLD  # noqa: E402

HOST = bench.HOST
MIB = 1024 * 1024
BODY_1K = b"x" * 1024
# Idle connections are opened (and later checked) this many at a time,
# within the gateway's listen backlog (1024).
BATCH = 500
# File descriptors this script and its children need beyond the idle
# connections: wrk's, the probe's, the load's, logs, pipes.
FD_SLACK = 200

# gatewaykit is started through this wrapper (unless --gatewaykit-cmd): it
# reports every full (generation 2) garbage collection and its pause, which
# is what latency spikes with many connections come from, and may set the
# collector's thresholds (--gc-threshold).
GC_WRAPPER = """\
import gc, sys, time
threshold = {threshold!r}
if threshold:
    # gatewaykit sets its young threshold once serving (gatewaykit.runtime)
    # and keeps the older ones it finds.
    import gatewaykit.runtime
    gatewaykit.runtime.YOUNG_THRESHOLD = threshold[0]
    gc.set_threshold(*threshold)
started = [0.0]

def report(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        started[0] = time.monotonic()
    else:
        now = time.monotonic()
        sys.stderr.write("gkbench-gc2 %.6f %.3f\\n" % (now, (now - started[0]) * 1000))

gc.callbacks.append(report)
sys.argv = [sys.argv[0], "-n", "gatewaykit", "--config", sys.argv[1]]
from twisted.scripts.twistd import run
run()
"""
GC_LINE = re.compile(r"gkbench-gc2 ([\d.]+) ([\d.]+)")


def progress(message: str) -> None:
    """Progress goes to stderr so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def raise_fd_limit(needed: int) -> int:
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit (children,
    the gateway among them, inherit it); the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise bench.BenchError(
            f"{needed} file descriptors needed, the hard limit is {hard}: "
            f"raise it (ulimit -Hn) or ask for fewer connections"
        )
    return target


def rss_bytes(pid: int) -> int:
    """A process's resident set size (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise bench.BenchError(f"no VmRSS for process {pid}")


def gc_pauses(log: Path, start: float, end: float) -> list[float]:
    """The full garbage collections' pauses (ms) the gateway logged between start and end."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [float(m.group(2)) for m in GC_LINE.finditer(text) if start <= float(m.group(1)) <= end]


def describe_gc(pauses: list[float]) -> str:
    return f"{len(pauses)}, longest {max(pauses):.0f} ms" if pauses else "0"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- a small upstream, for overload (slow) and when nginx is missing --------------


async def serve_upstream(port: int, delay: float) -> None:
    """HTTP/1.1 keep-alive: every GET answered 200 with 1 KiB, after delay seconds."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n"

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if delay:
                    await asyncio.sleep(delay)
                writer.write(head + BODY_1K)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


def start_builtin_upstream(procs: bench.Processes, args: argparse.Namespace, delay: float) -> int:
    """This script as a small upstream in a child process; its port."""
    port = bench.free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port),
            "--delay", str(delay)]
    procs.start("upstream-builtin", argv, port, args.client_cpu)
    return port


# -- HTTP/1.1 client pieces ----------------------------------------------------------


REQUEST = f"GET /1k HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode("ascii")


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes = REQUEST
) -> int:
    """Send one request and read its whole response; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


@dataclass
class Idle:
    """Keep-alive connections held open after one request each."""

    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=list
    )
    failed: int = 0

    async def open(self, port: int, count: int) -> None:
        async def one() -> None:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
                if await exchange(reader, writer) != 200:
                    raise ConnectionError("not 200")
                self.connections.append((reader, writer))
            except (OSError, asyncio.IncompleteReadError):
                self.failed += 1

        for start in range(0, count, BATCH):
            await asyncio.gather(*(one() for _ in range(min(BATCH, count - start))))

    async def check(self) -> int:
        """One more request on each; how many got 200."""

        async def one(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
            try:
                return await asyncio.wait_for(exchange(*pair), 30) == 200
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                return False

        answered = 0
        for start in range(0, len(self.connections), BATCH):
            batch = self.connections[start : start + BATCH]
            answered += sum(await asyncio.gather(*(one(pair) for pair in batch)))
        return answered

    def close(self) -> None:
        for _, writer in self.connections:
            writer.close()
        self.connections.clear()


async def probe(port: int, seconds: float, rate: float) -> list[float]:
    """One connection, one request every 1/rate s for seconds: the latencies."""
    reader, writer = await asyncio.open_connection(HOST, port)
    latencies = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    next_at = loop.time()
    try:
        while loop.time() < deadline:
            started = time.perf_counter()
            if await exchange(reader, writer) != 200:
                raise bench.BenchError("the probe got an error answer")
            latencies.append(time.perf_counter() - started)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        writer.close()
    return latencies


async def run_wrk(args: argparse.Namespace, port: int, script: Path) -> dict[str, float]:
    """bench/run.py's run_wrk in a thread, so the event loop (and idle sockets) stay served."""
    return await asyncio.to_thread(
        bench.run_wrk, f"http://{HOST}:{port}/1k", args.wrk_connections, args.wrk_duration,
        args.client_cpu, script)


# -- idle mode -----------------------------------------------------------------------


@dataclass
class IdleRow:
    """One line of the idle table."""

    idle: int
    rps: float
    p50: float  # seconds, wrk
    p99: float
    probe_p50: float
    probe_p99: float
    errors: int
    rss: int
    gc: list[float]


async def idle_mode(args: argparse.Namespace, procs: bench.Processes, tmp: Path) -> str:
    if shutil.which("nginx") and not args.builtin_upstream:
        upstream_port = bench.start_upstream(procs, args, tmp, 1, {})[0]
        upstream = "nginx"
    else:
        upstream_port = start_builtin_upstream(procs, args, 0.0)
        upstream = "built-in (asyncio)"
    port = start_gateway(args, procs, tmp, upstream_port, {"limits": {"idle_timeout": "30m"}})
    pid = procs.running[-1].pid
    progress(f"gatewaykit (pid {pid}) on {HOST}:{port} in front of the {upstream} upstream")
    script = tmp / "report.lua"
    script.write_text(bench.WRK_SCRIPT)
    await run_wrk_warmup(args, port, script)

    async def measure(idle_count: int) -> IdleRow:
        started = time.monotonic()
        result = await run_wrk(args, port, script)
        latencies = await probe(port, args.probe_duration, args.probe_rate)
        errors = int(sum(v for k, v in result.items() if k.startswith("err_")))
        row = IdleRow(
            idle_count, result["requests"] / (result["duration_us"] / 1e6),
            result["p50_us"] / 1e6, result["p99_us"] / 1e6,
            percentile(latencies, 0.5), percentile(latencies, 0.99), errors, rss_bytes(pid),
            gc_pauses(tmp / "gatewaykit.log", started, time.monotonic()))
        progress(f"{idle_count} idle: {row.rps:,.0f} req/s, wrk p50 {ms(row.p50)} p99"
                 f" {ms(row.p99)}, probe p50 {ms(row.probe_p50)} p99 {ms(row.probe_p99)},"
                 f" RSS {row.rss / MIB:.1f} MiB, full GCs {describe_gc(row.gc)}")
        return row

    baseline = await measure(0)
    before = rss_bytes(pid)
    idle = Idle()
    started = time.monotonic()
    progress(f"opening {args.connections} idle keep-alive connections")
    await idle.open(port, args.connections)
    opened_in = time.monotonic() - started
    if idle.failed:
        raise bench.BenchError(f"{idle.failed} of {args.connections} idle connections failed")
    await asyncio.sleep(1.0)
    held = rss_bytes(pid)
    progress(f"{len(idle.connections)} idle connections open after {opened_in:.1f} s;"
             f" RSS {before / MIB:.1f} -> {held / MIB:.1f} MiB")
    loaded = await measure(len(idle.connections))
    count = len(idle.connections)
    answered = await idle.check()
    progress(f"{answered} of {count} idle connections answered afterwards")
    idle.close()

    per_connection = (held - before) / max(1, count)
    lines = [
        f"| idle connections | req/s (wrk, {args.wrk_connections} conn.) | wrk p50 | wrk p99"
        f" | probe p50 | probe p99 | errors | gateway RSS | full GCs (pause) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in (baseline, loaded):
        lines.append(
            f"| {row.idle:,} | {row.rps:,.0f} | {ms(row.p50)} | {ms(row.p99)}"
            f" | {ms(row.probe_p50)} | {ms(row.probe_p99)} | {row.errors}"
            f" | {row.rss / MIB:.1f} MiB | {describe_gc(row.gc)} |")
    lines += [
        "",
        f"Memory per idle connection: {per_connection / 1024:.1f} KiB"
        f" (gateway RSS {before / MIB:.1f} MiB before, {held / MIB:.1f} MiB with"
        f" {count:,} idle connections; opened in {opened_in:.1f} s).",
        f"Idle connections answering afterwards: {answered:,} of {count:,}.",
        f"Upstream: {upstream}. Probe: one connection, {args.probe_rate:g} requests/s for"
        f" {args.probe_duration:g} s. Garbage collector thresholds: {gc_setting(args)}.",
    ]
    return "\n".join(lines)


async def run_wrk_warmup(args: argparse.Namespace, port: int, script: Path) -> None:
    if args.warmup > 0:
        progress("warming up")
        await asyncio.to_thread(bench.run_wrk, f"http://{HOST}:{port}/1k", args.wrk_connections,
                                args.warmup, args.client_cpu, script)


def gc_setting(args: argparse.Namespace) -> str:
    if args.gatewaykit_cmd_given:
        return "as --gatewaykit-cmd sets them"
    if args.gc_threshold:
        return ", ".join(map(str, args.gc_threshold))
    return f"gatewaykit's ({YOUNG_THRESHOLD}, 10, 10)"


def start_gateway(args: argparse.Namespace, procs: bench.Processes, tmp: Path,
                  upstream_port: int, gateway: dict, **upstream_keys: object) -> int:
    """gatewaykit (bench/run.py's config) with gateway keys added; its port."""
    if not args.gatewaykit_cmd_given:
        wrapper = tmp / "gatewaykit_gc.py"
        wrapper.write_text(GC_WRAPPER.format(threshold=args.gc_threshold))
        args.gatewaykit_cmd = f"{{python}} {wrapper} {{config}}"

    def config(port: int) -> dict:
        made = bench.gatewaykit_http_config(port, [upstream_port])
        made["gateway"].update(gateway)
        made["upstreams"]["bench"].update(upstream_keys)
        return made

    return bench.start_gatewaykit(procs, args, tmp, "gatewaykit", config)


# -- overload mode -------------------------------------------------------------------


@dataclass
class Tally:
    """What the overload clients saw."""

    started: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    latency: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0
    per_second: list[dict[int, int]] = field(default_factory=list)

    def add(self, status: int, seconds: float, now: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latency.setdefault(status, []).append(seconds)
        second = int(now - self.started)
        while len(self.per_second) <= second:
            self.per_second.append({})
        bucket = self.per_second[second]
        bucket[status] = bucket.get(status, 0) + 1


async def overload_client(port: int, tally: Tally, stop: asyncio.Event, pause: float) -> None:
    """Requests one at a time, pause seconds apart, reconnecting after errors."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            tally.errors += 1
            await asyncio.sleep(pause)
            continue
        try:
            while not stop.is_set():
                started = time.perf_counter()
                status = await asyncio.wait_for(exchange(reader, writer), 30)
                tally.add(status, time.perf_counter() - started, loop.time())
                await asyncio.sleep(pause)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            tally.errors += 1
        finally:
            writer.close()


async def overload_mode(args: argparse.Namespace, procs: bench.Processes, tmp: Path) -> str:
    upstream_port = start_builtin_upstream(procs, args, args.delay)
    breaker = {"max_requests": args.max_requests, "max_pending": args.max_requests}
    port = start_gateway(args, procs, tmp, upstream_port, {}, circuit_breaker=breaker,
                         timeouts={"response": "30s"})
    pid = procs.running[-1].pid
    capacity = args.max_requests / args.delay
    offered = args.clients / args.pause
    progress(f"gatewaykit (pid {pid}) on {HOST}:{port}; upstream answers after"
             f" {args.delay * 1000:g} ms, circuit breaker {args.max_requests}: at most"
             f" {capacity:,.0f} req/s; offering up to {offered:,.0f} req/s from"
             f" {args.clients} connections for {args.duration:g} s")
    reader, writer = await asyncio.open_connection(HOST, port)
    if await exchange(reader, writer) != 200:
        raise bench.BenchError("gatewaykit did not answer 200 before the load")
    writer.close()

    loop = asyncio.get_running_loop()
    load_started = time.monotonic()
    tally = Tally(started=loop.time())
    stop = asyncio.Event()
    rss: list[int] = [rss_bytes(pid)]
    clients = [asyncio.create_task(overload_client(port, tally, stop, args.pause))
               for _ in range(args.clients)]
    for second in range(1, int(args.duration) + 1):
        await asyncio.sleep(tally.started + second - loop.time())
        rss.append(rss_bytes(pid))
        if second % 10 == 0:
            recent = tally.per_second[-2] if len(tally.per_second) > 1 else {}
            progress(f"{second:4d} s: last second {recent.get(200, 0)} served,"
                     f" {recent.get(503, 0)} refused; RSS {rss[-1] / MIB:.1f} MiB")
    stop.set()
    await asyncio.gather(*clients)
    stopped = loop.time()
    pauses = gc_pauses(tmp / "gatewaykit.log", load_started, time.monotonic())

    # Recovery: max_requests requests at once must all be served.
    async def one() -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            return await exchange(reader, writer)
        finally:
            writer.close()

    statuses = await asyncio.gather(*(one() for _ in range(args.max_requests)))
    recovered_in = loop.time() - stopped
    rss.append(rss_bytes(pid))
    served = statuses.count(200)
    progress(f"recovery: {served} of {args.max_requests} concurrent requests served,"
             f" {recovered_in:.3f} s after the load stopped")

    seconds = args.duration
    refused = tally.latency.get(503, [])
    ok = tally.latency.get(200, [])
    other = {s: n for s, n in tally.statuses.items() if s not in (200, 503)}
    settled = rss[len(rss) // 6 :]  # after the first sixth: warm
    lines = [
        "| offered | served | refused (503) | other | 503 p50 | 503 p99 | 503 max"
        " | 200 p50 | 200 p99 | RSS start | RSS max | RSS end |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {sum(tally.statuses.values()) / seconds:,.0f}/s | {len(ok) / seconds:,.0f}/s"
        f" | {len(refused) / seconds:,.0f}/s"
        f" | {sum(other.values()) + tally.errors}"
        f" | {ms(percentile(refused, 0.5))} | {ms(percentile(refused, 0.99))}"
        f" | {ms(max(refused, default=0))} | {ms(percentile(ok, 0.5))}"
        f" | {ms(percentile(ok, 0.99))} | {rss[0] / MIB:.1f} MiB | {max(rss) / MIB:.1f} MiB"
        f" | {rss[-1] / MIB:.1f} MiB |",
        "",
        f"{seconds:g} s, {args.clients} connections each pausing {args.pause * 1000:g} ms"
        f" between requests (at most {offered:,.0f} req/s); upstream {args.delay * 1000:g} ms"
        f" per answer behind"
        f" `circuit_breaker: {{max_requests: {args.max_requests}, max_pending:"
        f" {args.max_requests}}}` (capacity {capacity:,.0f} req/s).",
        f"RSS after warm-up: {min(settled) / MIB:.1f}-{max(settled) / MIB:.1f} MiB"
        f" (median {statistics.median(settled) / MIB:.1f}), sampled every second.",
        f"Recovery: {served} of {args.max_requests} concurrent requests served"
        f" {recovered_in:.3f} s after the load stopped.",
        f"Full garbage collections during the load: {describe_gc(pauses)}"
        f" (thresholds: {gc_setting(args)}).",
    ]
    if other or tally.errors:
        lines.append(f"Other statuses: {other}; connection errors: {tally.errors}.")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------


def gc_threshold(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(","))
    if not 1 <= len(values) <= 3:
        raise argparse.ArgumentTypeError("one to three integers, e.g. 50000,20,10")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=("idle", "overload"), default="idle")
    parser.add_argument("--connections", type=int, default=10_000,
                        help="idle: keep-alive connections to hold")
    parser.add_argument("--wrk-connections", type=int, default=50,
                        help="idle: wrk's connections")
    parser.add_argument("--wrk-duration", type=float, default=10,
                        help="idle: seconds of wrk per measurement")
    parser.add_argument("--probe-rate", type=float, default=50,
                        help="idle: the probe's requests per second")
    parser.add_argument("--probe-duration", type=float, default=10,
                        help="idle: seconds of probe per measurement")
    parser.add_argument("--warmup", type=float, default=2,
                        help="idle: seconds of unrecorded wrk first")
    parser.add_argument("--builtin-upstream", action="store_true",
                        help="idle: use the built-in upstream even if nginx is installed")
    parser.add_argument("--duration", type=float, default=120,
                        help="overload: seconds of load")
    parser.add_argument("--clients", type=int, default=300,
                        help="overload: client connections")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="overload: seconds each client waits between requests")
    parser.add_argument("--delay", type=float, default=0.1,
                        help="overload: seconds the upstream takes per answer")
    parser.add_argument("--max-requests", type=int, default=100,
                        help="overload: the circuit breaker's max_requests (and max_pending)")
    parser.add_argument("--gc-threshold", type=gc_threshold, default=None,
                        help="gatewaykit's gc.set_threshold, e.g. 50000,20,10 (default: "
                        "gatewaykit's own, gatewaykit.runtime)")
    parser.add_argument("--gatewaykit-cmd", default=None,
                        help="as bench/run.py's (default: this Python's twistd, through a"
                        " wrapper that reports full garbage collections)")
    bench.add_pinning_options(parser, "the clients, wrk and the upstream")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temp dir (configs, logs)")
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.gatewaykit_cmd_given = args.gatewaykit_cmd is not None
    if args.serve_upstream is not None:
        return args  # the built-in upstream, already pinned by its parent
    if shutil.which("taskset") is None:
        args.no_pin = True
    bench.check_pinning(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream is not None:
        asyncio.run(serve_upstream(args.serve_upstream, args.delay))
        return 0
    if args.mode == "idle" and shutil.which("wrk") is None:
        progress("idle mode needs wrk")
        return 1
    needed = (args.connections if args.mode == "idle" else args.clients) + FD_SLACK
    try:
        limit = raise_fd_limit(needed)
    except bench.BenchError as exc:
        progress(f"error: {exc}")
        return 1
    progress(f"open files limit (soft) now {limit}; load average "
             + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    mode = idle_mode if args.mode == "idle" else overload_mode
    table, status = bench.in_temp_dir(
        "gatewaykit-idle-", args.keep_tmp,
        lambda tmp: bench.with_processes(
            tmp, lambda procs: asyncio.run(mode(args, procs, tmp))))
    if status:
        return status
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
