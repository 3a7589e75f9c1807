#!/usr/bin/env bash
# The Bento demo: set up, start a box on loopback, store a function, invoke
# it, show its output, and stop the box.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BENTO=$PWD/target/debug/bento
DATA=$(mktemp -d)
LOG=$DATA/box.log

# Port 0: the box picks a free port and logs it.
"$BENTO" serve --listen 127.0.0.1:0 --data-dir "$DATA/box" 2>"$LOG" &
BOX=$!
# The network lives under .cache so its relay keys are cached between runs.
TESTNET=$PWD/.cache/demo-testnet
cleanup() {
    kill "$BOX" 2>/dev/null || true; wait "$BOX" 2>/dev/null || true
    [ -f "$TESTNET/testnet.json" ] && "$BENTO" testnet down --dir "$TESTNET" >/dev/null 2>&1
    rm -rf "$DATA"
}
trap cleanup EXIT
ADDR=
for _ in $(seq 300); do
    ADDR=$(sed -n 's/.*bento box listening addr=\([0-9.:]*\).*/\1/p' "$LOG" | head -n1)
    [ -n "$ADDR" ] && break
    kill -0 "$BOX" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "the box did not start:" >&2; cat "$LOG" >&2; exit 1; }
export BENTO_SERVER=$ADDR
echo "box listening on $ADDR (log: $LOG)"

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
step "bento run functions/examples/hello.py -- world   # the same in one round trip, nothing stored"
"$BENTO" run functions/examples/hello.py -- world </dev/null
step "echo 'ping' | bento run functions/examples/echo.py"
echo ping | "$BENTO" run functions/examples/echo.py
step "bento policy check functions/examples/dropbox.toml   # what a function asks for, checked offline"
"$BENTO" policy check functions/examples/dropbox.toml
step "bento invoke \$DROPBOX_TOKEN --json   # a service function also gets a service token"
DROP_TOKEN=$("$BENTO" store functions/examples/dropbox.py)  # dropbox.toml is picked up
DROPPED=$("$BENTO" invoke "$DROP_TOKEN" --json)
echo "$DROPPED"
DROP_SESSION=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["session_token"])' "$DROPPED")
SERVICE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["service_token"])' "$DROPPED")
step "echo 'meet at noon' | bento attach \$SESSION_TOKEN &   # drop off"
echo 'meet at noon' | "$BENTO" attach "$DROP_SESSION" &
DROP_OFF=$!
step "bento connect \$SERVICE_TOKEN   # pick up, as a second client"
"$BENTO" connect "$SERVICE" </dev/null
wait "$DROP_OFF"
step "bento status"
"$BENTO" status
kill "$BOX"; wait "$BOX" 2>/dev/null || true

# Part 2: the same over Tor. A private Tor network on 127.0.0.0/8 (Debian's
# tor: 3 authorities, 2 middles, 2 exits, a client) with a Bento box beside a
# relay, published as an onion service; nothing leaves this machine.
step "bento testnet up --boxes 2   # a private Tor network with Bento boxes beside two relays"
"$BENTO" testnet up --dir "$TESTNET" --boxes 2
NET=$("$BENTO" testnet status --dir "$TESTNET" --json)
SOCKS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["socks"])' "$NET")
ONION0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["boxes"][0]["onion"])' "$NET")
ONION1=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["boxes"][1]["onion"])' "$NET")
export BENTO_SOCKS=$SOCKS
step "bento --server \$BOX_ONION --socks $SOCKS run functions/examples/hello.py -- Tor"
"$BENTO" --server "$ONION0" run functions/examples/hello.py -- Tor </dev/null
echo
step "a function on one box publishes an onion service; a function on the other reaches it with api.tor_connect"
cat functions/examples/onion_echo.py
SERVICE_SESSION=$("$BENTO" --server "$ONION1" invoke "$("$BENTO" --server "$ONION1" store functions/examples/onion_echo.py)")
# Read the address (the function's first output), then detach: Ctrl-C
# leaves the session running.
"$BENTO" --server "$ONION1" attach "$SERVICE_SESSION" </dev/null >"$DATA/address" 2>/dev/null &
ATTACH=$!
for _ in $(seq 600); do [ "$(wc -c <"$DATA/address")" -ge 62 ] && break; sleep 0.1; done
kill -INT "$ATTACH"; wait "$ATTACH" 2>/dev/null || true
ADDRESS=$(head -c 62 "$DATA/address")
echo "service function published $ADDRESS"
"$BENTO" --server "$ONION0" run functions/examples/tor_call.py -- "$ADDRESS" </dev/null
echo
"$BENTO" --server "$ONION1" kill "$SERVICE_SESSION"
step "bento testnet down"
"$BENTO" testnet down --dir "$TESTNET"
printf '\n\033[1mdemo finished; the box and the Tor network are stopped.\033[0m\n'
