#!/usr/bin/env python3
"""
Benchmark gatewaykit against nginx, Twisted's stock proxy and no proxy at all.

Every target proxies to one nginx upstream serving /1k (1024 bytes) and /1m
(1 MiB). wrk and the upstream share CPU 0; the proxy under test runs alone on
CPU 1. Targets run interleaved for several rounds; the table reports medians
and each target's ratio to nginx-as-a-proxy. See bench/README.md.

Standard library only (Twisted is needed by the stock proxy target).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
HOST = "127.0.0.1"

ALL_TARGETS = ("gatewaykit", "nginx", "twisted", "direct")
REFERENCE = "nginx"
SIZES = {"1k": 1024, "1m": 1024 * 1024}
SIZE_LABELS = {"1k": "1 KiB", "1m": "1 MiB"}
CONNECTIONS = {"1k": 50, "1m": 10}

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
        listen {host}:{port};
        root {www};
        sendfile on;
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
        listen {host}:{port};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""

GATEWAYKIT_CONFIG = """\
gateway: {{access_log: {{path: "off"}}}}
listeners: {{web: {{protocol: http, bind: "{host}:{port}"}}}}
upstreams: {{bench: {{targets: ["{host}:{upstream_port}"], \
pool: {{max_idle_per_target: 128}}}}}}
routes: [{{name: all, match: {{path_prefix: /}}, upstream: bench}}]
"""


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
        """SIGTERM every child, then SIGKILL its process group if it lingers."""
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


def start_upstream(procs: Processes, args: argparse.Namespace,
                   tmp: Path) -> int:
    """Start the nginx upstream serving /1k and /1m; return its port."""
    www = tmp / "www"
    www.mkdir()
    (www / "1m").write_bytes(b"x" * SIZES["1m"])
    port = free_port()
    server = UPSTREAM_SERVER.format(host=HOST, port=port, www=www,
                                    body_1k="x" * SIZES["1k"])
    start_nginx(procs, "upstream-nginx", server, port, args.client_cpu,
                tmp / "upstream-nginx")
    return port


def start_nginx_proxy(procs: Processes, args: argparse.Namespace,
                      tmp: Path, upstream_port: int) -> int:
    """Start nginx as a keep-alive reverse proxy; return its port."""
    port = free_port()
    server = PROXY_SERVER.format(host=HOST, port=port,
                                 upstream_port=upstream_port)
    start_nginx(procs, "nginx-proxy", server, port, args.proxy_cpu,
                tmp / "nginx-proxy")
    return port


def start_twisted_proxy(procs: Processes, args: argparse.Namespace,
                        tmp: Path, upstream_port: int) -> int:
    """Start twisted.web.proxy.ReverseProxyResource; return its port."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "stock_twisted_proxy.py"),
            str(port), str(upstream_port)]
    procs.start("twisted-proxy", argv, port, args.proxy_cpu, cwd=tmp)
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


def start_gatewaykit(procs: Processes, args: argparse.Namespace,
                     tmp: Path, upstream_port: int) -> int:
    """Start gatewaykit with a generated config; return its port."""
    port = free_port()
    config = tmp / "gatewaykit.yaml"
    config.write_text(GATEWAYKIT_CONFIG.format(
        host=HOST, port=port, upstream_port=upstream_port))
    template = args.gatewaykit_cmd or default_gatewaykit_cmd()
    if "{config}" not in template:
        template += " --config {config}"
    argv = [part.format(config=config, python=sys.executable)
            for part in shlex.split(template)]
    # The project root on the path finds gatewaykit and its twistd plugin
    # without installing; cwd=tmp keeps twistd.pid out of the source tree.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")]))
    procs.start("gatewaykit", argv, port, args.proxy_cpu, cwd=tmp, env=env)
    return port


PROXY_STARTERS = {
    "gatewaykit": start_gatewaykit,
    "nginx": start_nginx_proxy,
    "twisted": start_twisted_proxy,
}


