#!/usr/bin/env python3
"""
Benchmark gatewaykit against nginx, HAProxy, stock Twisted and no proxy.

Four scenarios (--scenario), each against one nginx upstream:

proxy (default): gatewaykit, nginx, Twisted's stock proxy and no proxy,
    wrk on /1k (1024 bytes) and /1m (1 MiB); ratios to nginx-as-a-proxy.
balancing: gatewaykit with an upstream of 1 target and of 3 targets
    (round_robin, p2c, hash on the client address), wrk on /1k; the 3
    targets are three listen ports of the same nginx. Ratios to 1 target.
tcp: gatewaykit's tcp listener, HAProxy in TCP mode and no proxy, curl
    downloading 1 GiB, then 8 x 128 MiB in parallel; ratios to HAProxy and
    to direct.
workers: gatewaykit with 1 and with 2 worker processes (--workers), wrk on
    /1k; neither is pinned (2 workers need both CPUs). Ratio to 1 worker.
cache: cache hits against proxied requests, gatewaykit's `cache` policy and
    nginx's proxy_cache, wrk on /1k and /1m (the upstream says max-age=3600),
    and on /1k with a new URL per request (every request a miss, stored).
    Ratios to each proxy without its cache, and hits over misses.
compress: gatewaykit's `compress` policy (gzip, br; with and without a
    cache in front) and nginx's `gzip on`, on text bodies, wrk sending
    Accept-Encoding: br, gzip. Ratios to each proxy uncompressed.
tls: gatewaykit and nginx as proxies behind an https listener with the same
    test certificate and cipher policy: HTTPS requests/s over keep-alive
    (wrk), new TLS handshakes per second (wrk, one connection per request)
    and HTTP/2 requests/s (h2load, when installed); ratios to nginx.

The client (wrk or curl) and the upstream share CPU 0; the proxy under test
runs alone on CPU 1. Targets run interleaved for several rounds; the table
reports medians and ratios. See bench/README.md.

Standard library only (Twisted is needed by the stock proxy target).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
HOST = "127.0.0.1"

MIB = 1024 * 1024
GIB = 1024 * MIB
SIZES = {"1k": 1024, "1m": MIB}
SIZE_LABELS = {"1k": "1 KiB", "1m": "1 MiB", "1k-1c": "1 KiB, 1 connection",
               "1k-miss": "1 KiB, a new URL each"}
CONNECTIONS = {"1k": 50, "1m": 10, "1k-1c": 1, "1k-miss": 50}
# Loads whose every request asks for a URL not asked for before (a query
# counting up): through a cache, each one is a miss.
MISS_LOADS = frozenset({"1k-miss"})

# The tcp scenario's downloads: (parallel downloads, file), and the sparse
# files the upstream serves for them.
TRANSFERS = {"1g": (1, "1g"), "8x128m": (8, "128m")}
TRANSFER_LABELS = {"1g": "1 GiB", "8x128m": "8 × 128 MiB"}
SPARSE_FILES = {"1g": GIB, "128m": 128 * MIB}
CURL_FORMAT = "%{size_download} %{time_total} %{speed_download}"

# The tls scenario's loads, all GET /1k over TLS: requests over keep-alive
# connections; one new connection (a full handshake) per request; HTTP/2
# with h2load, CONNECTIONS x H2_STREAMS streams in flight (as wrk's 50).
TLS_LOADS = {"https": "HTTPS keep-alive",
             "handshake": "new TLS connection per request",
             "h2": "HTTP/2 (h2load)"}
TLS_CONNECTIONS = {"https": 50, "handshake": 50, "h2": 5}
H2_STREAMS = 10
# gatewaykit's default TLS 1.2 suites (Mozilla intermediate without DHE),
# given to nginx too; TLS 1.3 suites are OpenSSL's on both.
TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
               "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
TLS_NAME = "bench.test"

# The header the upstream adds when it listens on several ports, so that
# the balancing scenario can show which port answered.
PORT_HEADER = "X-Upstream-Port"

# Makes each request's URL new: "/1k?miss=1", "/1k?miss=2", ...
WRK_MISS_SCRIPT = """\
local count = 0
request = function()
   count = count + 1
   return wrk.format(nil, wrk.path .. "?miss=" .. count)
end
"""

# wrk's done() hook: one machine-readable line, latencies in microseconds.
# %.0f rather than %d: LuaJIT and Lua 5.3 disagree on %d with floats.
WRK_SCRIPT = """\
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRK_RESULT requests=%.0f duration_us=%.0f bytes=%.0f"
      .. " p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f mean_us=%.0f"
      .. " err_connect=%.0f err_read=%.0f err_write=%.0f"
      .. " err_status=%.0f err_timeout=%.0f\\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
