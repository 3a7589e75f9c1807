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
export BENTO_RUNTIME=$PWD/.cache/runtime/bento-python.cwasm
cargo test --workspace "$@"
# The website-fingerprinting evaluation's own tests (eval/, docs/anonymity.md):
# its classifiers on simulated traces, the corpus, the trace parser.
scripts/setup-eval.sh
(cd eval && ../.cache/eval-venv/bin/python -m pytest -q -p no:cacheprovider)
