#!/usr/bin/env python3
"""
What a JWT + rate-limit policy pair costs: a guarded route against a bare one.

One gatewaykit process (twistd, pinned to the proxy CPU as bench/run.py
pins) serves two routes to the same upstream (run.py's nginx, 1 KiB bodies):

/bare: no policies.
/guarded: policies [jwt, per-user]: a `jwt` policy (RS256 by default; a key
    made for the run, its public half in a JWKS file; issuer and audience
    checked) and a `rate_limit` keyed on `jwt:sub` with a limit no client
    here reaches (1,000,000 per second), so nothing is refused.

Two such gatewaykit processes take turns: `redis`, with gateway.redis on a
redis-server this script starts on a free loopback port in its temp dir
(`on_error: closed`, so a Redis failure shows as errors, not as a silent
local fallback), and `memory`, without gateway.redis (the in-process store).

wrk (-t1, 50 connections) sends the same requests to both routes: a Lua
script rotating `Authorization: Bearer` over tokens of 100 subjects, so the
bare route pays the same client cost and request size. Targets run
interleaved for several rounds; the table reports medians and each store's
guarded/bare ratio. The issue's bar: guarded >= 0.65 of bare.

--profile SECONDS records the guarded route of the redis gatewaykit with
py-spy after the rounds and prints where its time goes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402  (bench/ is not a package)
    HOST,
    PROJECT_DIR,
    SIZES,
    WRK_SCRIPT,
    BenchError,
    Processes,
    WrkBench,
    WrkResult,
    add_compare_option,
    add_output_options,
    add_pinning_options,
    check_pinning,
    compared_trees,
    environment,
    format_ms,
    free_port,
    gatewaykit_http_config,
    get,
    in_temp_dir,
    pinned,
    progress,
    run_wrk,
    save_json,
    start_gatewaykit,
    start_upstream,
    summarise,
)

STORES = ("redis", "memory")
ROUTES = ("bare", "guarded")
TARGETS = tuple(f"{store}/{route}" for store in STORES for route in ROUTES)
BAR = 0.65
ISSUER = "https://bench.gatewaykit.test"
AUDIENCE = "bench"
KID = "bench-1"
RATE_POLICY = "per-user"

# wrk: one prepared request per token, sent in turn on every connection.
TOKENS_SCRIPT = """\
local requests = {{}}
local tokens = {{
{tokens}
}}
local n = 0
init = function(args)
   for i, token in ipairs(tokens) do
      requests[i] = wrk.format(nil, nil, {{["Authorization"] = "Bearer " .. token}})
   end
end
request = function()
   n = n % #requests + 1
   return requests[n]
end
"""


# -- keys and tokens ---------------------------------------------------------------

def make_tokens(alg: str, subjects: int, lifetime: float) -> tuple[dict, list[str]]:
    """A new key pair: the JWKS document of its public half, and one token per subject."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if alg == "RS256":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid=KID, use="sig", alg=alg)
    now = int(time.time())
    tokens = [jwt.encode({"sub": f"user-{number:03d}", "iss": ISSUER,
                          "aud": AUDIENCE, "iat": now,
                          "exp": now + int(lifetime), "scope": "read"},
                         key, algorithm=alg, headers={"kid": KID})
              for number in range(subjects)]
    return {"keys": [public]}, tokens


# -- redis -------------------------------------------------------------------------

