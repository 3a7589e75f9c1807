#!/usr/bin/env bash
# Run the whole test suite (sets everything up first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The server side of the worker pipe must not link wasmtime (docs/design.md,
# "The map of crates"): only the `bento worker` processes run the sandbox.
for crate in bento-worker-contract bento-pool bento-server; do
    if cargo tree --locked -p "$crate" -e normal --prefix none | grep -q '^wasmtime '; then
        echo "$crate links wasmtime:" >&2
        cargo tree --locked -p "$crate" -e normal -i wasmtime >&2
        exit 1
    fi
done
# The website-fingerprinting evaluation's Python environment (eval/,
# docs/anonymity.md) installs in the background while cargo builds and runs
# the Rust tests: on a fresh machine it is ~3 min of mostly downloading.
eval_log=$(mktemp)
scripts/setup-eval.sh >"$eval_log" 2>&1 &
eval_pid=$!
trap 'kill "$eval_pid" 2>/dev/null || true; rm -f "$eval_log"' EXIT
export BENTO_RUNTIME=$PWD/.cache/runtime/bento-python.cwasm
# --no-fail-fast: a failing crate must not hide the results of the rest.
cargo test --workspace --no-fail-fast "$@"
# Its own tests: the classifiers on simulated traces, the corpus, the
# trace parser.
eval_status=0
wait "$eval_pid" || eval_status=$?
cat "$eval_log" >&2
if [ "$eval_status" -ne 0 ]; then
    echo "scripts/setup-eval.sh failed (exit $eval_status)" >&2
    exit "$eval_status"
fi
(cd eval && ../.cache/eval-venv/bin/python -m pytest -q -p no:cacheprovider)
