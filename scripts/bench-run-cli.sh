#!/usr/bin/env bash
# Whole-CLI latency of `bento run hello.py -- world` (process start, the
# attestation check, one Run round trip, exit) against two boxes on
# loopback, one keeping 4 fresh instances per worker ready and one with
# prewarming off, alternating; and on the first box with
# --allow-unattested (no attestation round trip). Prints the median and
# p90 of each and of `bento --version` alone.
#
#   BENTO_PROFILE=release scripts/setup.sh
#   N=200 scripts/bench-run-cli.sh        # N runs per box (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
BENTO=${BENTO:-$PWD/target/release/bento}
export BENTO_RUNTIME=${BENTO_RUNTIME:-$PWD/.cache/runtime/bento-python.cwasm}
N=${N:-200}
WORK=$(mktemp -d)
trap 'kill $WARM $COLD 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
printf "def main(name):\n    api.send('hello ' + name)\n" > "$WORK/hello.py"
"$BENTO" serve --listen 127.0.0.1:17878 --data-dir "$WORK/warm" --prewarm 4 2>"$WORK/warm.log" & WARM=$!
"$BENTO" serve --listen 127.0.0.1:17879 --data-dir "$WORK/cold" --prewarm 0 2>"$WORK/cold.log" & COLD=$!
for port in 17878 17879; do
    for _ in $(seq 100); do
        "$BENTO" run --server 127.0.0.1:$port "$WORK/hello.py" -- world >/dev/null 2>&1 && break
        sleep 0.2
    done
done
python3 - "$BENTO" "$N" "$WORK/hello.py" <<'PY'
import statistics, subprocess, sys, time
bento, n, hello = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def timed(args, expect=None):
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True)
    elapsed = (time.perf_counter() - start) * 1000
    if expect is not None and out.stdout.strip() != expect:
        sys.exit(f"unexpected output {out}")
    return elapsed
boxes = {"prewarm 4": "127.0.0.1:17878", "prewarm 0": "127.0.0.1:17879"}
times = {name: [] for name in boxes}
unchecked = "prewarm 4, --allow-unattested"
times[unchecked] = []
for _ in range(n):
    for name, server in boxes.items():
        times[name].append(timed([bento, "run", "--server", server, hello, "--", "world"], b"hello world"))
    times[unchecked].append(timed([bento, "run", "--allow-unattested", "--server", boxes["prewarm 4"], hello, "--", "world"], b"hello world"))
times["bento --version alone"] = [timed([bento, "--version"]) for _ in range(n)]
for name, v in times.items():
    v.sort()
    print(f"{name}: median {statistics.median(v):.2f} ms, p90 {v[int(0.9 * (len(v) - 1))]:.2f} ms (n={len(v)})")
PY