def redis_command(port: int, *words: str) -> bytes:
    """One inline command on a new connection; the raw reply."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(" ".join(words).encode() + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            if reply[:1] == b"$":  # a bulk string: read all of it
                size = int(reply[1:reply.index(b"\r\n")])
                while len(reply) < reply.index(b"\r\n") + 2 + size + 2:
                    reply += sock.recv(65536)
                break
    return reply


def evalsha_calls(port: int) -> int:
    """How many EVALSHA calls Redis has answered (INFO commandstats)."""
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def start_redis(procs: Processes, args: argparse.Namespace, tmp: Path) -> int:
    """A redis-server on a free loopback port (never 6379), in tmp, persisting nothing."""
    port = free_port()
    while port == 6379:
        port = free_port()
    home = tmp / "redis"
    home.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--dir", str(home)]
    procs.start("redis", argv, port, args.client_cpu, cwd=home)
    deadline = time.monotonic() + 10
    while redis_command(port, "PING") != b"+PONG\r\n":
        if time.monotonic() > deadline:
            raise BenchError("redis-server does not answer PING")
        time.sleep(0.05)
    return port


# -- gatewaykit --------------------------------------------------------------------

def guarded_config(port: int, upstream_port: int, jwks: Path, alg: str,
                   redis_port: int | None) -> dict:
    """run.py's one-upstream config with the two routes and the two policies."""
    config = gatewaykit_http_config(port, [upstream_port])
    config["policies"] = {
        "jwt": {"type": "jwt", "algorithms": [alg], "jwks_file": str(jwks),
                "issuer": ISSUER, "audience": AUDIENCE},
        RATE_POLICY: {"type": "rate_limit", "key": ["jwt:sub"],
                      "limit": 1000000, "window": "1s"},
    }
    config["routes"] = [
        {"name": "bare", "match": {"path": "/bare"}, "upstream": "bench"},
        {"name": "guarded", "match": {"path": "/guarded"},
         "policies": ["jwt", RATE_POLICY], "upstream": "bench"},
    ]
    if redis_port is not None:
        config["gateway"]["redis"] = {"url": f"redis://{HOST}:{redis_port}/0",
                                      "timeout": "250ms", "on_error": "closed"}
    return config


def check(store: str, port: int, token: str) -> None:
    """Both routes answer 1 KiB; the guarded one wants a token and counts in the store."""
    expected = SIZES["1k"]

    def fetch(path: str, *fields: tuple[str, str]) -> tuple[Any, bytes]:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("GET", path, headers=dict(fields))
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    response, body = get(store, port, "/bare")
    if response.status != 200 or len(body) != expected:
        raise BenchError(f"{store}: GET /bare gave {response.status}, {len(body)} bytes")
    response, _ = fetch("/guarded")
    if response.status != 401:
        raise BenchError(f"{store}: GET /guarded without a token gave {response.status}")
    response, body = fetch("/guarded", ("Authorization", f"Bearer {token}"))
    if response.status != 200 or len(body) != expected:
        raise BenchError(f"{store}: GET /guarded gave {response.status}, {len(body)} bytes")
    if RATE_POLICY not in (response.getheader("RateLimit") or ""):
        raise BenchError(f"{store}: no RateLimit field on the guarded route")
    if response.getheader("X-Gatewaykit-Degraded"):
        raise BenchError(f"{store}: the rate limit was decided without the store")


# -- profile -----------------------------------------------------------------------

# Where a sample's time went. A LEAVES frame anywhere in the stack names it
# (leaf work: it calls no gatewaykit code). Otherwise, walking the stack from
# the innermost frame out, the first frame matching a COMPONENTS pattern
# (a substring of the frame; py-spy writes paths relative to sys.path)
# names it; a frame of any other gatewaykit module names it "the rest of
# gatewaykit", and a stack without either is the reactor's own. So Twisted
# code called by txredisapi (firing its Deferreds) counts as txredisapi, and
# the proxying that runs when a Redis reply resumes the request counts as
# the rest of gatewaykit, not as the Redis client it was called from.
LEAVES = (
    ("PyJWS._decode_base64url_segment", "PyJWT: base64url segment checks"),
    ("RSAAlgorithm.verify", "PyJWT: RSA signature check (cryptography)"),
    ("ECAlgorithm.verify", "PyJWT: ECDSA signature check (cryptography)"),
)
COMPONENTS = (
    (" (jwt/", "PyJWT: the rest (JSON, claims, options)"),
    ("gatewaykit/policies/jwt.py", "gatewaykit/policies/jwt.py itself"),
    ("txredisapi", "txredisapi: commands, replies, its Deferreds"),
    ("gatewaykit/state/redis.py", "gatewaykit/state/redis.py itself (timeouts, callbacks)"),
    ("gatewaykit/state/memory.py", "gatewaykit/state/memory.py"),
    ("gatewaykit/policies/rate_limit.py", "gatewaykit/policies/rate_limit.py itself"),
    ("gatewaykit/policies/chain.py", "gatewaykit/policies/chain.py (running the policies)"),
    ("gatewaykit/", "the rest of gatewaykit (HTTP, routing, proxying)"),
)
OUTSIDE = "Twisted and the reactor outside any gatewaykit frame"
# Functions whose inclusive share is shown (they do not nest the proxying).
FUNCTION_MARKS = ("gatewaykit/policies/jwt.py", "gatewaykit/policies/rate_limit.py",
                  "gatewaykit/state/", " (jwt/")