"""

NGINX_MAIN = """\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
{temp_paths}
{server}
}}
"""

UPSTREAM_SERVER = """\
    server {{
{listen}
        root {www};
        sendfile on;{extra}
        location = /1k {{
            return 200 "{body_1k}";
        }}
        location = /1m {{
        }}
    }}"""

PROXY_SERVER = """\
    upstream bench {{
        server {host}:{upstream_port};
        keepalive 32;
    }}
    server {{
        listen {host}:{port}{listen_options};{server_extra}
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""

HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 1024

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

listen tunnel
    bind {host}:{port}
    server upstream {host}:{upstream_port}
"""

NGINX_TLS = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;"""

VERSION_ARGV = {
    "nginx": ["nginx", "-v"],
    "wrk": ["wrk", "-v"],
    "curl": ["curl", "--version"],
    "haproxy": ["haproxy", "-v"],
    "openssl": ["openssl", "version"],
    "h2load": ["h2load", "--version"],
}


def format_ms(micros: float) -> str:
    """Microseconds as milliseconds for the table."""
    return f"{micros / 1000:.2f} ms"


class BenchError(Exception):
    """A target could not be started, checked or measured."""


@dataclass
class WrkResult:
    """One wrk run against one target and size."""

    target: str
    size: str
    round: int
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    bytes: int
    errors: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One progress line's worth of this result."""
        return (f"{self.rps:>10,.0f} req/s  "
                f"p50 {format_ms(self.p50_us)}  "
                f"p99 {format_ms(self.p99_us)}  "
                f"errors {sum(self.errors.values())}")


@dataclass
class TransferResult:
    """One batch of parallel curl downloads through one target."""

    target: str
    size: str  # the transfer: a key of TRANSFERS
    round: int
    downloads: int
    expected_bytes: int  # per download
    bytes: int  # all downloads together
    seconds: float  # the slowest download's time_total
    mib_s: float  # bytes / seconds, in MiB/s
    times: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One progress line's worth of this result."""
        return (f"{self.mib_s:>8,.0f} MiB/s  {self.seconds:.2f} s  "
                f"{self.bytes:,} bytes  "
                f"errors {sum(self.errors.values())}")


def free_port() -> int:
    """Return a loopback TCP port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    """Return the last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """Prefix argv with taskset so it runs on one CPU (None: unpinned)."""
    if cpu is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def add_pinning_options(parser: argparse.ArgumentParser,
                        client: str = "the client (wrk, curl) and the "
                        "upstream nginx") -> None:
    """--client-cpu, --proxy-cpu and --no-pin, as every bench script takes them."""
    parser.add_argument("--client-cpu", type=int, default=0,
                        help=f"CPU for {client}")
    parser.add_argument("--proxy-cpu", type=int, default=1,
                        help="CPU for the proxy under test")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not use taskset")


def check_pinning(parser: argparse.ArgumentParser,
                  args: argparse.Namespace) -> None:
    """With --no-pin nothing is pinned; otherwise both CPUs must be ours."""
    if args.no_pin:
        args.client_cpu = args.proxy_cpu = None
    elif not {args.client_cpu, args.proxy_cpu} <= os.sched_getaffinity(0):
        parser.error(f"CPUs {args.client_cpu} and {args.proxy_cpu} are not "
                     "both available; use --client-cpu/--proxy-cpu or "
                     "--no-pin")


def add_output_options(parser: argparse.ArgumentParser,
                       json_help: str = "also save raw results and the "
                       "summary here") -> None:
    """--json and --keep-tmp, as every bench script takes them."""
    parser.add_argument("--json", type=Path, default=None, help=json_help)
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temp dir (configs, logs)")


class Processes:
    """The long-running children of one benchmark run; stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], port: int,
              cpu: int | None, cwd: Path | None = None,
              env: dict[str, str] | None = None,
              timeout: float = 30.0) -> subprocess.Popen:
        """Start argv pinned to cpu and wait until it accepts on port."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                pinned(cpu, argv), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                start_new_session=True)
        self.running.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {proc.returncode} before "
                    f"listening on {port}: {shlex.join(argv)}\n"
                    f"{tail(log_path)}")
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return proc
            except OSError:
                time.sleep(0.1)
        raise BenchError(
            f"{name} did not accept on {HOST}:{port} within {timeout:.0f} s"
            f"\n{tail(log_path)}")

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child, then SIGKILL its group if it lingers."""
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Each child leads its own session, so its group holds it,
                # its nginx workers and whatever else it forked, and nothing
                # of ours. The leader is alive, so the group id is still its.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.running.clear()


# -- targets -----------------------------------------------------------------

# Starts one target given the upstream's ports; returns the port to load.
Starter = Callable[[Processes, argparse.Namespace, Path, list[int]], int]


def nginx_temp_paths(prefix: Path) -> str:
    """Temp path directives for the modules this nginx was built with."""
    built = subprocess.run(["nginx", "-V"], capture_output=True,
                           text=True).stderr
    lines = [f"    client_body_temp_path {prefix}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            lines.append(f"    {module}_temp_path {prefix}/{module};")
    return "\n".join(lines)


def start_nginx(procs: Processes, name: str, server: str, port: int,
                cpu: int | None, prefix: Path) -> None:
    """Run one single-worker nginx in the foreground with prefix as home."""
    prefix.mkdir(parents=True, exist_ok=True)
    # As root the worker would switch to "nobody", who cannot read our
    # private temp dir; keep it root, this is a throwaway loopback server.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(
        user=user, prefix=prefix, temp_paths=nginx_temp_paths(prefix),
        server=server))
    argv = ["nginx", "-p", f"{prefix}/", "-c", str(conf),
            "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    procs.start(name, argv, port, cpu)


def text_of(size: int) -> str:
    """size characters of English-like words: compresses like real text."""
    words = ("proxy gateway cache request response header body stream "
             "upstream client route policy latency socket reactor").split()
    rng = random.Random(size)
    text = " ".join(rng.choice(words) for _ in range(size // 4 + 1))
    return text[:size]


def start_upstream(procs: Processes, args: argparse.Namespace, tmp: Path,
                   count: int, sparse: dict[str, int],
                   extra_directives: str = "",
                   text: bool = False) -> list[int]:
    """
    Start the nginx upstream on count ports; return them. The bodies are
    text when text is true, else x's; extra_directives go in its server
    block.
    """
    www = tmp / "www"
    www.mkdir()
    body_1m = text_of(SIZES["1m"]) if text else "x" * SIZES["1m"]
    (www / "1m").write_text(body_1m)
    for name, size in sparse.items():
        with open(www / name, "wb") as file:
            file.truncate(size)
    ports = [free_port() for _ in range(count)]
    listen = "\n".join(f"        listen {HOST}:{port};" for port in ports)
    # Only worth its bytes when there is a choice of port to show.
    extra = (f"\n        add_header {PORT_HEADER} $server_port;"
             if count > 1 else "") + extra_directives
    body_1k = text_of(SIZES["1k"]) if text else "x" * SIZES["1k"]
    server = UPSTREAM_SERVER.format(listen=listen, www=www, extra=extra,
                                    body_1k=body_1k)
    start_nginx(procs, "upstream-nginx", server, ports[0], args.client_cpu,
                tmp / "upstream-nginx")
    return ports


def use_upstream(procs: Processes, args: argparse.Namespace, tmp: Path,
                 upstream_ports: list[int]) -> int:
    """The `direct` target: no proxy, the upstream's first port."""
    return upstream_ports[0]


def start_nginx_proxy(procs: Processes, args: argparse.Namespace,
                      tmp: Path, upstream_ports: list[int]) -> int:
    """Start nginx as a keep-alive reverse proxy; return its port."""
    port = free_port()
    server = PROXY_SERVER.format(host=HOST, port=port,
                                 upstream_port=upstream_ports[0],
                                 listen_options="", server_extra="")
    start_nginx(procs, "nginx-proxy", server, port, args.proxy_cpu,
                tmp / "nginx-proxy")
    return port


def nginx_proxy_with(name: str, server_extra: str,
                     http_extra: str = "") -> Starter:
    """
    A starter for nginx as the proxy above plus server_extra directives
    (and http_extra ones at http level; {prefix} is its home).
    """
    def start(procs: Processes, args: argparse.Namespace, tmp: Path,
              upstream_ports: list[int]) -> int:
        port = free_port()
        prefix = tmp / name
        server = http_extra.format(prefix=prefix) + PROXY_SERVER.format(
            host=HOST, port=port, upstream_port=upstream_ports[0],
            listen_options="", server_extra=server_extra)
        start_nginx(procs, name, server, port, args.proxy_cpu, prefix)
        return port
    return start


# nginx's proxy_cache as commonly configured: a keys zone, files on disk
# (served from the page cache), the upstream's Cache-Control obeyed.
NGINX_CACHE = nginx_proxy_with(
    "nginx-cache",
    "\n        proxy_cache bench_cache;",
    "    proxy_cache_path {prefix}/cache keys_zone=bench_cache:10m;\n")
# gzip at the level gatewaykit's compress policy uses by default.
NGINX_GZIP = nginx_proxy_with(
    "nginx-gzip",
    "\n        gzip on;\n        gzip_types text/plain;"
    "\n        gzip_min_length 1024;\n        gzip_comp_level 5;"
    "\n        gzip_proxied any;")


def tls_certificate(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """
    The run's self-signed certificate and key for 127.0.0.1 and TLS_NAME
    (--tls-key: ECDSA P-256 or RSA 2048), made once with openssl.
    """
    cert, key = tmp / "tls-cert.pem", tmp / "tls-key.pem"
    if not cert.exists():
        new_key = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
                   if args.tls_key == "ec" else ["-newkey", "rsa:2048"])
        argv = ["openssl", "req", "-x509", *new_key, "-nodes", "-days", "2",
                "-keyout", str(key), "-out", str(cert),
                "-subj", f"/CN={TLS_NAME}",
                "-addext", f"subjectAltName=DNS:{TLS_NAME},IP:{HOST}"]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"openssl req failed: {done.stderr}")
    return cert, key


