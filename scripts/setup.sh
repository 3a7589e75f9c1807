#!/usr/bin/env bash
# Install and build everything Bento needs; idempotent and cached.
#
#   scripts/setup.sh            # toolchain check, Python runtime, bento (debug)
#   BENTO_PROFILE=release scripts/setup.sh
#
# Caches live in .cache/: the componentize-py virtualenv, the runtime
# component (.wasm, rebuilt only when its inputs change) and the precompiled
# runtime (.cwasm, rebuilt only when the .wasm or the engine changes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
COMPONENTIZE_PY_VERSION=0.25.1
PROFILE=${BENTO_PROFILE:-debug}
mkdir -p "$CACHE/runtime"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# 1. Rust toolchain (the machine's; nothing to download) and Python with venv.
command -v cargo >/dev/null || { say "cargo not found: install Rust 1.95 (rustup)"; exit 1; }
if ! python3 -m venv --help >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing python3 and python3-venv (Debian packages)"
        apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    else
        say "python3 with the venv module is required (Debian: apt-get install python3-venv)"; exit 1
    fi
fi

# 1b. tor and tor-gencert (Debian's package) for the private Tor network used
# by the Tor tests and the demo. Installing it may also start the system's
# tor service (ports 9050/9051); Bento never uses or depends on it.
if ! command -v tor >/dev/null || ! command -v tor-gencert >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing tor (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tor >/dev/null
    else
        say "tor is required (Debian: apt-get install tor)"; exit 1
    fi
fi

# 2. componentize-py, pinned, in a private virtualenv.
VENV=$CACHE/venv
if [ ! -x "$VENV/bin/componentize-py" ] || [ "$("$VENV/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
    say "installing componentize-py $COMPONENTIZE_PY_VERSION (PyPI) into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# 3. The Python runtime component, rebuilt when the WIT world or any of its
#    Python modules (runtime/**/*.py) change.
WASM=$CACHE/runtime/bento-python.wasm
wasm_key=$(find runtime -name '*.wit' -o -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort \
    | xargs cat <(echo "$COMPONENTIZE_PY_VERSION") | sha256sum | cut -d' ' -f1)
if [ ! -f "$WASM" ] || [ "$(cat "$WASM.key" 2>/dev/null)" != "$wasm_key" ]; then
    say "building the Python runtime component (componentize-py, ~10 s)"
    (cd runtime && "$VENV/bin/componentize-py" -d wit -w function-runtime componentize bento_runtime -o "$WASM.tmp")
    mv "$WASM.tmp" "$WASM"
    echo "$wasm_key" > "$WASM.key"
fi

# 4. The bento binary.
say "building bento ($PROFILE)"
# The released binary has the embedded Tor client (`bento --tor embedded`,
# Arti: ~400 more crates); debug builds leave it out to keep CI quick
# (scripts/test-embedded-tor.sh builds and tests it).
if [ "$PROFILE" = release ]; then cargo build --release --quiet -p bento-cli --features embedded-tor; else cargo build --quiet -p bento-cli; fi
BENTO=$ROOT/target/$PROFILE/bento

# 5. The precompiled runtime, rebuilt when the component or the engine
#    (wasmtime version, engine configuration) change.
CWASM=$CACHE/runtime/bento-python.cwasm
cwasm_key=$(cat "$WASM.key" crates/bento-sandbox/src/engine.rs <(grep -A1 '^name = "wasmtime"$' Cargo.lock) | sha256sum | cut -d' ' -f1)
if [ ! -f "$CWASM" ] || [ "$(cat "$CWASM.key" 2>/dev/null)" != "$cwasm_key" ]; then
    say "precompiling the runtime to native code (~10 s)"
    "$BENTO" runtime precompile "$WASM" "$CWASM"
    echo "$cwasm_key" > "$CWASM.key"
fi
say "ready: $BENTO (runtime $CWASM)"