def component(frames: list[str]) -> str:
    """The LEAVES or COMPONENTS name of a stack (outermost frame first)."""
    for pattern, name in LEAVES:
        if any(pattern in frame for frame in frames):
            return name
    for frame in reversed(frames):
        for pattern, name in COMPONENTS:
            if pattern in frame:
                return name
    return OUTSIDE


def profile_summary(raw: Path, top: int = 20) -> str:
    """
    Markdown: shares of the main thread's samples by component (COMPONENTS,
    adding up to 100%), by policy function (anywhere in the stack) and by
    own time, from py-spy's raw (collapsed) output. Other threads (Twisted's
    idle thread pool) are left out.
    """
    total = 0
    components: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame for frame in stack.split(";")
                  if not frame.startswith(("process ", "thread "))]
        if not frames or frames[0].startswith("Thread._bootstrap"):
            continue
        count = int(count_text)
        total += count
        own[shorten(frames[-1])] += count
        components[component(frames)] += count
        for frame in set(frames):
            if any(mark in frame for mark in FUNCTION_MARKS):
                functions[shorten(frame)] += count
    if not total:
        return "no samples"

    def rows(counts: Counter[str], code: bool) -> list[str]:
        return [f"| {f'`{name}`' if code else name} | {100 * count / total:.1f}% |"
                for name, count in counts.most_common(top)]

    return "\n".join([
        f"{total:,} samples of the main thread", "",
        "| where (innermost matching frame) | share |", "| --- | ---: |",
        *rows(components, False), "",
        "| policy function (anywhere in the stack) | share |", "| --- | ---: |",
        *rows(functions, True), "",
        "| function on top of the stack (own time) | share |", "| --- | ---: |",
        *rows(own, True)])


def shorten(frame: str) -> str:
    """`function (…/site-packages/pkg/mod.py:12)` as `function (pkg/mod.py)`."""
    function, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for root in ("site-packages/", "/work/main/", "python3.11/"):
        if root in where:
            where = where.split(root, 1)[1]
    return f"{function} ({where})"


