#!/usr/bin/env bash
# Build bento with the embedded Tor client (`--features embedded-tor`,
# Arti) and test it: bento-arti's unit tests with Arti compiled in, then
# the end-to-end test that runs a function on an onion box of the private
# Tor network through Arti alone (tests/all/embedded_tor.rs). CI builds
# without the feature (Arti is ~400 more crates), so this is how the
# embedded client is checked. Extra arguments go to the test binary.
#
#   scripts/test-embedded-tor.sh              # first run: ~10+ min of compiling Arti
#   scripts/test-embedded-tor.sh --nocapture  # with bootstrap progress and timings
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export BENTO_RUNTIME=$PWD/.cache/runtime/bento-python.cwasm
cargo test --locked -p bento-arti --features embedded-tor
cargo test --locked -p bento-cli --features embedded-tor --test all -- embedded_tor:: "$@"
