#!/usr/bin/env bash
# Walk docs/operators.md on a fresh Debian 12 system, with the guide's own
# commands, as far as a machine without a booted systemd allows:
#
#   sudo scripts/test-operators-guide.sh           # ~5 min once the package is built
#   sudo scripts/test-operators-guide.sh --keep    # leave the system and the network up
#
# The "fresh Debian" is a minimal bookworm made by debootstrap (cached in
# .cache/operators/, copied anew for every run), entered with chroot; it
# shares this machine's network namespace, so ports 7878, 9050 and 9051 on
# 127.0.0.1 must be free. The real Tor network is not reachable from the
# machines this was written on, so the guide's tor joins a private Tor
# network (`bento testnet up --boxes 0`): the torrc is the guide's four
# lines plus the private network's authorities. What cannot run in a
# chroot: `systemctl` (no systemd as PID 1). The unit's ExecStart is run as
# its User= instead, and the unit file is checked with `systemd-analyze
# verify` where that exists.
#
# Steps (numbers are the guide's sections): 1 torrc and tor; 2 build the
# package (scripts/package-deb.sh --check) and `apt install ./bento_*.deb`;
# 3 the packaged configuration as is; 4 `bento doctor` as user bento; 5 the
# service's command as user bento, then a user runs hello.py through Tor to
# the published onion address; removing: `apt purge bento` removes the state.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '\033[1m[operators-guide]\033[0m %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

KEEP=${KEEP:-0}
for arg in "$@"; do
    case $arg in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) say "unknown option $arg (try --help)"; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts): run it with sudo"
for port in 7878 9050 9051; do
    if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is in use; the guide's ports must be free (the chroot shares this network)"
    fi
done

# A minimal Debian 12, made once.
BASE=$ROOT/.cache/operators/bookworm
if [ ! -x "$BASE/usr/bin/apt-get" ]; then
    command -v debootstrap >/dev/null || { say "installing debootstrap"; apt-get install -y -q debootstrap >/dev/null; }
    say "debootstrap: a minimal Debian 12 in $BASE (once, cached)"
    rm -rf "$BASE.partial"
    debootstrap --variant=minbase bookworm "$BASE.partial" http://deb.debian.org/debian >/dev/null
    mv "$BASE.partial" "$BASE"
fi

# §2: the package.
scripts/package-deb.sh --check
DEB=$(ls -t target/debian/bento_*.deb | head -1)
BENTO=$ROOT/target/release/bento