def record_profile(args: argparse.Namespace, tmp: Path, pid: int, url: str,
                   script: Path) -> str:
    """wrk on url while py-spy records pid; the summary."""
    raw = tmp / "profile.txt"
    wrk = subprocess.Popen(
        pinned(args.client_cpu, ["wrk", "-t1", "-c50", f"-d{args.profile + 4:g}s",
                                 "--timeout", "10s", "-s", str(script), url]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        done = subprocess.run(
            ["py-spy", "record", "--pid", str(pid), "--rate", "250",
             "--duration", str(int(args.profile)), "--format", "raw",
             "-o", str(raw)], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"py-spy failed: {done.stderr[-2000:]}")
    finally:
        wrk.wait()
    if args.profile_out:
        shutil.copy(raw, args.profile_out)
    return profile_summary(raw)


# -- the run -----------------------------------------------------------------------

def loadavg() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process C{pid} has used (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # utime and stime: the 14th and 15th fields, counted after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace, tmp: Path) -> tuple[list[WrkResult], dict]:
    """
    Start everything, check it, run the interleaved rounds. The facts
    include C{cpu_per_request}: the gateway's CPU microseconds per
    request of each (target, round), which, unlike requests/s, do not
    drop when the machine lends the core to someone else.
    """
    procs = Processes(tmp)
    facts: dict[str, Any] = {}
    cpu_per_request: dict[tuple[str, int], float] = {}
    results: list[WrkResult] = []
    body = "x" * SIZES["1k"]
    locations = "".join(f'\n        location = /{route} {{\n            return 200 "{body}";'
                        "\n        }" for route in ROUTES)
    jwks, tokens = make_tokens(args.alg, args.subjects, 4 * 3600)
    jwks_path = tmp / "jwks.json"
    jwks_path.write_text(json.dumps(jwks))
    script = tmp / "tokens.lua"
    script.write_text(TOKENS_SCRIPT.format(
        tokens=",\n".join(f'   "{token}"' for token in tokens)) + WRK_SCRIPT)
    facts["token_bytes"] = len(tokens[0])
    try:
        upstream_port = start_upstream(procs, args, tmp, 1, {},
                                       extra_directives=locations)[0]
        stores = [store for store in (*STORES, *args.compare)
                  if any(t.startswith(store + "/") for t in args.targets)]
        uses_redis = [store for store in stores if store != "memory"]
        redis_port = start_redis(procs, args, tmp) if uses_redis else None
        ports, pids = {}, {}
        for store in stores:
            port = start_gatewaykit(
                procs, args, tmp, f"gatewaykit-{store}",
                lambda port, store=store: guarded_config(
                    port, upstream_port, jwks_path, args.alg,
                    None if store == "memory" else redis_port),
                source=args.compare.get(store, PROJECT_DIR))
            ports[store], pids[store] = port, procs.running[-1].pid
            check(store, port, tokens[0])
            progress(f"gatewaykit-{store}: listening on {HOST}:{port}, checked")
        if redis_port is not None:
            keys = int(redis_command(redis_port, "DBSIZE")[1:])
            progress(f"redis: {keys} key(s) after the checks")
        width = max(len(target) for target in args.targets)

        def measure(target: str, duration: float, round_no: int) -> WrkResult:
            store, route = target.split("/")
            cpu_before = process_cpu_seconds(pids[store])
            raw = run_wrk(f"http://{HOST}:{ports[store]}/{route}",
                          args.connections, duration, args.client_cpu, script)
            result = WrkBench.result(target, route, round_no, args.connections, raw)
            cpu = process_cpu_seconds(pids[store]) - cpu_before
            if result.requests:
                cpu_per_request[(target, round_no)] = cpu * 1e6 / result.requests
            return result

        if args.warmup > 0:
            progress("warming up")
            for target in args.targets:
                measure(target, args.warmup, 0)
        for round_no in range(1, args.rounds + 1):
            for target in args.targets:
                result = measure(target, args.duration, round_no)
                results.append(result)
                progress(f"round {round_no}/{args.rounds} {target:>{width}}: "
                         f"{result.describe()}")
        if redis_port is not None:
            facts["redis_keys"] = int(redis_command(redis_port, "DBSIZE")[1:])
            facts["redis_evalsha_calls"] = evalsha_calls(redis_port)
            progress(f"redis: {facts['redis_keys']} keys, "
                     f"{facts['redis_evalsha_calls']:,} EVALSHA calls")
        if args.profile:
            store = args.profile_store if args.profile_store in ports else stores[0]
            progress(f"profiling gatewaykit-{store} on /guarded for {args.profile:g} s")
            facts["profile"] = record_profile(
                args, tmp, pids[store], f"http://{HOST}:{ports[store]}/guarded", script)
    finally:
        procs.stop_all()
    facts["cpu_per_request"] = [
        {"target": target, "round": round_no, "us": us}
        for (target, round_no), us in cpu_per_request.items() if round_no > 0]
    return results, facts


def table(results: list[WrkResult], targets: list[str],
          cpu: list[dict]) -> tuple[str, list[dict]]:
    """
    Markdown: medians per target and guarded/bare per store (per round
    too), and the same ratio from the gateway's CPU time per request.
    """
    kind = argparse.Namespace(bench=WrkBench, references=())
    rows = []
    for target in targets:
        runs = [r for r in results if r.target == target]
        rows += summarise(runs, kind, [target], [target.split("/")[1]])
    by_target = {row["target"]: row for row in rows}
    for row in rows:
        spent = [entry["us"] for entry in cpu if entry["target"] == row["target"]]
        row["cpu_us"] = statistics.median(spent) if spent else None
    lines = ["| store | route | req/s (median) | p50 | p99 | guarded / bare "
             "| per round | spread | errors | CPU µs/request | guarded / bare by CPU |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        store, route = row["target"].split("/")
        bare = by_target.get(f"{store}/bare")
        ratio, rounds, by_cpu = "", "", ""
        if route == "guarded" and bare and row["cpu_us"] and bare["cpu_us"]:
            row["guarded_over_bare_cpu"] = bare["cpu_us"] / row["cpu_us"]
            by_cpu = f"{row['guarded_over_bare_cpu']:.2f}"
        if route == "guarded" and bare:
            row["guarded_over_bare"] = row["rps"] / bare["rps"]
            ratio = f"**{row['guarded_over_bare']:.2f}**"
            per_round = []
            for number in sorted({r.round for r in results}):
                pair = {r.target: r.rps for r in results if r.round == number}
                if f"{store}/bare" in pair and row["target"] in pair:
                    per_round.append(pair[row["target"]] / pair[f"{store}/bare"])
            row["per_round"] = per_round
            rounds = ", ".join(f"{value:.2f}" for value in per_round)
        spread = (row["rps_max"] - row["rps_min"]) / row["rps"] if row["rps"] else 0
        lines.append(f"| {store} | /{route} | {row['rps']:,.0f} | "
                     f"{format_ms(row['p50_us'])} | {format_ms(row['p99_us'])} | "
                     f"{ratio} | {rounds} | {spread:.0%} | {row['errors']} | "
                     f"{'' if row['cpu_us'] is None else format(row['cpu_us'], '.0f')} | "
                     f"{by_cpu} |")
    return "\n".join(lines), rows


# -- command line ------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated STORE/ROUTE, in run order, of "
                        + ",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of unrecorded load per target first")
    parser.add_argument("--alg", choices=("RS256", "ES256"), default="RS256",
                        help="the tokens' signature algorithm")
    parser.add_argument("--subjects", type=int, default=100,
                        help="distinct subs (tokens, rate-limit counters)")
    parser.add_argument("--profile", type=float, default=0,
                        help="after the rounds, py-spy the guarded route for "
                        "this many seconds (0: no)")
    parser.add_argument("--profile-store", choices=STORES, default="redis",
                        help="which gatewaykit --profile records")
    parser.add_argument("--profile-out", type=Path, default=None,
                        help="keep py-spy's raw (collapsed) stacks here")
    parser.add_argument("--gatewaykit-cmd", default=None,
                        help="as bench/run.py's")
    add_compare_option(parser, "one more store, NAME (targets NAME/bare and "
                       "NAME/guarded): gatewaykit with Redis, its code")
    add_pinning_options(parser, "wrk, the upstream nginx and redis-server")
    add_output_options(parser)
    args = parser.parse_args(argv)
    args.compare = compared = compared_trees(parser, args.compare, STORES)
    known = TARGETS + tuple(f"{name}/{route}" for name in compared for route in ROUTES)
    if args.targets == ",".join(TARGETS):
        args.targets = ",".join(known)
    args.targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not args.targets or any(name not in known for name in args.targets):
        parser.error(f"--targets: choose from {','.join(known)}")
    check_pinning(parser, args)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ["nginx", "wrk", "redis-server"] + ([] if args.no_pin else ["taskset"])
    tools += ["py-spy"] if args.profile else []
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        progress(f"missing tools: {', '.join(missing)}")
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    facts = environment(("nginx", "wrk")) if args.json else {}
    load_start = loadavg()
    progress(f"load average at start: {load_start}")
    outcome, status = in_temp_dir("gatewaykit-bench-policies-", args.keep_tmp,
                                  lambda tmp: run(args, tmp))
    if status:
        return status
    results, found = outcome
    load_end = loadavg()
    progress(f"load average at end: {load_end}")
    text, rows = table(results, args.targets, found["cpu_per_request"])
    print(text)
    ratios = [row["guarded_over_bare"] for row in rows if "guarded_over_bare" in row]
    print(f"\n{args.alg} tokens ({found['token_bytes']} bytes) of {args.subjects} "
          f"subjects; bar: guarded >= {BAR:.2f} of bare: "
          + ("met" if ratios and min(ratios) >= BAR else "NOT met"))
    if "redis_keys" in found:
        print(f"Redis after the run: {found['redis_keys']} keys, "
              f"{found['redis_evalsha_calls']:,} EVALSHA calls")
    print(f"load average (1, 5, 15 min): {load_start} at the start, "
          f"{load_end} at the end")
    if "profile" in found:
        print("\n" + found["profile"])
    if args.json:
        save_json(args.json, {
            "environment": {**facts, "loadavg_end": load_end},
            "settings": {key: (str(value) if isinstance(value, Path) else value)
                         for key, value in vars(args).items()},
            "facts": found,
            "summary": rows,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "runs": [asdict(result) for result in results],
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
