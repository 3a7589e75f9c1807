#!/usr/bin/env bash
# The Bento demo: set up, start a box on loopback, store a function, invoke
# it, show its output, and stop the box.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BENTO=$PWD/target/debug/bento
DATA=$(mktemp -d)
LOG=$DATA/box.log
PORT=${BENTO_DEMO_PORT:-7878}
export BENTO_SERVER=127.0.0.1:$PORT

"$BENTO" serve --listen "$BENTO_SERVER" --data-dir "$DATA/box" 2>"$LOG" &
BOX=$!
cleanup() { kill "$BOX" 2>/dev/null || true; wait "$BOX" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 100); do "$BENTO" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BENTO" status >/dev/null || { cat "$LOG"; exit 1; }

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
step "cat functions/examples/hello.py"
cat functions/examples/hello.py
step "bento store functions/examples/hello.py --json"
STORED=$("$BENTO" store functions/examples/hello.py --json)
echo "$STORED"
TOKEN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["invoke_token"])' "$STORED")
step "bento invoke \$INVOKE_TOKEN --json -- world"
INVOKED=$("$BENTO" invoke "$TOKEN" --json -- world)
echo "$INVOKED"
SESSION=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["session_token"])' "$INVOKED")
step "bento attach \$SESSION_TOKEN"
"$BENTO" attach "$SESSION" </dev/null
step "bento run functions/examples/hello.py -- world   # the same in one go"
"$BENTO" run functions/examples/hello.py -- world </dev/null
step "echo 'ping' | bento run functions/examples/echo.py"
echo ping | "$BENTO" run functions/examples/echo.py
step "bento status"
"$BENTO" status
printf '\n\033[1mdemo finished; the box is stopped.\033[0m\n'