def start_nginx_tls_proxy(procs: Processes, args: argparse.Namespace,
                          tmp: Path, upstream_ports: list[int]) -> int:
    """Start nginx as a keep-alive reverse proxy behind TLS (and HTTP/2)."""
    cert, key = tls_certificate(args, tmp)
    port = free_port()
    server = PROXY_SERVER.format(
        host=HOST, port=port, upstream_port=upstream_ports[0],
        listen_options=" ssl http2",
        server_extra=NGINX_TLS.format(cert=cert, key=key, ciphers=TLS_CIPHERS))
    start_nginx(procs, "nginx-tls-proxy", server, port, args.proxy_cpu,
                tmp / "nginx-tls-proxy")
    return port


def start_twisted_proxy(procs: Processes, args: argparse.Namespace,
                        tmp: Path, upstream_ports: list[int]) -> int:
    """Start twisted.web.proxy.ReverseProxyResource; return its port."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "stock_twisted_proxy.py"),
            str(port), str(upstream_ports[0])]
    procs.start("twisted-proxy", argv, port, args.proxy_cpu, cwd=tmp)
    return port


def start_haproxy(procs: Processes, args: argparse.Namespace, tmp: Path,
                  upstream_ports: list[int]) -> int:
    """Start HAProxy in TCP mode, one thread, foreground; return its port."""
    port = free_port()
    config = tmp / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(
        host=HOST, port=port, upstream_port=upstream_ports[0]))
    argv = ["haproxy", "-db", "-f", str(config)]
    procs.start("haproxy", argv, port, args.proxy_cpu, cwd=tmp)
    return port


def default_gatewaykit_cmd() -> str:
    """Return the twistd beside sys.executable, else `python -m twisted`."""
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        argv = [sys.executable, str(twistd), "-n", "gatewaykit"]
    else:
        # `python -m twisted` is `twist`: always foreground, no -n.
        argv = [sys.executable, "-m", "twisted", "gatewaykit"]
    return shlex.join(argv) + " --config {config}"


def gatewaykit_http_config(port: int, upstream_ports: list[int],
                           workers: int = 1,
                           **upstream_keys: str) -> dict:
    """One http listener, one route, one upstream over upstream_ports."""
    upstream = {"targets": [f"{HOST}:{p}" for p in upstream_ports],
                "pool": {"max_idle_per_target": 128}, **upstream_keys}
    return {
        "gateway": {"access_log": {"path": "off"}, "workers": workers},
        "listeners": {"web": {"protocol": "http", "bind": f"{HOST}:{port}"}},
        "upstreams": {"bench": upstream},
        "routes": [{"name": "all", "match": {"path_prefix": "/"},
                    "upstream": "bench"}],
    }


def gatewaykit_https_config(port: int, upstream_ports: list[int],
                            cert: Path, key: Path) -> dict:
    """gatewaykit_http_config with an https listener (its default TLS)."""
    config = gatewaykit_http_config(port, upstream_ports[:1])
    config["listeners"] = {"web": {
        "protocol": "https", "bind": f"{HOST}:{port}",
        "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}}
    return config


def gatewaykit_tcp_config(port: int, upstream_ports: list[int]) -> dict:
    """One tcp listener tunnelling to the upstream's first port."""
    return {
        "gateway": {"access_log": {"path": "off"}},
        "listeners": {"tunnel": {"protocol": "tcp",
                                 "bind": f"{HOST}:{port}",
                                 "upstream": "bench"}},
        "upstreams": {"bench": {"targets": [f"{HOST}:{upstream_ports[0]}"]}},
    }


def start_gatewaykit(procs: Processes, args: argparse.Namespace, tmp: Path,
                     name: str, make_config: Callable[[int], dict],
                     pin: bool = True, source: Path = PROJECT_DIR) -> int:
    """
    Start gatewaykit on make_config(port) as name; return the port.
    Pinned to the proxy CPU unless pin is false; its code is taken from
    the source tree given (this checkout by default).
    """
    port = free_port()
    config = tmp / f"{name}.yaml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(json.dumps(make_config(port), indent=2) + "\n")
    template = args.gatewaykit_cmd or default_gatewaykit_cmd()
    if "{config}" not in template:
        template += " --config {config}"
    argv = [part.format(config=config, python=sys.executable)
            for part in shlex.split(template)]
    # The project root on the path finds gatewaykit and its twistd plugin
    # without installing; cwd (one per instance) keeps twistd.pid out of
    # the source tree and apart.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(source), env.get("PYTHONPATH")]))
    cwd = tmp / name
    cwd.mkdir()
    procs.start(name, argv, port, args.proxy_cpu if pin else None,
                cwd=cwd, env=env)
    return port


