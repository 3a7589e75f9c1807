#!/usr/bin/env bash
# Install the website-fingerprinting evaluation's Python environment
# (docs/anonymity.md); idempotent and cached.
#
#   scripts/setup-eval.sh          # venv in .cache/eval-venv, pinned from PyPI
#   scripts/setup-eval.sh --pcap   # also tcpdump (Debian), for real traces
#
# The pins live in eval/requirements.txt. The venv is rebuilt only when that
# file changes (its hash is kept beside the venv). PyPI's torch wheel pulls
# the nvidia-* CUDA wheels (several GB; there is no CPU-only index reachable
# here); it still runs on the CPU, which is all the evaluation uses. pip's
# own cache (~/.cache/pip) makes a reinstall an unpack, not a download.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.cache/eval-venv
REQ=$ROOT/eval/requirements.txt

say() { printf '\033[1m[setup-eval]\033[0m %s\n' "$*" >&2; }

if [ "${1:-}" = --pcap ] && ! command -v tcpdump >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing tcpdump (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null
    else
        say "tcpdump is required for real traces (Debian: apt-get install tcpdump)"; exit 1
    fi
fi

key=$( (python3 --version; cat "$REQ") | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.key" 2>/dev/null)" = "$key" ]; then
    exit 0
fi
say "installing the evaluation's pinned packages (PyPI) into $VENV"
say "first install downloads torch with its CUDA wheels (several GB); later ones come from pip's cache"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
echo "$key" > "$VENV/.key"
