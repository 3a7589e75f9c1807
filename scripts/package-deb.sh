#!/usr/bin/env bash
# Build the Debian package of a Bento box from this workspace:
#
#   scripts/package-deb.sh            # → target/debian/bento_VERSION-1_ARCH.deb
#   scripts/package-deb.sh --check    # build it, then check its contents
#
# It holds /usr/bin/bento, the precompiled Python runtime
# (/usr/lib/bento/bento-python.cwasm), the systemd unit (not enabled on
# install), /etc/bento/box.toml and /etc/bento/policy.toml (conffiles), and
# the operator docs. Installing creates the system user `bento` (in tor's
# group, to read tor's control cookie). See docs/operators.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '\033[1m[package-deb]\033[0m %s\n' "$*" >&2; }

CHECK=0
for arg in "$@"; do
    case $arg in
        --check) CHECK=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) say "unknown option $arg (try --help)"; exit 2 ;;
    esac
done
for tool in dpkg-deb dpkg-architecture objdump; do
    command -v "$tool" >/dev/null || { say "$tool not found (Debian: apt-get install dpkg-dev binutils)"; exit 1; }
done

# The runtime and a release binary; setup.sh is cached and idempotent.
BENTO_PROFILE=release scripts/setup.sh
BIN=$ROOT/target/release/bento
CWASM=$ROOT/.cache/runtime/bento-python.cwasm
VERSION=$("$BIN" --version | awk '{print $2}')
# The released binary carries the embedded Tor client (setup.sh builds it
# with --features embedded-tor).
"$BIN" --version | grep -q 'embedded Tor client: yes' || { say "$BIN lacks the embedded Tor client"; exit 1; }
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
NAME=bento_${VERSION}-1_${ARCH}
STAGE=$ROOT/target/debian/$NAME
OUT=$ROOT/target/debian/$NAME.deb

say "staging $NAME"
rm -rf "$STAGE"
install -d "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/usr/lib/bento" \
    "$STAGE/lib/systemd/system" "$STAGE/etc/bento" "$STAGE/usr/share/doc/bento"
install -m 0755 "$BIN" "$STAGE/usr/bin/bento"
# Line tables help a crash report; full debug info is not shipped.
strip --strip-debug "$STAGE/usr/bin/bento" 2>/dev/null || true
install -m 0644 "$CWASM" "$STAGE/usr/lib/bento/bento-python.cwasm"
install -m 0644 packaging/bento.service "$STAGE/lib/systemd/system/bento.service"
install -m 0644 packaging/box.toml "$STAGE/etc/bento/box.toml"
"$BIN" policy default > "$STAGE/etc/bento/policy.toml"
chmod 0644 "$STAGE/etc/bento/policy.toml"
for doc in README.md docs/operators.md docs/policy.md docs/security.md docs/protocol.md; do
    install -m 0644 "$doc" "$STAGE/usr/share/doc/bento/"
done
cat > "$STAGE/usr/share/doc/bento/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bento
License: MIT or Apache-2.0
COPYRIGHT

# The newest glibc symbol version the binary needs.
GLIBC=$(objdump -T "$STAGE/usr/bin/bento" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
SIZE=$(du -sk "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: bento
Version: ${VERSION}-1
Architecture: ${ARCH}
Maintainer: Bento developers <bento@example.invalid>
Installed-Size: ${SIZE}
Depends: libc6 (>= ${GLIBC}), adduser
Recommends: tor (>= 0.4.8)
Section: net
Priority: optional
Homepage: https://example.invalid/bento
Description: Bento box: run anonymous users' small functions beside a Tor relay
 A Bento box lets anonymous Tor users upload small Python functions and
 run them on this relay, each in a WebAssembly sandbox within limits the
 operator sets (policy), reachable as an onion service.
 .
 The service is not enabled on install: check the setup with
 "bento doctor --config /etc/bento/box.toml", then
 "systemctl enable --now bento". See /usr/share/doc/bento/operators.md.
CONTROL
printf '/etc/bento/box.toml\n/etc/bento/policy.toml\n' > "$STAGE/DEBIAN/conffiles"
cat > "$STAGE/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd bento >/dev/null; then
        adduser --system --group --home /var/lib/bento --no-create-home \
            --gecos "Bento box" --quiet bento
    fi
    # Reading tor's control cookie needs tor's group.
    if getent group debian-tor >/dev/null; then
        adduser --quiet bento debian-tor
    fi
    # The state directory (systemd's StateDirectory= would make it at
    # start; making it now lets `bento doctor` check it beforehand).
    install -d -o bento -g bento -m 0700 /var/lib/bento
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # Restart a box the operator runs already, on upgrade.
        if systemctl is-active --quiet bento; then systemctl restart bento || true; fi
    fi
fi
exit 0
POSTINST
cat > "$STAGE/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop bento >/dev/null 2>&1 || true
    systemctl disable bento >/dev/null 2>&1 || true
fi
exit 0
PRERM
cat > "$STAGE/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    # Stored functions belong to users who trusted this box: purge them.
    rm -rf /var/lib/bento
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
POSTRM
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"

dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$OUT" >/dev/null
say "built $OUT ($(du -h "$OUT" | cut -f1))"

if [ "$CHECK" = 1 ]; then
    contents=$(dpkg-deb --contents "$OUT")
    for path in ./usr/bin/bento ./usr/lib/bento/bento-python.cwasm ./lib/systemd/system/bento.service \
        ./etc/bento/box.toml ./etc/bento/policy.toml ./usr/share/doc/bento/operators.md; do
        grep -q " $path\$" <<<"$contents" || { say "missing from the package: $path"; exit 1; }
    done
    # The packaged binary finds the packaged runtime and config parses.
    check_root=$(mktemp -d)
    trap 'rm -rf "$check_root"' EXIT
    dpkg-deb --extract "$OUT" "$check_root"
    (cd "$check_root" && env -u BENTO_RUNTIME ./usr/bin/bento runtime path) | grep -q "usr/lib/bento/bento-python.cwasm" \
        || { say "the packaged bento does not find its runtime"; exit 1; }
    if command -v systemd-analyze >/dev/null; then
        systemd-analyze verify --man=no "$check_root/lib/systemd/system/bento.service" 2>&1 \
            | grep -v "bento.service: Command /usr/bin/bento is not executable" || true
    fi
    say "check passed: contents, runtime path, unit"
fi