def start_gatewaykit_proxy(procs: Processes, args: argparse.Namespace,
                           tmp: Path, upstream_ports: list[int]) -> int:
    """Start gatewaykit as a reverse proxy to one target; return its port."""
    return start_gatewaykit(
        procs, args, tmp, "gatewaykit",
        lambda port: gatewaykit_http_config(port, upstream_ports[:1]))


def gatewaykit_from(name: str, source: Path) -> Starter:
    """The proxy scenario's gatewaykit, its code from another source tree."""
    def start(procs: Processes, args: argparse.Namespace, tmp: Path,
              upstream_ports: list[int]) -> int:
        return start_gatewaykit(
            procs, args, tmp, name,
            lambda port: gatewaykit_http_config(port, upstream_ports[:1]),
            source=source)
    return start


def gatewaykit_with_policies(name: str, policies: dict[str, dict],
                             order: list[str],
                             source: Path = PROJECT_DIR) -> Starter:
    """
    A starter for the proxy above with policies applied in order (its code
    from the source tree given).
    """
    def start(procs: Processes, args: argparse.Namespace, tmp: Path,
              upstream_ports: list[int]) -> int:
        def config(port: int) -> dict:
            made = gatewaykit_http_config(port, upstream_ports[:1])
            made["policies"] = policies
            made["routes"][0]["policies"] = order
            return made
        return start_gatewaykit(procs, args, tmp, name, config, source=source)
    return start


def cached_gatewaykit_from(name: str, source: Path) -> Starter:
    """The cache scenario's gatewaykit-cache, its code from another source tree."""
    return gatewaykit_with_policies(name, {"cache": CACHE_POLICY}, ["cache"], source)


CACHE_POLICY = {"type": "cache", "max_bytes": "64MiB"}
COMPRESS_POLICY = {"type": "compress", "types": ["text/*"]}


def start_gatewaykit_tls(procs: Processes, args: argparse.Namespace,
                        tmp: Path, upstream_ports: list[int]) -> int:
    """Start gatewaykit with an https listener proxying to one target."""
    cert, key = tls_certificate(args, tmp)
    return start_gatewaykit(
        procs, args, tmp, "gatewaykit",
        lambda port: gatewaykit_https_config(port, upstream_ports, cert, key))


def start_gatewaykit_tunnel(procs: Processes, args: argparse.Namespace,
                            tmp: Path, upstream_ports: list[int]) -> int:
    """Start gatewaykit with a tcp listener; return its port."""
    return start_gatewaykit(
        procs, args, tmp, "gatewaykit",
        lambda port: gatewaykit_tcp_config(port, upstream_ports))


def balanced_gatewaykit(count: int, balancer: str,
                        **upstream_keys: str) -> Starter:
    """A starter for gatewaykit balancing over count upstream ports."""
    def start(procs: Processes, args: argparse.Namespace, tmp: Path,
              upstream_ports: list[int]) -> int:
        if len(upstream_ports) < count:
            raise BenchError(f"{count} targets need {count} upstream ports")
        return start_gatewaykit(
            procs, args, tmp, f"gatewaykit-{count}-{balancer}",
            lambda port: gatewaykit_http_config(
                port, upstream_ports[:count], balancer=balancer,
                **upstream_keys))
    return start


def gatewaykit_workers(count: int) -> Starter:
    """
    A starter for gatewaykit with count worker processes, not pinned: the
    workers must be free to use every CPU (so is the 1-worker baseline).
    """
    def start(procs: Processes, args: argparse.Namespace, tmp: Path,
              upstream_ports: list[int]) -> int:
        return start_gatewaykit(
            procs, args, tmp, f"gatewaykit-{count}w",
            lambda port: gatewaykit_http_config(
                port, upstream_ports[:1], workers=count),
            pin=False)
    return start


# -- checks ------------------------------------------------------------------

def get(target: str, port: int, path: str,
        tls: bool = False) -> tuple[http.client.HTTPResponse, bytes]:
    """GET path through the target on a new connection: response, body."""
    conn = (http.client.HTTPSConnection(HOST, port, timeout=30,
                                        context=ssl._create_unverified_context())
            if tls else http.client.HTTPConnection(HOST, port, timeout=30))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{target}: GET {path} failed: {exc!r}") from exc
    finally:
        conn.close()


def resource(load: str) -> str:
    """The size a load fetches: "1k" for "1k" and for "1k-1c"."""
    return load.split("-")[0]


def check_target(target: str, port: int, sizes: list[str],
                 tls: bool = False) -> None:
    """Fetch each size once through the target and check status and length."""
    for size in map(resource, sizes):
        response, body = get(target, port, f"/{size}", tls)
        if response.status != 200 or len(body) != SIZES[size]:
            raise BenchError(
                f"{target}: GET /{size} gave {response.status} with "
                f"{len(body)} bytes, expected 200 with {SIZES[size]}")


def upstream_spread(target: str, port: int, requests: int = 30) -> str:
    """How many of some sequential GETs each upstream port answered."""
    ports = Counter(get(target, port, "/1k")[0].getheader(PORT_HEADER, "?")
                    for _ in range(requests))
    return ", ".join(f"{port}: {count}"
                     for port, count in sorted(ports.items()))


# -- loads -------------------------------------------------------------------

