#!/usr/bin/env bash
# promtool (Prometheus's rule checker) for tests/test_alerts.py, from Debian's `prometheus` package.
# Only the promtool binary is taken out of the package, into .cache/bin/promtool: installing the
# package would also install (and on a host with systemd, start) a Prometheus server, which the
# tests do not want. Idempotent: does nothing when promtool is on PATH or already extracted.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=.cache/bin/promtool
if command -v promtool >/dev/null 2>&1 || [ -x "$TARGET" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"  # apt-get download writes as the _apt user where it can
# `apt-get download` needs no root, only the package lists: refresh them when the package is not known yet.
if ! (cd "$WORK" && apt-get download -q prometheus); then
    $SUDO apt-get update -q
    (cd "$WORK" && apt-get download -q prometheus)
fi
dpkg-deb --fsys-tarfile "$WORK"/prometheus_*.deb | tar -x -C "$WORK" ./usr/bin/promtool
mkdir -p "$(dirname "$TARGET")"
install -m 0755 "$WORK/usr/bin/promtool" "$TARGET"
"$TARGET" --version | head -1