def check_target(target: str, port: int, sizes: list[str]) -> None:
    """Fetch each size once through the target and check status and length."""
    for size in sizes:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            conn.request("GET", f"/{size}")
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(
                f"{target}: GET /{size} failed: {exc!r}") from exc
        finally:
            conn.close()
        if response.status != 200 or len(body) != SIZES[size]:
            raise BenchError(
                f"{target}: GET /{size} gave {response.status} with "
                f"{len(body)} bytes, expected 200 with {SIZES[size]}")


def run_wrk(url: str, connections: int, duration: float, cpu: int | None,
            script: Path) -> dict[str, float]:
    """Run one single-threaded wrk and return its done() numbers."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s",
            "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(pinned(cpu, argv), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            pairs = (item.split("=") for item in line.split()[1:])
            return {key: float(value) for key, value in pairs}
    raise BenchError(f"wrk gave no result (exit {done.returncode}) for "
                     f"{url}:\n{done.stdout}{done.stderr}")


def measure(target: str, port: int, size: str, round_no: int,
            duration: float, args: argparse.Namespace,
            script: Path) -> WrkResult:
    """Benchmark one target at one size and return the result."""
    url = f"http://{HOST}:{port}/{size}"
    raw = run_wrk(url, CONNECTIONS[size], duration, args.client_cpu, script)
    seconds = raw["duration_us"] / 1e6
    return WrkResult(
        target=target, size=size, round=round_no,
        connections=CONNECTIONS[size], duration_s=seconds,
        requests=int(raw["requests"]), rps=raw["requests"] / seconds,
        p50_us=raw["p50_us"], p90_us=raw["p90_us"], p99_us=raw["p99_us"],
        max_us=raw["max_us"], mean_us=raw["mean_us"], bytes=int(raw["bytes"]),
        errors={key[4:]: int(value) for key, value in raw.items()
                if key.startswith("err_")})


def summarise(results: list[WrkResult], targets: list[str],
              sizes: list[str]) -> list[dict]:
    """Median req/s, p50 and p99 per target and size, with nginx ratios."""
    rows = []
    for size in sizes:
        medians: dict[str, dict] = {}
        for target in targets:
            runs = [r for r in results if r.target == target and r.size == size]
            if runs:
                medians[target] = {
                    "target": target, "size": size, "rounds": len(runs),
                    "rps": statistics.median(r.rps for r in runs),
                    "rps_min": min(r.rps for r in runs),
                    "rps_max": max(r.rps for r in runs),
                    "p50_us": statistics.median(r.p50_us for r in runs),
                    "p99_us": statistics.median(r.p99_us for r in runs),
                    "errors": sum(sum(r.errors.values()) for r in runs),
                }
        reference = medians.get(REFERENCE)
        for row in medians.values():
            row["ratio"] = row["rps"] / reference["rps"] if reference else None
            rows.append(row)
    return rows


def format_ms(micros: float) -> str:
    """Microseconds as milliseconds for the table."""
    return f"{micros / 1000:.2f} ms"


def markdown_table(rows: list[dict]) -> str:
    """Format the summary rows as a Markdown table."""
    lines = [f"| target | size | req/s (median) | p50 | p99 | vs {REFERENCE} "
             "| spread | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        spread = (row["rps_max"] - row["rps_min"]) / row["rps"]
        lines.append(
            f"| {row['target']} | {SIZE_LABELS[row['size']]} "
            f"| {row['rps']:,.0f} | {format_ms(row['p50_us'])} "
            f"| {format_ms(row['p99_us'])} | {ratio} | {spread:.0%} "
            f"| {row['errors']} |")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """Versions and machine facts worth keeping beside raw results."""
    def version(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout + done.stderr).splitlines()[0].strip()

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.platform(),
        "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "twisted": importlib.metadata.version("twisted"),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "argv": shlex.join(sys.argv),
    }


def csv_choice(allowed: tuple[str, ...] | dict):
    """Return an argparse type for a comma-separated subset of allowed."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"choose from {','.join(allowed)}; got {text!r}")
        return list(dict.fromkeys(names))
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over all targets")
    parser.add_argument("--duration-1k", type=float, default=10,
                        help="seconds per 1 KiB run (50 connections)")
    parser.add_argument("--duration-1m", type=float, default=5,
                        help="seconds per 1 MiB run (10 connections)")
    parser.add_argument("--targets", type=csv_choice(ALL_TARGETS),
                        default=list(ALL_TARGETS),
                        help="comma-separated, in run order")
    parser.add_argument("--sizes", type=csv_choice(SIZES),
                        default=list(SIZES), help="comma-separated")
    parser.add_argument("--gatewaykit-cmd", default=None,
                        help="command line for gatewaykit; {config} is "
                        "replaced by the generated YAML path, {python} by "
                        "this interpreter (default: this Python's "
                        "`twistd -n gatewaykit --config {config}`)")
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of unrecorded load per target and "
                        "size before round 1 (0: none)")
    parser.add_argument("--client-cpu", type=int, default=0,
                        help="CPU for wrk and the upstream nginx")
    parser.add_argument("--proxy-cpu", type=int, default=1,
                        help="CPU for the proxy under test")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not use taskset")
    parser.add_argument("--json", type=Path, default=None,
                        help="also save raw results and the summary here")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    if args.no_pin:
        args.client_cpu = args.proxy_cpu = None
    elif not {args.client_cpu, args.proxy_cpu} <= os.sched_getaffinity(0):
        parser.error(f"CPUs {args.client_cpu} and {args.proxy_cpu} are not "
                     "both available; use --client-cpu/--proxy-cpu or "
                     "--no-pin")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def progress(message: str) -> None:
    """Progress goes to stderr so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, tmp: Path) -> list[WrkResult]:
    """Start every target, run the interleaved rounds, return the results."""
    procs = Processes(tmp)
    script = tmp / "report.lua"
    script.write_text(WRK_SCRIPT)
    durations = {"1k": args.duration_1k, "1m": args.duration_1m}
    results = []
    try:
        upstream_port = start_upstream(procs, args, tmp)
        ports = {}
        for target in args.targets:
            if target == "direct":
                ports[target] = upstream_port
            else:
                ports[target] = PROXY_STARTERS[target](
                    procs, args, tmp, upstream_port)
            check_target(target, ports[target], args.sizes)
            progress(f"{target}: listening on {HOST}:{ports[target]}")
        if args.warmup > 0:
            progress(f"warming up ({args.warmup:g} s per target and size)")
            for size in args.sizes:
                for target in args.targets:
                    measure(target, ports[target], size, 0, args.warmup,
                            args, script)
        for round_no in range(1, args.rounds + 1):
            for size in args.sizes:
                for target in args.targets:
                    result = measure(target, ports[target], size, round_no,
                                     durations[size], args, script)
                    results.append(result)
                    progress(
                        f"round {round_no}/{args.rounds} {size} {target:>10}: "
                        f"{result.rps:>10,.0f} req/s  "
                        f"p50 {format_ms(result.p50_us)}  "
                        f"p99 {format_ms(result.p99_us)}  "
                        f"errors {sum(result.errors.values())}")
    finally:
        procs.stop_all()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 on failure."""
    args = parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk", "taskset")
               if shutil.which(tool) is None]
    if missing:
        progress(f"missing tools: {', '.join(missing)}")
        return 1
    # SIGTERM unwinds like Ctrl-C, so every child is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="gatewaykit-bench-"))
    try:
        results = run(args, tmp)
    except BenchError as exc:
        progress(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        if args.keep_tmp:
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = summarise(results, args.targets, args.sizes)
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps({
            "environment": environment(),
            "settings": {
                "rounds": args.rounds, "targets": args.targets,
                "sizes": args.sizes, "connections": CONNECTIONS,
                "durations": {"1k": args.duration_1k,
                              "1m": args.duration_1m},
                "client_cpu": args.client_cpu, "proxy_cpu": args.proxy_cpu,
            },
            "summary": rows,
            "runs": [asdict(result) for result in results],
        }, indent=2) + "\n")
        progress(f"raw results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