def run_wrk(url: str, connections: int, duration: float, cpu: int | None,
            script: Path, headers: tuple[str, ...] = ()) -> dict[str, float]:
    """Run one single-threaded wrk and return its done() numbers."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s",
            "--timeout", "10s", "-s", str(script),
            *(option for header in headers for option in ("-H", header)), url]
    done = subprocess.run(pinned(cpu, argv), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            pairs = (item.split("=") for item in line.split()[1:])
            return {key: float(value) for key, value in pairs}
    raise BenchError(f"wrk gave no result (exit {done.returncode}) for "
                     f"{url}:\n{done.stdout}{done.stderr}")


def run_h2load(url: str, connections: int, streams: int, duration: float,
               cpu: int | None, log_path: Path) -> dict[str, float]:
    """
    Run one single-threaded h2load for duration seconds; its numbers in
    run_wrk's form (latency percentiles from its per-request log).
    """
    argv = ["h2load", "-t1", f"-c{connections}", f"-m{streams}",
            f"-D{duration:g}", f"--log-file={log_path}", url]
    done = subprocess.run(pinned(cpu, argv), capture_output=True, text=True)
    out = done.stdout
    finished = re.search(r"finished in ([\d.]+)s", out)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, "
                       r"(\d+) succeeded, (\d+) failed, (\d+) errored, "
                       r"(\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, "
                      r"(\d+) 5xx", out)
    traffic = re.search(r"traffic: .*?\((\d+)\) total", out)
    if done.returncode != 0 or not (finished and counts and codes):
        raise BenchError(f"h2load gave no result (exit {done.returncode}) "
                         f"for {url}:\n{out}{done.stderr}")
    times = sorted(int(line.split("\t")[2])
                   for line in log_path.read_text().splitlines() if line)
    log_path.unlink()

    def percentile(share: float) -> float:
        return float(times[min(len(times) - 1, int(share * len(times)))]
                     if times else 0)

    _, done_count, _, failed, errored, timeout = map(int, counts.groups())
    return {"requests": done_count,
            "duration_us": float(finished.group(1)) * 1e6,
            "bytes": float(traffic.group(1)) if traffic else 0.0,
            "p50_us": percentile(0.50), "p90_us": percentile(0.90),
            "p99_us": percentile(0.99), "max_us": percentile(1.0),
            "mean_us": sum(times) / len(times) if times else 0.0,
            "err_connect": 0, "err_read": errored, "err_write": failed,
            "err_status": int(codes.group(3)) + int(codes.group(4)),
            "err_timeout": timeout}


def run_curls(url: str, count: int,
              cpu: int | None) -> list[tuple[int, float] | None]:
    """Download url count times in parallel; (bytes, seconds) or None each."""
    argv = ["curl", "-s", "-o", "/dev/null", "--noproxy", "*",
            "--max-time", "600", "-w", CURL_FORMAT, url]
    running = [subprocess.Popen(pinned(cpu, argv), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
               for _ in range(count)]
    done = []
    for proc in running:
        out = proc.communicate()[0].split()
        ok = proc.returncode == 0 and len(out) == 3
        done.append((int(out[0]), float(out[1])) if ok else None)
    return done


class WrkBench:
    """wrk at a fixed concurrency for a fixed time: req/s and latency."""

    loads = SIZE_LABELS
    load_header = "size"
    metric = "rps"
    fields = ("p50_us", "p99_us")
    columns = (("req/s (median)", lambda row: f"{row['rps']:,.0f}"),
               ("p50", lambda row: format_ms(row["p50_us"])),
               ("p99", lambda row: format_ms(row["p99_us"])))

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.script = tmp / "report.lua"
        self.miss_script = tmp / "report-miss.lua"
        headers = SCENARIOS[args.scenario].request_headers
        script = "".join(
            f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers
        ) + WRK_SCRIPT
        self.script.write_text(script)
        self.miss_script.write_text(WRK_MISS_SCRIPT + script)
        self.durations = {"1k": args.duration_1k, "1m": args.duration_1m,
                          "1k-1c": args.duration_1k, "1k-miss": args.duration_1k}

    def check(self, target: str, port: int) -> None:
        """One real GET of each size through the target."""
        check_target(target, port, self.args.sizes)

    def measure(self, target: str, port: int, size: str, round_no: int,
                warmup: bool = False) -> WrkResult:
        """Benchmark one target at one size and return the result."""
        url = f"http://{HOST}:{port}/{resource(size)}"
        duration = self.args.warmup if warmup else self.durations[size]
        script = self.miss_script if size in MISS_LOADS else self.script
        raw = run_wrk(url, CONNECTIONS[size], duration, self.args.client_cpu, script)
        return self.result(target, size, round_no, CONNECTIONS[size], raw)

    @staticmethod
    def result(target: str, size: str, round_no: int, connections: int,
               raw: dict[str, float]) -> WrkResult:
        """A WrkResult from run_wrk's (or run_h2load's) numbers."""
        seconds = raw["duration_us"] / 1e6
        return WrkResult(
            target=target, size=size, round=round_no,
            connections=connections, duration_s=seconds,
            requests=int(raw["requests"]), rps=raw["requests"] / seconds,
            p50_us=raw["p50_us"], p90_us=raw["p90_us"],
            p99_us=raw["p99_us"], max_us=raw["max_us"],
            mean_us=raw["mean_us"], bytes=int(raw["bytes"]),
            errors={key[4:]: int(value) for key, value in raw.items()
                    if key.startswith("err_")})

    @staticmethod
    def settings(args: argparse.Namespace) -> dict:
        """What this load was, for the JSON file."""
        return {"connections": CONNECTIONS,
                "durations": {"1k": args.duration_1k,
                              "1m": args.duration_1m},
                "miss_loads": sorted(MISS_LOADS)}


class TLSBench(WrkBench):
    """
    WrkBench over TLS: GET /1k over keep-alive connections, with a new
    connection (a full handshake) per request, and over HTTP/2 (h2load).
    """

    loads = TLS_LOADS

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        super().__init__(args, tmp)
        self.tmp = tmp
        self.durations = {"https": args.duration_1k, "h2": args.duration_1k,
                          "handshake": args.duration_handshake}

    def check(self, target: str, port: int) -> None:
        """One real GET over TLS, and one over HTTP/2 when that is measured."""
        check_target(target, port, ["1k"], tls=True)
        if "h2" in self.args.sizes:
            argv = ["h2load", "-n1", "-c1", f"https://{HOST}:{port}/1k"]
            out = subprocess.run(argv, capture_output=True, text=True).stdout
            if "Application protocol: h2" not in out or " 1 2xx" not in out:
                raise BenchError(f"{target}: no HTTP/2 GET /1k:\n{out}")

    def measure(self, target: str, port: int, size: str, round_no: int,
                warmup: bool = False) -> WrkResult:
        """Benchmark one target with one TLS load and return the result."""
        url = f"https://{HOST}:{port}/1k"
        duration = self.args.warmup if warmup else self.durations[size]
        connections = TLS_CONNECTIONS[size]
        cpu = self.args.client_cpu
        if size == "h2":
            raw = run_h2load(url, connections, H2_STREAMS, duration, cpu,
                             self.tmp / "h2load.log")
        else:
            headers = ("Connection: close",) if size == "handshake" else ()
            raw = run_wrk(url, connections, duration, cpu, self.script,
                          headers)
        return self.result(target, size, round_no, connections, raw)

    @staticmethod
    def settings(args: argparse.Namespace) -> dict:
        """What these loads were, for the JSON file."""
        return {"connections": TLS_CONNECTIONS, "h2_streams": H2_STREAMS,
                "tls_key": args.tls_key,
                "durations": {"https": args.duration_1k,
                              "h2": args.duration_1k,
                              "handshake": args.duration_handshake}}


class TransferBench:
    """Parallel curl downloads of big files: MiB/s and time."""

    loads = TRANSFER_LABELS
    load_header = "transfer"
    metric = "mib_s"
    fields = ("seconds",)
    columns = (("MiB/s (median)", lambda row: f"{row['mib_s']:,.0f}"),
               ("time (median)", lambda row: f"{row['seconds']:.2f} s"))

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args

    def check(self, target: str, port: int) -> None:
        """One real GET of /1k and /1m through the tunnel."""
        check_target(target, port, list(SIZES))

    def measure(self, target: str, port: int, transfer: str, round_no: int,
                warmup: bool = False) -> TransferResult:
        """Run one batch of downloads through the target."""
        count, name = TRANSFERS[transfer]
        expected = SPARSE_FILES[name]
        done = run_curls(f"http://{HOST}:{port}/{name}", count,
                         self.args.client_cpu)
        ok = [item for item in done if item is not None]
        total = sum(size for size, _ in ok)
        seconds = max((secs for _, secs in ok), default=0.0)
        return TransferResult(
            target=target, size=transfer, round=round_no, downloads=count,
            expected_bytes=expected, bytes=total, seconds=seconds,
            mib_s=total / MIB / seconds if seconds else 0.0,
            times=[secs for _, secs in ok],
            errors={"curl": count - len(ok),
                    "size": sum(size != expected for size, _ in ok)})

    @staticmethod
    def settings(args: argparse.Namespace) -> dict:
        """What this load was, for the JSON file."""
        return {"transfers": {key: {"downloads": count,
                                    "bytes_each": SPARSE_FILES[name]}
                              for key, (count, name) in TRANSFERS.items()}}


# -- scenarios ---------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """What one --scenario runs, with what load, and ratios to what."""

    targets: dict[str, Starter]
    bench: type[WrkBench] | type[TransferBench]
    loads: tuple[str, ...]
    references: tuple[str, ...]
    tools: tuple[str, ...]
    upstream_ports: int = 1
    sparse_files: dict[str, int] = field(default_factory=dict)
    # Loads that need a tool the scenario can do without: load -> tool.
    load_tools: dict[str, str] = field(default_factory=dict)
    # Directives for the upstream nginx's server block, and text bodies.
    upstream_extra: str = ""
    upstream_text: bool = False
    # Fields wrk sends with every request.
    request_headers: tuple[tuple[str, str], ...] = ()
    # (load, baseline load) pairs: each target's requests/s in the one over
    # its requests/s in the other (cache hits over cache misses).
    load_ratios: tuple[tuple[str, str], ...] = ()
    # What --compare NAME=DIR adds: gatewaykit from DIR, as this scenario runs it.
    compared: Callable[[str, Path], Starter] | None = None


SCENARIOS = {
    "proxy": Scenario(
        targets={"gatewaykit": start_gatewaykit_proxy,
                 "nginx": start_nginx_proxy,
                 "twisted": start_twisted_proxy,
                 "direct": use_upstream},
        bench=WrkBench, loads=("1k", "1m"), references=("nginx",),
        tools=("nginx", "wrk", "taskset"), compared=gatewaykit_from),
    "balancing": Scenario(
        targets={"1-target": balanced_gatewaykit(1, "round_robin"),
                 "3-round_robin": balanced_gatewaykit(3, "round_robin"),
                 "3-p2c": balanced_gatewaykit(3, "p2c"),
                 "3-hash": balanced_gatewaykit(3, "hash", hash_key="ip")},
        bench=WrkBench, loads=("1k",), references=("1-target",),
        tools=("nginx", "wrk", "taskset"), upstream_ports=3),
    "workers": Scenario(
        targets={"1-worker": gatewaykit_workers(1),
                 "2-workers": gatewaykit_workers(2)},
        bench=WrkBench, loads=("1k",), references=("1-worker",),
        tools=("nginx", "wrk", "taskset")),
    "tcp": Scenario(
        targets={"gatewaykit": start_gatewaykit_tunnel,
                 "haproxy": start_haproxy,
                 "direct": use_upstream},
        bench=TransferBench, loads=("1g", "8x128m"),
        references=("haproxy", "direct"),
        tools=("nginx", "curl", "haproxy", "taskset"),
        sparse_files=SPARSE_FILES),
    "tls": Scenario(
        targets={"gatewaykit": start_gatewaykit_tls,
                 "nginx": start_nginx_tls_proxy},
        bench=TLSBench, loads=("https", "handshake", "h2"),
        references=("nginx",),
        tools=("nginx", "wrk", "taskset", "openssl"),
        load_tools={"h2": "h2load"}),
    "cache": Scenario(
        targets={"gatewaykit": start_gatewaykit_proxy,
                 "gatewaykit-cache": gatewaykit_with_policies(
                     "gatewaykit-cache", {"cache": CACHE_POLICY}, ["cache"]),
                 "nginx": start_nginx_proxy,
                 "nginx-cache": NGINX_CACHE},
        bench=WrkBench, loads=("1k", "1m", "1k-1c", "1k-miss"),
        references=("gatewaykit", "nginx"),
        load_ratios=(("1k", "1k-miss"),),
        tools=("nginx", "wrk", "taskset"),
        upstream_extra='\n        add_header Cache-Control "max-age=3600";',
        compared=cached_gatewaykit_from),
    "compress": Scenario(
        targets={"gatewaykit": start_gatewaykit_proxy,
                 "gatewaykit-gzip": gatewaykit_with_policies(
                     "gatewaykit-gzip",
                     {"compress": {**COMPRESS_POLICY, "encodings": ["gzip"]}},
                     ["compress"]),
                 "gatewaykit-br": gatewaykit_with_policies(
                     "gatewaykit-br",
                     {"compress": {**COMPRESS_POLICY, "encodings": ["br"]}},
                     ["compress"]),
                 "gatewaykit-cache-gzip": gatewaykit_with_policies(
                     "gatewaykit-cache-gzip",
                     {"cache": CACHE_POLICY,
                      "compress": {**COMPRESS_POLICY, "encodings": ["gzip"]}},
                     ["cache", "compress"]),
                 "nginx": start_nginx_proxy,
                 "nginx-gzip": NGINX_GZIP},
        bench=WrkBench, loads=("1k", "1m"),
        references=("gatewaykit", "nginx"),
        tools=("nginx", "wrk", "taskset"),
        upstream_extra=("\n        default_type text/plain;"
                        '\n        add_header Cache-Control "max-age=3600";'),
        upstream_text=True,
        request_headers=(("Accept-Encoding", "br, gzip"),)),
}


# -- results -----------------------------------------------------------------

def summarise(results: list, scenario: Scenario, targets: list[str],
              sizes: list[str]) -> list[dict]:
    """Medians per target and size, with ratios to the references."""
    metric, fields = scenario.bench.metric, scenario.bench.fields
    rows = []
    for size in sizes:
        medians: dict[str, dict] = {}
        for target in targets:
            runs = [r for r in results
                    if r.target == target and r.size == size]
            if not runs:
                continue
            values = [getattr(r, metric) for r in runs]
            row = {"target": target, "size": size, "rounds": len(runs),
                   metric: statistics.median(values),
                   f"{metric}_min": min(values), f"{metric}_max": max(values)}
            for name in fields:
                row[name] = statistics.median(getattr(r, name) for r in runs)
            row["errors"] = sum(sum(r.errors.values()) for r in runs)
            medians[target] = row
        for row in medians.values():
            row["ratios"] = {
                ref: (row[metric] / medians[ref][metric]
                      if ref in medians and medians[ref][metric] else None)
                for ref in scenario.references}
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], scenario: Scenario) -> str:
    """Format the summary rows as a Markdown table."""
    bench = scenario.bench
    headers = ["target", bench.load_header,
               *(header for header, _ in bench.columns),
               *(f"vs {ref}" for ref in scenario.references),
               "spread", "errors"]
    lines = ["| " + " | ".join(headers) + " |",
             "| --- | --- |" + " ---: |" * (len(headers) - 2)]
    for row in rows:
        ratios = ["n/a" if ratio is None else f"{ratio:.2f}"
                  for ratio in row["ratios"].values()]
        metric = bench.metric
        spread = ((row[f"{metric}_max"] - row[f"{metric}_min"]) / row[metric]
                  if row[metric] else 0.0)
        cells = [row["target"], bench.loads[row["size"]],
                 *(cell(row) for _, cell in bench.columns), *ratios,
                 f"{spread:.0%}", str(row["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_ratio_table(results: list, rows: list[dict], scenario: Scenario) -> str:
    """
    Each target's median in one load over its median in another, and the
    same ratio in each round (Markdown).
    """
    bench = scenario.bench
    metric = bench.metric
    medians = {(row["target"], row["size"]): row[metric] for row in rows}
    measured = {(r.target, r.size, r.round): getattr(r, metric) for r in results}
    rounds = sorted({r.round for r in results})
    lines = []
    for load, baseline in scenario.load_ratios:
        for target in dict.fromkeys(row["target"] for row in rows):
            over, under = medians.get((target, load)), medians.get((target, baseline))
            if over is None or not under:
                continue
            per_round = [measured[target, load, n] / measured[target, baseline, n]
                         for n in rounds
                         if measured.get((target, baseline, n))
                         and (target, load, n) in measured]
            if not lines:
                lines = ["| target | load | over load | ratio (median) | per round |",
                         "| --- | --- | --- | ---: | --- |"]
            lines.append(f"| {target} | {bench.loads[load]} | "
                         f"{bench.loads[baseline]} | {over / under:.2f} | "
                         + ", ".join(f"{ratio:.2f}" for ratio in per_round) + " |")
    return "\n".join(lines)


def environment(tools: tuple[str, ...]) -> dict[str, str]:
    """Versions and machine facts (taken before the run: load average)."""
    def version(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout + done.stderr).splitlines()[0].strip()

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.platform(),
        "cpus": str(os.cpu_count()),
        "loadavg": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "python": sys.version.split()[0],
        "twisted": importlib.metadata.version("twisted"),
        **{tool: version(VERSION_ARGV[tool])
           for tool in tools if tool in VERSION_ARGV and shutil.which(tool)},
        "argv": shlex.join(sys.argv),
    }


# -- command line ------------------------------------------------------------

def csv_list(text: str) -> list[str]:
    """A comma-separated list of names, checked later against a scenario."""
    return [name.strip() for name in text.split(",") if name.strip()]


def choose(parser: argparse.ArgumentParser, option: str,
           names: list[str] | None, allowed: tuple[str, ...],
           default: tuple[str, ...]) -> list[str]:
    """Names checked against allowed, deduplicated; default when None."""
    if names is None:
        return list(default)
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        parser.error(f"argument {option}: choose from {','.join(allowed)}; "
                     f"got {','.join(names)!r}")
    return list(dict.fromkeys(names))


def add_compare_option(parser: argparse.ArgumentParser, what: str) -> None:
    """--compare NAME=DIR: C{what} gets its code from the source tree DIR."""
    parser.add_argument("--compare", action="append", default=[],
                        metavar="NAME=DIR",
                        help=f"{what} from the source tree DIR (say a git "
                        "worktree of an earlier commit), for a before and "
                        "after in one run; may be repeated")


def compared_trees(parser: argparse.ArgumentParser, values: list[str],
                   taken: tuple[str, ...]) -> dict[str, Path]:
    """
    The NAME=DIR values of --compare as {NAME: source tree}: each NAME new
    (not in taken, no "/"), each DIR holding a gatewaykit package.
    """
    trees: dict[str, Path] = {}
    for value in values:
        name, _, tree = value.partition("=")
        source = Path(tree).resolve()
        if not name or name in taken or "/" in name or name in trees:
            parser.error(f"--compare {value}: give a new name, NAME=DIR")
        if not (source / "gatewaykit" / "__init__.py").is_file():
            parser.error(f"--compare {value}: no gatewaykit package in {source}")
        trees[name] = source
    return trees


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS, default="proxy",
                        help="proxy: gatewaykit vs nginx, stock Twisted and "
                        "direct; balancing: 1 vs 3 targets; tcp: tunnel vs "
                        "HAProxy and direct; workers: 1 vs 2 workers; tls: "
                        "HTTPS, handshakes and HTTP/2 vs nginx")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over all targets")
    parser.add_argument("--duration-1k", type=float, default=10,
                        help="seconds per 1 KiB run (50 connections)")
    parser.add_argument("--duration-1m", type=float, default=5,
                        help="seconds per 1 MiB run (10 connections)")
    parser.add_argument("--duration-handshake", type=float, default=5,
                        help="tls: seconds per new-connection run (the "
                        "https and h2 loads take --duration-1k)")
    parser.add_argument("--tls-key", choices=("ec", "rsa"), default="ec",
                        help="tls: the certificate's key, ECDSA P-256 or "
                        "RSA 2048")
    parser.add_argument("--targets", type=csv_list, default=None,
                        help="comma-separated, in run order; unset: every "
                        "target of the scenario")
    parser.add_argument("--sizes", type=csv_list, default=None,
                        help="comma-separated sizes (1k,1m) or, for tcp, "
                        "transfers (1g,8x128m), for tls, loads "
                        "(https,handshake,h2); unset: the scenario's")
    parser.add_argument("--gatewaykit-cmd", default=None,
                        help="command line for gatewaykit; {config} is "
                        "replaced by the generated YAML path, {python} by "
                        "this interpreter (default: this Python's "
                        "`twistd -n gatewaykit --config {config}`)")
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of unrecorded load per target and "
                        "size before round 1; tcp: one unrecorded batch "
                        "when > 0 (0: none)")
    add_pinning_options(parser)
    add_output_options(parser)
    add_compare_option(parser, "proxy, cache: one more target, NAME, running "
                       "gatewaykit's code (with the cache policy in the cache "
                       "scenario)")
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    if args.compare and scenario.compared is None:
        parser.error("--compare is for the proxy and cache scenarios")
    for name, source in compared_trees(parser, args.compare, tuple(scenario.targets)).items():
        scenario.targets[name] = scenario.compared(name, source)
    args.targets = choose(parser, "--targets", args.targets,
                          tuple(scenario.targets), tuple(scenario.targets))
    asked = args.sizes is not None
    args.sizes = choose(parser, "--sizes", args.sizes,
                        tuple(scenario.bench.loads), scenario.loads)
    for load, tool in scenario.load_tools.items():
        if load in args.sizes and shutil.which(tool) is None:
            if asked:
                parser.error(f"load {load} needs {tool}")
            progress(f"{tool} not found: no {load} load")
            args.sizes.remove(load)
    check_pinning(parser, args)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def progress(message: str) -> None:
    """Progress goes to stderr so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def start_targets(procs: Processes, args: argparse.Namespace, tmp: Path,
                  scenario: Scenario, bench: WrkBench | TransferBench
                  ) -> dict[str, int]:
    """Start the upstream and every target, check each; return the ports."""
    upstream_ports = start_upstream(procs, args, tmp,
                                    scenario.upstream_ports,
                                    scenario.sparse_files,
                                    scenario.upstream_extra,
                                    scenario.upstream_text)
    ports = {}
    for target in args.targets:
        port = scenario.targets[target](procs, args, tmp, upstream_ports)
        bench.check(target, port)
        progress(f"{target}: listening on {HOST}:{port}")
        if len(upstream_ports) > 1:
            progress(f"{target}: upstream ports answering 30 requests: "
                     f"{upstream_spread(target, port)}")
        ports[target] = port
    return ports


