#!/usr/bin/env bash
# Run the whole test suite (sets everything up first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export BENTO_RUNTIME=$PWD/.cache/runtime/bento-python.cwasm
cargo test --workspace "$@"
