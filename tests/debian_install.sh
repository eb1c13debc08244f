#!/usr/bin/env bash
# Debian packages for a test's real service, installed once:
#     tests/debian_install.sh '<command that succeeds when installed>' PACKAGE...
# Does nothing when the check passes; else apt-get update and install (sudo when not root, waiting up to
# ten minutes for another apt run's lock), and the check must pass afterwards.
set -euo pipefail
CHECK="$1"
shift
if bash -c "$CHECK" >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@"
bash -c "$CHECK"