def run(args: argparse.Namespace, tmp: Path) -> list:
    """Start every target, run the interleaved rounds, return the results."""
    scenario = SCENARIOS[args.scenario]
    procs = Processes(tmp)
    width = max(len(target) for target in args.targets)
    results = []
    try:
        bench = scenario.bench(args, tmp)
        ports = start_targets(procs, args, tmp, scenario, bench)
        if args.warmup > 0:
            progress("warming up")
            for size in args.sizes:
                for target in args.targets:
                    bench.measure(target, ports[target], size, 0, warmup=True)
        for round_no in range(1, args.rounds + 1):
            for size in args.sizes:
                for target in args.targets:
                    result = bench.measure(target, ports[target], size,
                                           round_no)
                    results.append(result)
                    progress(f"round {round_no}/{args.rounds} {size} "
                             f"{target:>{width}}: {result.describe()}")
    finally:
        procs.stop_all()
    return results


def save_json(path: Path, data: dict, what: str = "raw results") -> None:
    """Write data to path as indented JSON, and say so."""
    path.write_text(json.dumps(data, indent=2) + "\n")
    progress(f"{what} saved to {path}")


def in_temp_dir(prefix: str, keep: bool, work: Callable[[Path], Any],
                failures: tuple[type[BaseException], ...] = (BenchError,),
                failure_status: int = 1,
                on_failure: Callable[[Path], None] | None = None,
                ) -> tuple[Any, int]:
    """
    work(tmp) in a fresh temp dir, removed afterwards unless keep: (its
    result, 0), or (None, failure_status) after saying why (and calling
    on_failure(tmp)) when it raised one of failures, (None, 130) on Ctrl-C.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return work(tmp), 0
    except failures as exc:
        progress(f"error: {exc}")
        if on_failure is not None:
            on_failure(tmp)
        return None, failure_status
    except KeyboardInterrupt:
        progress("interrupted")
        return None, 130
    finally:
        if keep:
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def with_processes(tmp: Path, work: Callable[[Processes], Any]) -> Any:
    """work(procs) with a Processes in tmp, every process stopped after."""
    procs = Processes(tmp)
    try:
        return work(procs)
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 on failure."""
    args = parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    missing = [tool for tool in scenario.tools if shutil.which(tool) is None]
    if missing:
        progress(f"missing tools: {', '.join(missing)}")
        return 1
    # SIGTERM unwinds like Ctrl-C, so every child is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    facts = (environment(scenario.tools + tuple(scenario.load_tools.values()))
             if args.json else {})
    progress("load average: " + " ".join(
        f"{load:.2f}" for load in os.getloadavg()))
    outcome, status = in_temp_dir("gatewaykit-bench-", args.keep_tmp,
                                  lambda tmp: run(args, tmp))
    if status:
        return status
    results = outcome
    rows = summarise(results, scenario, args.targets, args.sizes)
    print(markdown_table(rows, scenario))
    ratios = load_ratio_table(results, rows, scenario)
    if ratios:
        print()
        print(ratios)
    if args.json:
        save_json(args.json, {
            "environment": facts,
            "settings": {
                "scenario": args.scenario, "rounds": args.rounds,
                "targets": args.targets, "sizes": args.sizes,
                "references": scenario.references,
                "client_cpu": args.client_cpu, "proxy_cpu": args.proxy_cpu,
                **scenario.bench.settings(args),
            },
            "summary": rows,
            "runs": [asdict(result) for result in results],
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
