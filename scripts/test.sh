#!/usr/bin/env bash
# Run the whole test suite (sets everything up first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export BENTO_RUNTIME=$PWD/.cache/runtime/bento-python.cwasm
cargo test --workspace "$@"
# The website-fingerprinting evaluation's own tests (eval/, docs/anonymity.md):
# its classifiers on simulated traces, the corpus, the trace parser.
scripts/setup-eval.sh
(cd eval && ../.cache/eval-venv/bin/python -m pytest -q -p no:cacheprovider)
