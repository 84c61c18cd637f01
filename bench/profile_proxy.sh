#!/bin/sh
# Profile gatewaykit with py-spy under the `proxy` scenario's 1 KiB load.
#
#   bench/profile_proxy.sh [OUT_PREFIX] [SECONDS]
#
# Runs bench/run.py for gatewaykit alone (one round, long enough to cover
# the recording), waits for wrk to start, then records the gateway process
# for SECONDS (default 15) at 250 Hz as collapsed stacks (OUT_PREFIX.txt,
# default /tmp/gatewaykit-profile) and prints the summary tables of
# bench/profile_summary.py. The run's own table goes to OUT_PREFIX.bench.
set -eu
out=${1:-/tmp/gatewaykit-profile}
seconds=${2:-15}
here=$(cd "$(dirname "$0")" && pwd)

python3 "$here/run.py" --scenario proxy --targets gatewaykit --sizes 1k \
    --rounds 1 --warmup 0 --duration-1k $((seconds + 10)) \
    >"$out.bench" 2>"$out.log" &
bench=$!

# The gateway this run.py started (a child of it, as is its wrk), once wrk
# is putting load on it.
pid=""
for _ in $(seq 100); do
    pid=$(pgrep -P "$bench" -f 'gatewaykit --config' | head -n1 || true)
    if [ -n "$pid" ] && pgrep -P "$bench" -x wrk >/dev/null; then
        break
    fi
    pid=""
    sleep 0.2
done
if [ -z "$pid" ]; then
    echo "gatewaykit under load not found; see $out.log" >&2
    kill "$bench" 2>/dev/null || true
    exit 1
fi
sleep 3
py-spy record --pid "$pid" --rate 250 --duration "$seconds" --nolineno \
    --format raw -o "$out.txt" >/dev/null
wait "$bench"
cat "$out.bench"
python3 "$here/profile_summary.py" "$out.txt" --top 20