WORK=$(mktemp -d /tmp/bento-operators.XXXXXX)
SYS=$WORK/debian
NET=$WORK/testnet
MOUNTS=()
cleanup() {
    if [ "$KEEP" = 1 ]; then
        say "kept: the system in $SYS (mounts stay), the network in $NET ($BENTO testnet down --dir $NET)"
        return
    fi
    [ -f "$WORK/serve.pid" ] && kill "$(cat "$WORK/serve.pid")" 2>/dev/null || true
    [ -f "$SYS/run/tor/tor.pid" ] && kill "$(cat "$SYS/run/tor/tor.pid")" 2>/dev/null || true
    sleep 1
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
    [ -d "$NET" ] && "$BENTO" testnet down --dir "$NET" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say "a fresh copy of the system in $SYS"
cp -a "$BASE" "$SYS"
for m in proc sys dev dev/pts; do
    mount --bind "/$m" "$SYS/$m"
    MOUNTS+=("$SYS/$m")
done
mount -t tmpfs tmpfs "$SYS/run"
MOUNTS+=("$SYS/run")
cp /etc/resolv.conf "$SYS/etc/resolv.conf"
printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$SYS/etc/hosts"
in_sys() { chroot "$SYS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

say "apt: tor and sudo from Debian"
in_sys apt-get update -q >/dev/null
in_sys apt-get install -y -q --no-install-recommends tor sudo ca-certificates >/dev/null

say "a private Tor network for the guide's tor to join"
"$BENTO" testnet up --dir "$NET" --boxes 0 >"$WORK/testnet.log" 2>&1 || { cat "$WORK/testnet.log"; die "testnet up"; }
CLIENT_SOCKS=$("$BENTO" testnet status --dir "$NET" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["socks"])')
CLIENT_TORRC=$NET/nodes/client0/torrc
[ -f "$CLIENT_TORRC" ] || die "no client torrc at $CLIENT_TORRC"

# §1: the guide's torrc lines, plus what joins the private network.
say "§1 torrc: ControlPort, cookie, group-readable cookie, SocksPort"
{
    sed -n '/^```$/,/^```$/p' docs/operators.md | sed -n '2,5p'
    grep -E '^(TestingTorNetwork|DirAuthority|PathsNeededToBuildCircuits|LearnCircuitBuildTimeout|VanguardsLiteEnabled)' "$CLIENT_TORRC"
} >"$SYS/etc/tor/torrc"
grep -q '^ControlPort 127.0.0.1:9051$' "$SYS/etc/tor/torrc" || die "the guide's torrc lines were not found in docs/operators.md"
# As Debian's tor@default unit starts it (User debian-tor, /run/tor).
in_sys install -d -o debian-tor -g debian-tor -m 02750 /run/tor
in_sys tor --defaults-torrc /usr/share/tor/tor-service-defaults-torrc -f /etc/tor/torrc \
    --RunAsDaemon 1 --PidFile /run/tor/tor.pid --Log "notice file /var/log/tor/notices.log" >/dev/null
for _ in $(seq 120); do
    grep -q 'Bootstrapped 100%' "$SYS/var/log/tor/notices.log" 2>/dev/null && break
    sleep 1
done
grep -q 'Bootstrapped 100%' "$SYS/var/log/tor/notices.log" || die "the system's tor did not bootstrap (see $SYS/var/log/tor/notices.log)"

# §2: install.
say "§2 apt install ./$(basename "$DEB")"
cp "$DEB" "$SYS/root/"
in_sys apt-get install -y -q "./root/$(basename "$DEB")" >/dev/null 2>"$WORK/apt.err" \
    || in_sys sh -c "cd /root && apt-get install -y -q ./$(basename "$DEB")" >/dev/null
in_sys id bento | grep -q debian-tor || die "the package did not put user bento in debian-tor"
[ "$(in_sys stat -c %a:%U /var/lib/bento)" = 700:bento ] || die "/var/lib/bento is not 0700 bento"
[ -f "$SYS/lib/systemd/system/bento.service" ] || die "no unit installed"

# §4: doctor, exactly as the guide says.
say "§4 sudo -u bento bento doctor --config /etc/bento/box.toml"
in_sys sudo -u bento bento doctor --config /etc/bento/box.toml | tee "$WORK/doctor.txt" \
    || die "bento doctor found a problem"

# §5: the unit's ExecStart as its User= (no systemd here).
EXEC=$(sed -n 's/^ExecStart=//p' "$SYS/lib/systemd/system/bento.service")
say "§5 the service's command as user bento: $EXEC"
in_sys sudo -u bento sh -c "exec $EXEC" >"$WORK/serve.log" 2>&1 &
echo $! >"$WORK/serve.pid"
ONION=
for _ in $(seq 180); do
    ONION=$(grep -o '[a-z2-7]\{56\}\.onion' "$WORK/serve.log" | head -1 || true)
    [ -n "$ONION" ] && grep -q 'published' "$WORK/serve.log" && break
    sleep 1
done
[ -n "$ONION" ] || { cat "$WORK/serve.log"; die "the box published no onion address"; }
say "published: $ONION"
# A distinctive argument, so the log check below cannot match by accident.
ARG=operator-$RANDOM$RANDOM
OUT=""
for attempt in 1 2 3; do
    OUT=$("$BENTO" --server "$ONION:7878" --socks "$CLIENT_SOCKS" --allow-unattested run functions/examples/hello.py -- "$ARG" 2>"$WORK/run.err") && break
    say "attempt $attempt: $(tail -1 "$WORK/run.err")"
    sleep 5
done
[ "$OUT" = "hello $ARG" ] || die "a user's run through Tor gave ${OUT@Q}"
say "a user reached the box through Tor: $OUT"
if grep -E -q "[0-9a-f]{64}|$ARG" "$WORK/serve.log"; then
    die "the service log holds a token-like value or the function's argument"
fi

# Removing: purge takes the stored functions with it.
kill "$(cat "$WORK/serve.pid")" 2>/dev/null || true
rm -f "$WORK/serve.pid"
sleep 1
in_sys apt-get purge -y -q bento >/dev/null
[ ! -e "$SYS/var/lib/bento" ] || die "apt purge left /var/lib/bento"
say "passed: §1–§5 and purge on a fresh Debian 12 (systemctl itself not run: no systemd in a chroot)"
